//! The legacy binary provider protocol on the wire (PROTOCOLS.md §1):
//! notification commands 0, 1 and 2, the 6-byte error response (command
//! 8) and the feedback service's tuples. Encoders for the side that sends
//! each, decoders for the side that receives it, all for tokio-util
//! framing; decoders never buffer more than one bounded frame.
//!
//! Layout: `push` holds the notification types and their encoder
//! (provider side), `push_decoder` the validating decoder (gateway side),
//! `error_response` command 8, `feedback` the feedback service's tuples.
//! The public names are all re-exported here.

mod error_response;
mod feedback;
mod push;
mod push_decoder;

pub use error_response::{ErrorResponse, ErrorResponseCodec};
pub use feedback::{FeedbackCodec, FeedbackTuple};
pub use push::{EncodeError, Push, PushEncoder, PushRef};
pub use push_decoder::{PushDecoder, Refused};

/// Payload limit of the binary API since iOS 8, in bytes.
pub const MAX_PAYLOAD: usize = 2048;
/// Longest device token accepted, in bytes (the 2018 guide's "up to 100
/// bytes").
pub const MAX_TOKEN: usize = 100;
/// Longest command-2 frame a decoder accepts before giving up on the
/// stream, in bytes: every item at its maximum plus headers, rounded up.
pub const MAX_FRAME: usize = 4096;

/// Error-response statuses (§1.6).
pub mod status {
    pub const PROCESSING_ERROR: u8 = 1;
    pub const MISSING_TOKEN: u8 = 2;
    pub const MISSING_TOPIC: u8 = 3;
    pub const MISSING_PAYLOAD: u8 = 4;
    pub const INVALID_TOKEN_SIZE: u8 = 5;
    pub const INVALID_TOPIC_SIZE: u8 = 6;
    pub const INVALID_PAYLOAD_SIZE: u8 = 7;
    pub const INVALID_TOKEN: u8 = 8;
    pub const SHUTDOWN: u8 = 10;
    pub const PROTOCOL_ERROR: u8 = 128;
    pub const UNKNOWN: u8 = 255;

    /// Apple's name for a status.
    pub fn describe(s: u8) -> &'static str {
        match s {
            0 => "no errors encountered",
            PROCESSING_ERROR => "processing error",
            MISSING_TOKEN => "missing device token",
            MISSING_TOPIC => "missing topic",
            MISSING_PAYLOAD => "missing payload",
            INVALID_TOKEN_SIZE => "invalid token size",
            INVALID_TOPIC_SIZE => "invalid topic size",
            INVALID_PAYLOAD_SIZE => "invalid payload size",
            INVALID_TOKEN => "invalid token",
            SHUTDOWN => "shutdown",
            PROTOCOL_ERROR => "protocol error",
            _ => "unknown",
        }
    }
}

/// Helpers the codecs' tests share.
#[cfg(test)]
mod test_util {
    use bytes::{Bytes, BytesMut};
    use tokio_util::codec::Decoder;

    use super::Push;

    /// A notification numbered `id` in format `command`, with a 32-byte
    /// token.
    pub(super) fn push(command: u8, id: u32) -> Push {
        Push {
            command,
            id: if command == 0 { 0 } else { id },
            expiry: if command == 0 { 0 } else { 1_900_000_000 },
            priority: 10,
            token: Bytes::from(vec![0xab; 32]),
            payload: Bytes::from(format!(r#"{{"aps":{{"alert":"n{id}"}}}}"#)),
        }
    }

    /// Decode `bytes` fed in two pieces split at `at`.
    pub(super) fn decode_split<D: Decoder>(d: &mut D, bytes: &[u8], at: usize) -> Vec<D::Item>
    where
        D::Error: std::fmt::Debug,
    {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in [&bytes[..at], &bytes[at..]] {
            buf.extend_from_slice(piece);
            while let Some(item) = d.decode(&mut buf).unwrap() {
                out.push(item);
            }
        }
        out
    }
}
