//! The config loader, `pushbridge::config::Config::parse`, on arbitrary
//! text: TOML parsing, the typed config of the core, the sinks and every
//! adapter, the checks, and the error messages that point at a line.
//!
//! Properties: no panic; an error message is bounded by the input (it
//! quotes a line, not the file over and over).
//!
//! `Config::parse` also loads the credential files a sink names, so
//! inputs that could name a device or a process's file (`/dev/stdin`
//! would block, `/dev/zero` never ends) are skipped, and so are those
//! that could build such a path out of a TOML escape or a line-ending
//! backslash in a multi-line string.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

/// Substrings that could make a credential path a special file.
const SKIP: [&str; 6] = ["/dev", "/proc", "/sys", "\\u", "\\U", "\"\"\""];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if SKIP.iter().any(|s| text.contains(s)) {
        return;
    }
    if let Err(e) = pushbridge::config::Config::parse(text, Path::new("fuzz.toml")) {
        let message = e.to_string();
        assert!(
            message.len() <= 4 * text.len() + 4096,
            "a {}-byte message for {} bytes of config",
            message.len(),
            text.len()
        );
    }
});
