//! Apple's checks of one request, in Apple's order: header values at the
//! HTTP layer (visible ASCII only), method and path (the device token),
//! authentication (`auth`), the `apns-*` headers, the payload, then the
//! injected and configured refusals (`faults`). The steps before the body
//! are pure functions of the request head; [`check_headers`] runs the
//! header steps alone, for tests of request builders.

use h2::RecvStream;
use http::{HeaderMap, Method, Request};

use super::auth::{self, ConnAuth};
use super::{faults, State, MAX_PAYLOAD};
use crate::apns::Reason;
use crate::simulator::Record;
use crate::sink::http2::request::{is_uuid, MAX_COLLAPSE_ID};

/// A refusal: HTTP status and Apple's reason (410 also gets a timestamp).
#[derive(Debug)]
pub(super) struct Refusal(pub(super) u16, pub(super) Reason);

/// Push types Apple knows (`apns-push-type`).
const PUSH_TYPES: [&str; 11] = [
    "alert",
    "background",
    "voip",
    "location",
    "complication",
    "fileprovider",
    "mdm",
    "liveactivity",
    "pushtotalk",
    "widgets",
    "controls",
];

/// Apple's checks, in Apple's order; the record if it is accepted.
/// `has_cert`: the connection presented a client certificate; `conn`: its
/// number (from 1); `conn_auth`: its current provider token.
pub(super) async fn check(
    req: Request<RecvStream>,
    state: &State,
    has_cert: bool,
    conn: u64,
    conn_auth: &ConnAuth,
) -> Result<Record, Refusal> {
    let (head, body) = req.into_parts();
    http_layer(&head.headers)?;
    let token = device_token(&head.method, head.uri.path())?;
    let auth = auth::authenticate(&head.headers, state, has_cert, conn_auth)?;
    let headers = ApnsHeaders::parse(&head.headers)?;
    let payload = payload(read_body(body).await?)?;
    faults::injected_failure(state)?;
    faults::configured_refusal(state, &token)?;
    Ok(Record {
        apns_id: headers.apns_id,
        identifier: None,
        command: None,
        device_token: token,
        topic: headers.topic,
        push_type: headers.push_type,
        priority: headers.priority,
        expiration: headers.expiration,
        collapse_id: headers.collapse_id,
        auth: auth.to_owned(),
        connection: conn,
        payload,
    })
}

/// Every header value must be visible ASCII (RFC 9110 field values;
/// Apple's front end refuses raw UTF-8 and control bytes before the
/// provider API sees the request): else 400 with reason `BadHeader` (the
/// simulator's own name: Apple's table has no reason for it).
fn http_layer(headers: &HeaderMap) -> Result<(), Refusal> {
    let visible = |v: &http::HeaderValue| v.as_bytes().iter().all(|&b| (0x20..0x7f).contains(&b) || b == b'\t');
    if headers.values().all(visible) {
        Ok(())
    } else {
        Err(Refusal(400, Reason::Other("BadHeader".into())))
    }
}

/// The simulator's checks of a request's headers alone, as [`check`] runs
/// them (HTTP layer, then the `apns-*` headers in Apple's order; not
/// authentication): `Err((status, reason))` when Apple would refuse them.
pub fn check_headers(headers: &HeaderMap) -> Result<(), (u16, Reason)> {
    http_layer(headers)
        .and_then(|()| ApnsHeaders::parse(headers))
        .map(|_| ())
        .map_err(|Refusal(status, reason)| (status, reason))
}

/// `POST /3/device/<token>`: the device token (64 to 200 hex digits),
/// lower-cased.
fn device_token(method: &Method, path: &str) -> Result<String, Refusal> {
    if method != Method::POST {
        return Err(Refusal(405, Reason::MethodNotAllowed));
    }
    let token = path.strip_prefix("/3/device/").ok_or(Refusal(404, Reason::BadPath))?;
    if token.is_empty() {
        return Err(Refusal(400, Reason::MissingDeviceToken));
    }
    if token.len() < 64 || token.len() > 200 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Refusal(400, Reason::BadDeviceToken));
    }
    Ok(token.to_ascii_lowercase())
}

