//! The legacy binary provider protocol on the wire (PROTOCOLS.md §1):
//! notification commands 0, 1 and 2, the 6-byte error response (command
//! 8) and the feedback service's tuples. Encoders for the side that sends
//! each, decoders for the side that receives it, all for tokio-util
//! framing; decoders never buffer more than one bounded frame.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Payload limit of the binary API since iOS 8.
pub const MAX_PAYLOAD: usize = 2048;
/// Longest device token accepted (the 2018 guide's "up to 100 bytes").
pub const MAX_TOKEN: usize = 100;
/// Longest command-2 frame a decoder accepts before giving up on the
/// stream: every item at its maximum plus headers, rounded up.
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

/// One notification in any of the three formats. Command 0 carries no
/// identifier, expiry or priority (they decode as 0, 0 and 10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    pub command: u8,
    pub id: u32,
    pub expiry: u32,
    pub priority: u8,
    pub token: Bytes,
    pub payload: Bytes,
}

/// A notification to encode, borrowing its token and payload (the sink
/// encodes straight from what it holds).
#[derive(Debug, Clone, Copy)]
pub struct PushRef<'a> {
    pub command: u8,
    pub id: u32,
    pub expiry: u32,
    pub priority: u8,
    pub token: &'a [u8],
    pub payload: &'a [u8],
}

impl Push {
    pub fn borrowed(&self) -> PushRef<'_> {
        PushRef {
            command: self.command,
            id: self.id,
            expiry: self.expiry,
            priority: self.priority,
            token: &self.token,
            payload: &self.payload,
        }
    }

    /// Bytes it takes on the wire.
    pub fn encoded_len(&self) -> usize {
        self.borrowed().encoded_len()
    }
}

impl PushRef<'_> {
    /// Bytes it takes on the wire.
    pub fn encoded_len(&self) -> usize {
        let (t, p) = (self.token.len(), self.payload.len());
        match self.command {
            0 => 1 + 2 + t + 2 + p,
            1 => 1 + 4 + 4 + 2 + t + 2 + p,
            _ => 1 + 4 + (3 + t) + (3 + p) + (3 + 4) + (3 + 4) + (3 + 1),
        }
    }
}

/// Why an encoder refused a notification.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("device token of {0} bytes (1 to {MAX_TOKEN})")]
    Token(usize),
    #[error("payload of {0} bytes (1 to {MAX_PAYLOAD})")]
    Payload(usize),
    #[error("unknown command {0}")]
    Command(u8),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Encodes notifications (provider side).
#[derive(Debug, Default, Clone, Copy)]
pub struct PushEncoder;

impl Encoder<&Push> for PushEncoder {
    type Error = EncodeError;

    fn encode(&mut self, p: &Push, dst: &mut BytesMut) -> Result<(), EncodeError> {
        self.encode(p.borrowed(), dst)
    }
}

impl Encoder<PushRef<'_>> for PushEncoder {
    type Error = EncodeError;

    fn encode(&mut self, p: PushRef<'_>, dst: &mut BytesMut) -> Result<(), EncodeError> {
        if p.token.is_empty() || p.token.len() > MAX_TOKEN {
            return Err(EncodeError::Token(p.token.len()));
        }
        if p.payload.is_empty() || p.payload.len() > MAX_PAYLOAD {
            return Err(EncodeError::Payload(p.payload.len()));
        }
        dst.reserve(p.encoded_len());
        match p.command {
            0 => {
                dst.put_u8(0);
                dst.put_u16(p.token.len() as u16);
                dst.put_slice(p.token);
                dst.put_u16(p.payload.len() as u16);
                dst.put_slice(p.payload);
            }
            1 => {
                dst.put_u8(1);
                dst.put_u32(p.id);
                dst.put_u32(p.expiry);
                dst.put_u16(p.token.len() as u16);
                dst.put_slice(p.token);
                dst.put_u16(p.payload.len() as u16);
                dst.put_slice(p.payload);
            }
            2 => {
                dst.put_u8(2);
                dst.put_u32((p.encoded_len() - 5) as u32);
                dst.put_u8(1);
                dst.put_u16(p.token.len() as u16);
                dst.put_slice(p.token);
                dst.put_u8(2);
                dst.put_u16(p.payload.len() as u16);
                dst.put_slice(p.payload);
                dst.put_u8(3);
                dst.put_u16(4);
                dst.put_u32(p.id);
                dst.put_u8(4);
                dst.put_u16(4);
                dst.put_u32(p.expiry);
                dst.put_u8(5);
                dst.put_u16(1);
                dst.put_u8(p.priority);
            }
            c => return Err(EncodeError::Command(c)),
        }
        Ok(())
    }
}

