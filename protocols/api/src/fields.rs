//! The log field vocabulary: every `tracing` field and metric label in
//! pushbridge (core and adapters) means one thing, written one way.
//!
//! | field | meaning | example |
//! | --- | --- | --- |
//! | `adapter` | adapter instance name, also the scope of its user ids | `line`, `irc:libera`, `xmpp` |
//! | `app` | the app's APNS topic (bundle id), as in `[[apps]] topic` | `com.example.chat` |
//! | `protocol` | an app's sink protocol | `http2`, `binary`, `log` |
//! | `environment` | APNS environment | `production`, `sandbox` |
//! | `notification` | outbox row id of a notification: unique, increasing, kept from the outbox to Apple's answer | `4711` |
//! | `apns_id` | what Apple knows the notification by: the HTTP/2 `apns-id` header (a UUID carrying `notification`) or the binary protocol's identifier | `00000000-0000-4000-8000-000000001267` |
//! | `device` | a device token shortened to its first 8 hex digits ([`crate::DeviceToken::short`]; never the full token) | `a1b2c3d4` |
//! | `user` | user id, scoped by adapter | `line:alice` |
//! | `outcome` | a notification's final fate | `delivered`, `rejected`, `expired` |
//! | `reason` | why: Apple's reason string (`BadDeviceToken`, `Unregistered`), a binary status name, or the gateway's own | `Unregistered` |
//! | `status` | an HTTP status or binary status code from Apple | `410` |
//! | `peer` | the remote socket address of a connection | `127.0.0.1:53422` |
//! | `host` | the `host:port` an outbound connection goes to | `api.push.apple.com:443` |
//! | `error` | an error's display text | `connection reset by peer` |
//! | `retry_in` | delay before the next attempt (Debug of a `Duration`) | `1.6s` |
//! | `attempt` | a notification's transient failures so far | `3` |
//! | `connection` | index of a connection in its pool (0-based) | `0` |
//! | `count`, `devices`, `pending`, `unconfirmed`, `resent`, `completions`, `commands` | how many of what the message says | `200` |
//! | `path` | a file the gateway reads or writes | `pushbridge.db` |
//!
//! Adapters add fields of their own protocol (`nick`, `channel`, `command`
//! for IRC; `from`, `id` for XMPP stanzas) where none of the above fits.
//!
//! Secrets (passwords, component secrets, JWTs, key material) and message
//! text are never fields.