/// The value of a header that may appear at most once (400
/// `DuplicateHeaders`), as text (400 `BadHeader` if it is not).
pub(super) fn one_header<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, Refusal> {
    let mut all = headers.get_all(name).iter();
    let first = all.next();
    if all.next().is_some() {
        return Err(Refusal(400, Reason::DuplicateHeaders));
    }
    match first {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(Some)
            .map_err(|_| Refusal(400, Reason::Other("BadHeader".into()))),
    }
}

/// The `apns-*` request headers, checked.
#[derive(Debug)]
struct ApnsHeaders {
    topic: String,
    push_type: Option<String>,
    priority: Option<u8>,
    /// Seconds since 1970 (0: try once).
    expiration: Option<u64>,
    /// The request's `apns-id`, or a fresh UUID.
    apns_id: String,
    collapse_id: Option<String>,
}

impl ApnsHeaders {
    /// Checked in Apple's order: topic, push type, priority, expiration,
    /// id, collapse id.
    fn parse(headers: &HeaderMap) -> Result<Self, Refusal> {
        let topic = topic(headers)?;
        let push_type = push_type(headers)?;
        let priority = priority(headers, push_type.as_deref())?;
        Ok(Self {
            topic,
            push_type,
            priority,
            expiration: expiration(headers)?,
            apns_id: apns_id(headers)?,
            collapse_id: collapse_id(headers)?,
        })
    }
}

/// `apns-topic`, required and not empty (400 `MissingTopic`).
fn topic(headers: &HeaderMap) -> Result<String, Refusal> {
    Ok(one_header(headers, "apns-topic")?
        .filter(|t| !t.is_empty())
        .ok_or(Refusal(400, Reason::MissingTopic))?
        .to_owned())
}

/// `apns-push-type`, one of [`PUSH_TYPES`] (400 `InvalidPushType`).
fn push_type(headers: &HeaderMap) -> Result<Option<String>, Refusal> {
    let push_type = one_header(headers, "apns-push-type")?.map(str::to_owned);
    if let Some(t) = &push_type {
        if !PUSH_TYPES.contains(&t.as_str()) {
            return Err(Refusal(400, Reason::InvalidPushType));
        }
    }
    Ok(push_type)
}

/// `apns-priority`: 1, 5 or 10, and not 10 for a background push (400
/// `BadPriority`).
fn priority(headers: &HeaderMap, push_type: Option<&str>) -> Result<Option<u8>, Refusal> {
    let priority = match one_header(headers, "apns-priority")? {
        None => None,
        Some(p) => match p.parse::<u8>() {
            Ok(v @ (1 | 5 | 10)) => Some(v),
            _ => return Err(Refusal(400, Reason::BadPriority)),
        },
    };
    if push_type == Some("background") && priority == Some(10) {
        return Err(Refusal(400, Reason::BadPriority));
    }
    Ok(priority)
}

/// `apns-expiration`: seconds since 1970 (400 `BadExpirationDate`).
fn expiration(headers: &HeaderMap) -> Result<Option<u64>, Refusal> {
    match one_header(headers, "apns-expiration")? {
        None => Ok(None),
        Some(e) => Ok(Some(
            e.parse::<u64>().map_err(|_| Refusal(400, Reason::BadExpirationDate))?,
        )),
    }
}

/// `apns-id`: a UUID (400 `BadMessageId`); a fresh one if absent.
fn apns_id(headers: &HeaderMap) -> Result<String, Refusal> {
    match one_header(headers, "apns-id")? {
        None => Ok(uuid::Uuid::new_v4().to_string()),
        Some(id) if is_uuid(id) => Ok(id.to_owned()),
        Some(_) => Err(Refusal(400, Reason::BadMessageId)),
    }
}