/// A notification the gateway side refuses: the status and identifier of
/// the error response to send. After one, the stream cannot be trusted
/// and the connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub status: u8,
    pub id: u32,
}

/// Decodes notifications (gateway side), validating as Apple does.
#[derive(Debug, Default)]
pub struct PushDecoder {
    failed: bool,
}

impl Decoder for PushDecoder {
    type Item = Result<Push, Refused>;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, std::io::Error> {
        if self.failed {
            // Everything after a refused notification is discarded.
            src.clear();
            return Ok(None);
        }
        let Some(&command) = src.first() else { return Ok(None) };
        let r = match command {
            0 | 1 => decode_legacy(command, src),
            2 => decode_frame(src),
            _ => Some(Err(Refused {
                status: status::PROTOCOL_ERROR,
                id: 0,
            })),
        };
        if let Some(Err(_)) = r {
            self.failed = true;
            src.clear();
        }
        Ok(r)
    }
}

/// Commands 0 and 1: fixed header, then length-prefixed token and payload.
fn decode_legacy(command: u8, src: &mut BytesMut) -> Option<Result<Push, Refused>> {
    let head = if command == 0 { 1 } else { 9 };
    if src.len() < head + 2 {
        return None;
    }
    let (id, expiry) = if command == 1 {
        (
            u32::from_be_bytes([src[1], src[2], src[3], src[4]]),
            u32::from_be_bytes([src[5], src[6], src[7], src[8]]),
        )
    } else {
        (0, 0)
    };
    let tlen = u16::from_be_bytes([src[head], src[head + 1]]) as usize;
    let refuse = |status| Some(Err(Refused { status, id }));
    if tlen == 0 {
        return refuse(status::MISSING_TOKEN);
    }
    if tlen > MAX_TOKEN {
        return refuse(status::INVALID_TOKEN_SIZE);
    }
    let at = head + 2 + tlen;
    if src.len() < at + 2 {
        return None;
    }
    let plen = u16::from_be_bytes([src[at], src[at + 1]]) as usize;
    if plen == 0 {
        return refuse(status::MISSING_PAYLOAD);
    }
    if plen > MAX_PAYLOAD {
        return refuse(status::INVALID_PAYLOAD_SIZE);
    }
    if src.len() < at + 2 + plen {
        return None;
    }
    let mut b = src.split_to(at + 2 + plen).freeze();
    b.advance(head + 2);
    let token = b.split_to(tlen);
    b.advance(2);
    Some(Ok(Push {
        command,
        id,
        expiry,
        priority: 10,
        token,
        payload: b,
    }))
}

