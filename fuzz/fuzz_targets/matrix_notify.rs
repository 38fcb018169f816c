//! The Matrix adapter's notify body, `pushbridge_matrix::parse_notify`, on
//! arbitrary bytes, then what the server does with an accepted body: every
//! device's pushkey decoded (base64 or hex), its push built
//! (`payload::to_push`) and rendered by the core's `Policy::push` within
//! APNS's 4,096-byte limit.
//!
//! Properties: no panic; `M_NOT_JSON` only for bytes that are not JSON,
//! and every body that is not JSON by the grammar gets it; a rendered
//! payload is valid JSON with an object `aps`, and fits the limit whenever
//! the push's ids alone (custom keys, thread) do.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pushbridge::config::PolicyConfig;
use pushbridge::policy::Policy;
use pushbridge_matrix::notify::decode_pushkey;
use pushbridge_matrix::payload::to_push;
use pushbridge_matrix::{parse_notify, MatrixApp, NotifyError};

const LIMIT: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let parsed = parse_notify(data);
    // Two views of "is JSON": a full parse into values (which also refuses
    // numbers out of f64 range, such as 1E999999, that the grammar allows),
    // and the grammar alone (UTF-8, then skipping every value).
    let values = serde_json::from_slice::<serde_json::Value>(data).is_ok();
    let grammar = std::str::from_utf8(data)
        .is_ok_and(|t| serde_json::from_str::<serde::de::IgnoredAny>(t).is_ok());
    match &parsed {
        Err(NotifyError::NotJson(_)) => assert!(!values, "JSON refused as M_NOT_JSON"),
        Err(NotifyError::BadJson(_)) | Ok(_) => assert!(grammar, "not JSON, yet not M_NOT_JSON"),
    }
    let Ok(notify) = parsed else { return };
    let app = MatrixApp {
        topic: "com.example.chat".into(),
        environment: None,
    };
    let policy = Policy::new(PolicyConfig::default());
    for device in &notify.notification.devices {
        let Ok(token) = decode_pushkey(&device.pushkey) else { continue };
        let Some(push) = to_push(&notify.notification, device, &app, token, true) else { continue };
        let payload = policy.push(&push, 0).payload(LIMIT);
        let value: serde_json::Value = serde_json::from_str(&payload).expect("payload is JSON");
        assert!(value["aps"].is_object(), "no aps object: {payload}");
        // The ids alone (no alert text) are what cannot be cut.
        let mut bare = push.clone();
        bare.alert = None;
        let skeleton = policy.push(&bare, 0).payload(usize::MAX).len();
        if skeleton + 64 <= LIMIT {
            assert!(payload.len() <= LIMIT, "{} bytes > {LIMIT}", payload.len());
        }
    }
});