/// `apns-collapse-id`: at most [`MAX_COLLAPSE_ID`] bytes (400
/// `BadCollapseId`).
fn collapse_id(headers: &HeaderMap) -> Result<Option<String>, Refusal> {
    let collapse_id = one_header(headers, "apns-collapse-id")?.map(str::to_owned);
    if collapse_id.as_ref().is_some_and(|c| c.len() > MAX_COLLAPSE_ID) {
        return Err(Refusal(400, Reason::BadCollapseId));
    }
    Ok(collapse_id)
}

/// A request body read to its end.
struct Body {
    /// Its first bytes, at most [`MAX_PAYLOAD`] + 1.
    start: Vec<u8>,
    /// Its whole length in bytes.
    total: usize,
}

/// Read the whole body (releasing flow-control capacity as it comes),
/// keeping at most the limit + 1 bytes.
async fn read_body(mut body: RecvStream) -> Result<Body, Refusal> {
    let mut start = Vec::with_capacity(512);
    let mut total = 0usize;
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|_| Refusal(400, Reason::Other("StreamReset".into())))?;
        let _ = body.flow_control().release_capacity(chunk.len());
        total += chunk.len();
        if start.len() <= MAX_PAYLOAD {
            let room = MAX_PAYLOAD + 1 - start.len();
            start.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
    }
    Ok(Body { start, total })
}