/// Command 2: a frame of items.
fn decode_frame(src: &mut BytesMut) -> Option<Result<Push, Refused>> {
    if src.len() < 5 {
        return None;
    }
    let flen = u32::from_be_bytes([src[1], src[2], src[3], src[4]]) as usize;
    if flen > MAX_FRAME {
        return Some(Err(Refused {
            status: status::PROTOCOL_ERROR,
            id: 0,
        }));
    }
    if src.len() < 5 + flen {
        return None;
    }
    let mut frame = src.split_to(5 + flen).freeze();
    frame.advance(5);
    let (mut token, mut payload, mut id, mut expiry, mut priority) = (None, None, None, None, None);
    let mut bad: Option<u8> = None;
    while !frame.is_empty() {
        if frame.len() < 3 {
            bad.get_or_insert(status::PROTOCOL_ERROR);
            break;
        }
        let item = frame[0];
        let len = u16::from_be_bytes([frame[1], frame[2]]) as usize;
        if frame.len() < 3 + len {
            bad.get_or_insert(status::PROTOCOL_ERROR);
            break;
        }
        frame.advance(3);
        let data = frame.split_to(len);
        let dup = match item {
            1 => token.replace(data).is_some(),
            2 => payload.replace(data).is_some(),
            3 if len == 4 => id
                .replace(u32::from_be_bytes([data[0], data[1], data[2], data[3]]))
                .is_some(),
            4 if len == 4 => expiry
                .replace(u32::from_be_bytes([data[0], data[1], data[2], data[3]]))
                .is_some(),
            5 if len == 1 => priority.replace(data[0]).is_some(),
            _ => {
                bad.get_or_insert(status::PROTOCOL_ERROR);
                false
            }
        };
        if dup {
            bad.get_or_insert(status::PROTOCOL_ERROR);
        }
    }
    let id = id.unwrap_or(0);
    let refuse = |status| Some(Err(Refused { status, id }));
    if let Some(s) = bad {
        return refuse(s);
    }
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return refuse(status::MISSING_TOKEN);
    };
    if token.len() > MAX_TOKEN {
        return refuse(status::INVALID_TOKEN_SIZE);
    }
    let Some(payload) = payload.filter(|p| !p.is_empty()) else {
        return refuse(status::MISSING_PAYLOAD);
    };
    if payload.len() > MAX_PAYLOAD {
        return refuse(status::INVALID_PAYLOAD_SIZE);
    }
    let priority = priority.unwrap_or(10);
    if priority != 5 && priority != 10 {
        return refuse(status::PROCESSING_ERROR);
    }
    Some(Ok(Push {
        command: 2,
        id,
        expiry: expiry.unwrap_or(0),
        priority,
        token,
        payload,
    }))
}

/// The 6-byte error response: command 8, status, identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorResponse {
    pub status: u8,
    pub id: u32,
}

/// Encodes and decodes error responses.
#[derive(Debug, Default, Clone, Copy)]
pub struct ErrorResponseCodec;

impl Decoder for ErrorResponseCodec {
    type Item = ErrorResponse;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<ErrorResponse>, std::io::Error> {
        if src.is_empty() {
            return Ok(None);
        }
        if src[0] != 8 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("gateway sent command {} where an error response (8) belongs", src[0]),
            ));
        }
        if src.len() < 6 {
            return Ok(None);
        }
        let b = src.split_to(6);
        Ok(Some(ErrorResponse {
            status: b[1],
            id: u32::from_be_bytes([b[2], b[3], b[4], b[5]]),
        }))
    }
}

impl Encoder<ErrorResponse> for ErrorResponseCodec {
    type Error = std::io::Error;

    fn encode(&mut self, e: ErrorResponse, dst: &mut BytesMut) -> Result<(), std::io::Error> {
        dst.put_u8(8);
        dst.put_u8(e.status);
        dst.put_u32(e.id);
        Ok(())
    }
}

/// One feedback-service entry: when APNS found the app gone, and the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedbackTuple {
    pub time: u32,
    pub token: Bytes,
}

/// Encodes and decodes feedback tuples.
#[derive(Debug, Default, Clone, Copy)]
pub struct FeedbackCodec;

impl Decoder for FeedbackCodec {
    type Item = FeedbackTuple;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<FeedbackTuple>, std::io::Error> {
        if src.len() < 6 {
            return Ok(None);
        }
        let tlen = u16::from_be_bytes([src[4], src[5]]) as usize;
        if tlen == 0 || tlen > MAX_TOKEN {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("feedback tuple with a {tlen}-byte token"),
            ));
        }
        if src.len() < 6 + tlen {
            return Ok(None);
        }
        let mut b = src.split_to(6 + tlen).freeze();
        let time = b.get_u32();
        b.advance(2);
        Ok(Some(FeedbackTuple { time, token: b }))
    }
}

