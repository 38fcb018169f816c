//! The log field vocabulary: every `tracing` field and metric label in
//! pushbridge (core and adapters) means one thing, written one way. A
//! metric label and a log field with the same name carry the same value
//! (`reason` and `cause` labels are cut short, see below).
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
//! | `reason` | why: Apple's reason string (`BadDeviceToken`, `Unregistered`), a binary status name, or the gateway's own; also the plain reason APNS refuses a credential (on the line that ends the refusal: the reason it had). As a metric label cut at its first `:` or ` (` | `Unregistered` |
//! | `cause` | why an APNS connection ended; as a metric label cut like `reason` | `goaway`, `ping timeout`, `io error` |
//! | `status` | an HTTP status or binary status code from Apple | `410` |
//! | `kind` | metric label: an adapter's kind (`line`, `xmpp`, `irc`), or on `pushbridge_adapter_events_total` the event kind | `register`, `message` |
//! | `presence` | a user's presence as the router records it (Debug) | `Offline` |
//! | `peer` | the remote socket address of a connection | `127.0.0.1:53422` |
//! | `host` | the `host:port` an outbound connection goes to | `api.push.apple.com:443` |
//! | `error` | an error's display text | `connection reset by peer` |
//! | `retry_in` | delay before the next attempt (Debug of a `Duration`) | `1.6s` |
//! | `timeout` | the timeout that expired or was applied (Debug of a `Duration`) | `300s` |
//! | `grace` | the shutdown grace period (Debug of a `Duration`) | `10s` |
//! | `confirm_ms` | binary: milliseconds without an error response after which a write counts as delivered | `500` |
//! | `attempt` | a notification's transient failures so far | `3` |
//! | `connection` | index of a connection in its pool (0-based) | `0` |
//! | `count`, `devices`, `pending`, `unconfirmed`, `resent`, `completions`, `commands`, `connections`, `tries` | how many of what the message says | `200` |
//! | `repeats`, `failures` | a failure that repeats (the store while its database is away): `repeats`, the same failure seen since it was last logged at ERROR (the rest at DEBUG); `failures`, how many the streak had, on the line that says it ended | `118` |
//! | `accepted`, `delivered`, `rejected`, `expired`, `retried`, `lost`, `connects`, `devices_removed` | counters since start (of all apps, or of one app on its "sink stopped" line), on the minutely `counters` line and the "sink stopped" line; the matching `pushbridge_*_total` metrics count the same (`lost` is `pushbridge_notifications_unanswered_total`) | `412` |
//! | `snapshot` | every counter at shutdown (Debug of the gateway's snapshot) | `Snapshot { accepted: 3, .. }` |
//! | `path` | a file the gateway reads or writes | `pushbridge.db` |
//! | `store` | the store: the SQLite path, or the PostgreSQL URL with its password as `***` | `postgres://push@db:5432/pushbridge` |
//! | `mode` | a file's permission bits, octal (as found, on the warning that tightens them) | `0644` |
//! | `listen` | the address a listener is bound to (line adapter, admin listener) | `127.0.0.1:9464` |
//! | `auth` | whether a line listener requires `AUTH` | `true` |
//! | `version` | pushbridge's version (log field and `pushbridge_build_info` label) | `0.1.0` |
//! | `keys` | config keys, comma-separated, that changed on a reload but need a restart | `store.path, adapters.line[0].listen` |
//! | `applied` | what a reload applied, comma-separated, or that nothing changed | `credentials of com.example.chat, policy` |
//! | `generation` | how many times an app's sink replaced its credentials on a reload since start | `1` |
//! | `iat` | issued-at of a minted provider token (JWT), Unix seconds | `1717000000` |
//! | `key_id` | the provider-token key id (`[[apps]] key_id`; not a secret) | `ABC123DEFG` |
//! | `quiet` | whether a user has quiet hours set (on the line that sets or clears them) | `true` |
//! | `gateway` | a gateway's id in a shared PostgreSQL store (its row in `gateways`, new on every start) | `3` |
//! | `lease` | `[store] lease`: how old a gateway's heartbeat may get before it counts as dead (Debug of a `Duration`) | `30s` |
//! | `lock` | a singleton adapter instance's PostgreSQL advisory lock key (`pushbridge::singleton::lock_key`) | `3609935198981043796` |
//! | `command` | binary sink: the provider API command used (`binary_command`); IRC: the bot command a user sent | `2`, `REGISTER` |
//!
//! Adapters add fields of their own protocol where none of the above fits:
//! IRC `nick`, `channel`, `account` (a services account), `by` (who kicked
//! the bot), `line` (a raw line, TRACE only, redacted: see below),
//! `dropped` (lines dropped from a full queue); line protocol `line` (a
//! received command line, TRACE only, redacted); XMPP `stanza` (a stanza
//! in or out, TRACE only: markup without its text), `from`, `id` (of a stanza), `node` (a push node),
//! `domain` (the component's), `text` (a stream error's text, from the
//! server), `max` (the limit that was hit), `jids` (bare JIDs indexed);
//! Matrix `app_id` (a pusher's Matrix app id, as the homeserver sent it;
//! never the pushkey, which is a device token: a pushkey is logged only
//! as the `device` of its decoded token).
//!
//! Secrets (passwords, component secrets, JWTs, key material) and message
//! text are never fields, not even in raw protocol traces: a raw line or
//! stanza goes through its protocol's redaction first (IRC
//! `pushbridge_irc::redact::redact_line`, line protocol
//! `pushbridge_line::redact::redact_line`, XMPP
//! `pushbridge_xmpp::redact::redact_stanza`, built on
//! `pushbridge_kit::redact`): secrets become `<redacted>`, message text its
//! length (`<text: 17 bytes>`), device tokens their first 8 hex digits.