/// The payload: not empty (400 `PayloadEmpty`), at most [`MAX_PAYLOAD`]
/// (413 `PayloadTooLarge`), a JSON object with an `aps` object (400
/// `BadPayload`: Apple has no reason for malformed JSON, the simulator
/// says so plainly).
fn payload(body: Body) -> Result<serde_json::Value, Refusal> {
    if body.total == 0 {
        return Err(Refusal(400, Reason::PayloadEmpty));
    }
    if body.total > MAX_PAYLOAD {
        return Err(Refusal(413, Reason::PayloadTooLarge));
    }
    let payload: serde_json::Value =
        serde_json::from_slice(&body.start).map_err(|_| Refusal(400, Reason::Other("BadPayload".into())))?;
    if !payload.get("aps").is_some_and(|a| a.is_object()) {
        return Err(Refusal(400, Reason::Other("BadPayload".into())));
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOK: &str = "0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef";

    fn refused<T: std::fmt::Debug>(r: Result<T, Refusal>) -> (u16, Reason) {
        match r {
            Err(Refusal(status, reason)) => (status, reason),
            Ok(v) => panic!("accepted: {v:?}"),
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, value.parse().unwrap());
        }
        h
    }

    #[test]
    fn path_and_method() {
        let path = format!("/3/device/{TOK}");
        assert_eq!(device_token(&Method::POST, &path).unwrap(), TOK.to_ascii_lowercase());
        assert_eq!(
            refused(device_token(&Method::GET, &path)),
            (405, Reason::MethodNotAllowed)
        );
        assert_eq!(
            refused(device_token(&Method::POST, "/2/device/ab")),
            (404, Reason::BadPath)
        );
        assert_eq!(
            refused(device_token(&Method::POST, "/3/device/")),
            (400, Reason::MissingDeviceToken)
        );
        assert_eq!(
            refused(device_token(&Method::POST, "/3/device/abcd")),
            (400, Reason::BadDeviceToken)
        );
        let not_hex = format!("/3/device/{}x", &TOK[..63]);
        assert_eq!(
            refused(device_token(&Method::POST, &not_hex)),
            (400, Reason::BadDeviceToken)
        );
    }

    #[test]
    fn headers_in_apples_order() {
        let ok = ApnsHeaders::parse(&headers(&[
            ("apns-topic", "com.x"),
            ("apns-push-type", "alert"),
            ("apns-priority", "5"),
            ("apns-expiration", "0"),
            ("apns-collapse-id", "c"),
        ]))
        .unwrap();
        assert_eq!(
            (ok.topic.as_str(), ok.priority, ok.expiration),
            ("com.x", Some(5), Some(0))
        );
        assert!(is_uuid(&ok.apns_id));
        let parse = |pairs: &[(&'static str, &str)]| refused(ApnsHeaders::parse(&headers(pairs)));
        assert_eq!(parse(&[]), (400, Reason::MissingTopic));
        assert_eq!(parse(&[("apns-topic", "")]), (400, Reason::MissingTopic));
        assert_eq!(
            parse(&[("apns-topic", "a"), ("apns-topic", "b")]),
            (400, Reason::DuplicateHeaders)
        );
        assert_eq!(
            parse(&[("apns-topic", "t"), ("apns-push-type", "fax")]),
            (400, Reason::InvalidPushType)
        );
        assert_eq!(
            parse(&[("apns-topic", "t"), ("apns-priority", "7")]),
            (400, Reason::BadPriority)
        );
        assert_eq!(
            parse(&[
                ("apns-topic", "t"),
                ("apns-push-type", "background"),
                ("apns-priority", "10")
            ]),
            (400, Reason::BadPriority)
        );
        assert_eq!(
            parse(&[("apns-topic", "t"), ("apns-expiration", "soon")]),
            (400, Reason::BadExpirationDate)
        );
        assert_eq!(
            parse(&[("apns-topic", "t"), ("apns-id", "nope")]),
            (400, Reason::BadMessageId)
        );
        let long = "c".repeat(MAX_COLLAPSE_ID + 1);
        assert_eq!(
            parse(&[("apns-topic", "t"), ("apns-collapse-id", &long)]),
            (400, Reason::BadCollapseId)
        );
    }

    #[test]
    fn header_values_must_be_visible_ascii() {
        let bad_header = Err((400, Reason::Other("BadHeader".into())));
        let mut h = headers(&[("apns-topic", "t"), ("apns-collapse-id", "bob")]);
        assert_eq!(check_headers(&h), Ok(()));
        // Raw UTF-8 (obs-text to HTTP); control bytes cannot even be
        // header values.
        for raw in ["jürgen", "#café", "🇩🇪"] {
            h.insert(
                "apns-collapse-id",
                http::HeaderValue::from_bytes(raw.as_bytes()).unwrap(),
            );
            assert_eq!(check_headers(&h), bad_header, "{raw:?}");
        }
        assert!(http::HeaderValue::from_bytes(b"a\x01").is_err());
        // Any header, not only Apple's, and before Apple's own checks.
        let mut h = headers(&[("apns-topic", "t")]);
        h.insert("x-note", http::HeaderValue::from_bytes("grüße".as_bytes()).unwrap());
        assert_eq!(check_headers(&h), bad_header);
        let mut h = headers(&[]);
        h.insert(
            "apns-collapse-id",
            http::HeaderValue::from_bytes("ü".as_bytes()).unwrap(),
        );
        assert_eq!(check_headers(&h), bad_header, "before MissingTopic");
    }

    #[test]
    fn payloads() {
        let body = |b: &[u8], total| Body {
            start: b.to_vec(),
            total,
        };
        assert!(payload(body(br#"{"aps":{}}"#, 10)).is_ok());
        assert_eq!(refused(payload(body(b"", 0))), (400, Reason::PayloadEmpty));
        assert_eq!(
            refused(payload(body(b"{}", MAX_PAYLOAD + 1))),
            (413, Reason::PayloadTooLarge)
        );
        assert_eq!(
            refused(payload(body(b"{", 1))),
            (400, Reason::Other("BadPayload".into()))
        );
        assert_eq!(
            refused(payload(body(br#"{"aps":1}"#, 9))),
            (400, Reason::Other("BadPayload".into()))
        );
    }
}