impl Encoder<&FeedbackTuple> for FeedbackCodec {
    type Error = std::io::Error;

    fn encode(&mut self, t: &FeedbackTuple, dst: &mut BytesMut) -> Result<(), std::io::Error> {
        dst.put_u32(t.time);
        dst.put_u16(t.token.len() as u16);
        dst.put_slice(&t.token);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(command: u8, id: u32) -> Push {
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
    fn decode_split<D: Decoder>(d: &mut D, bytes: &[u8], at: usize) -> Vec<D::Item>
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

    #[test]
    fn pushes_round_trip_in_every_format_split_at_every_offset() {
        for command in [0u8, 1, 2] {
            let pushes: Vec<Push> = (1..=3).map(|i| push(command, i)).collect();
            let mut bytes = BytesMut::new();
            for p in &pushes {
                PushEncoder.encode(p, &mut bytes).unwrap();
            }
            assert_eq!(bytes.len(), pushes.iter().map(Push::encoded_len).sum::<usize>());
            for at in 0..=bytes.len() {
                let got = decode_split(&mut PushDecoder::default(), &bytes, at);
                let got: Vec<Push> = got.into_iter().map(|r| r.unwrap()).collect();
                assert_eq!(got, pushes, "command {command} split at {at}");
            }
        }
    }

    #[test]
    fn command_2_layout_matches_the_guide() {
        let p = push(2, 0x01020304);
        let mut b = BytesMut::new();
        PushEncoder.encode(&p, &mut b).unwrap();
        // 61 + N bytes with a 32-byte token (PROTOCOLS.md §1.4).
        assert_eq!(b.len(), 61 + p.payload.len());
        assert_eq!(b[0], 2);
        assert_eq!(
            u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize,
            56 + p.payload.len()
        );
        assert_eq!(&b[5..8], &[1, 0, 32]);
        let id_at = 5 + 35 + 3 + p.payload.len();
        assert_eq!(&b[id_at..id_at + 7], &[3, 0, 4, 1, 2, 3, 4]);
    }

    #[test]
    fn command_1_layout_matches_the_guide() {
        let p = push(1, 7);
        let mut b = BytesMut::new();
        PushEncoder.encode(&p, &mut b).unwrap();
        assert_eq!(&b[..5], &[1, 0, 0, 0, 7]);
        assert_eq!(&b[9..11], &[0, 32]);
        assert_eq!(b.len(), 45 + p.payload.len());
    }

    fn refused(bytes: &[u8]) -> Refused {
        let mut buf = BytesMut::from(bytes);
        match PushDecoder::default().decode(&mut buf).unwrap() {
            Some(Err(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn invalid_notifications_get_apples_statuses() {
        // Frame with an id but no token.
        let mut f = vec![2, 0, 0, 0, 0];
        f.extend_from_slice(&[3, 0, 4, 0, 0, 0, 9, 2, 0, 2, b'{', b'}']);
        let len = (f.len() - 5) as u32;
        f[1..5].copy_from_slice(&len.to_be_bytes());
        assert_eq!(
            refused(&f),
            Refused {
                status: status::MISSING_TOKEN,
                id: 9
            }
        );
        // Token of 101 bytes.
        let mut p = push(2, 5);
        p.token = Bytes::from(vec![1; 101]);
        let mut b = BytesMut::new();
        b.put_u8(2);
        b.put_u32(0);
        b.put_u8(1);
        b.put_u16(101);
        b.put_slice(&p.token);
        b.put_u8(3);
        b.put_u16(4);
        b.put_u32(5);
        let len = (b.len() - 5) as u32;
        b[1..5].copy_from_slice(&len.to_be_bytes());
        assert_eq!(refused(&b).status, status::INVALID_TOKEN_SIZE);
        // Payload over 2048 bytes in command 1.
        let mut b = BytesMut::new();
        b.put_u8(1);
        b.put_u32(77);
        b.put_u32(0);
        b.put_u16(32);
        b.put_slice(&[0; 32]);
        b.put_u16(2049);
        assert_eq!(
            refused(&b),
            Refused {
                status: status::INVALID_PAYLOAD_SIZE,
                id: 77
            }
        );
        // Unknown command, oversized frame, bad priority, missing payload.
        assert_eq!(refused(&[9, 0, 0]).status, status::PROTOCOL_ERROR);
        assert_eq!(refused(&[2, 0, 1, 0, 0]).status, status::PROTOCOL_ERROR);
        let mut p = push(2, 3);
        p.priority = 7;
        let mut b = BytesMut::new();
        PushEncoder.encode(&p, &mut b).unwrap();
        assert_eq!(
            refused(&b),
            Refused {
                status: status::PROCESSING_ERROR,
                id: 3
            }
        );
        let mut b = BytesMut::new();
        b.put_u8(0);
        b.put_u16(32);
        b.put_slice(&[0; 32]);
        b.put_u16(0);
        assert_eq!(refused(&b).status, status::MISSING_PAYLOAD);
    }

    #[test]
    fn after_a_refusal_the_rest_is_discarded() {
        let mut buf = BytesMut::from(&[9u8, 1, 2, 3][..]);
        let mut d = PushDecoder::default();
        assert!(matches!(d.decode(&mut buf).unwrap(), Some(Err(_))));
        let mut good = BytesMut::new();
        PushEncoder.encode(&push(2, 1), &mut good).unwrap();
        buf.extend_from_slice(&good);
        assert!(d.decode(&mut buf).unwrap().is_none());
        assert!(buf.is_empty());
    }

    #[test]
    fn encoder_refuses_what_apple_would() {
        let mut p = push(2, 1);
        p.payload = Bytes::from(vec![b'x'; 2049]);
        assert!(PushEncoder.encode(&p, &mut BytesMut::new()).is_err());
        p.payload = Bytes::new();
        assert!(PushEncoder.encode(&p, &mut BytesMut::new()).is_err());
        let mut p = push(2, 1);
        p.token = Bytes::new();
        assert!(PushEncoder.encode(&p, &mut BytesMut::new()).is_err());
        p = push(3, 1);
        assert!(PushEncoder.encode(&p, &mut BytesMut::new()).is_err());
    }

    #[test]
    fn error_responses_split_at_every_offset() {
        let mut bytes = BytesMut::new();
        let errs = [
            ErrorResponse { status: 8, id: 42 },
            ErrorResponse {
                status: 10,
                id: u32::MAX,
            },
        ];
        for e in errs {
            ErrorResponseCodec.encode(e, &mut bytes).unwrap();
        }
        assert_eq!(&bytes[..6], &[8, 8, 0, 0, 0, 42]);
        for at in 0..=bytes.len() {
            assert_eq!(decode_split(&mut ErrorResponseCodec, &bytes, at), errs.to_vec());
        }
        let mut junk = BytesMut::from(&[1u8, 2, 3][..]);
        assert!(ErrorResponseCodec.decode(&mut junk).is_err());
    }

    #[test]
    fn feedback_tuples_split_at_every_offset() {
        let tuples = vec![
            FeedbackTuple {
                time: 1_700_000_000,
                token: Bytes::from(vec![0xcd; 32]),
            },
            FeedbackTuple {
                time: 1,
                token: Bytes::from(vec![0x01; 64]),
            },
        ];
        let mut bytes = BytesMut::new();
        for t in &tuples {
            FeedbackCodec.encode(t, &mut bytes).unwrap();
        }
        assert_eq!(bytes.len(), 38 + 70, "a 32-byte token makes a 38-byte tuple");
        for at in 0..=bytes.len() {
            assert_eq!(decode_split(&mut FeedbackCodec, &bytes, at), tuples);
        }
        let mut bad = BytesMut::from(&[0u8, 0, 0, 1, 0, 0][..]);
        assert!(FeedbackCodec.decode(&mut bad).is_err());
    }
}
