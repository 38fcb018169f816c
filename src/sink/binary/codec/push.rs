//! Notifications (commands 0, 1 and 2) and their encoder, the provider
//! side: command 0 (token and payload), command 1 (with identifier and
//! expiry) and command 2 (a frame of items, with a priority too), laid
//! out as PROTOCOLS.md §1.2 to §1.4 say.

use bytes::{BufMut, Bytes, BytesMut};
use tokio_util::codec::Encoder;

use super::{MAX_PAYLOAD, MAX_TOKEN};

/// One notification in any of the three formats. Command 0 carries no
/// identifier, expiry or priority (they decode as 0, 0 and 10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// 0, 1 or 2.
    pub command: u8,
    /// The notification identifier the error response names.
    pub id: u32,
    /// Seconds since 1970 (0: try once).
    pub expiry: u32,
    /// 10 (now) or 5 (when convenient).
    pub priority: u8,
    /// The device token, binary (1 to [`MAX_TOKEN`] bytes).
    pub token: Bytes,
    /// The JSON payload (1 to [`MAX_PAYLOAD`] bytes).
    pub payload: Bytes,
}

/// A notification to encode, borrowing its token and payload (the sink
/// encodes straight from what it holds). Fields as in [`Push`].
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
    /// The same notification, borrowed for [`PushEncoder`].
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
        if p.command > 2 {
            return Err(EncodeError::Command(p.command));
        }
        dst.reserve(p.encoded_len());
        match p.command {
            0 | 1 => put_legacy(&p, dst),
            _ => put_frame(&p, dst),
        }
        Ok(())
    }
}

/// Commands 0 and 1: fixed header (command 1 adds identifier and expiry),
/// then length-prefixed token and payload.
fn put_legacy(p: &PushRef<'_>, dst: &mut BytesMut) {
    dst.put_u8(p.command);
    if p.command == 1 {
        dst.put_u32(p.id);
        dst.put_u32(p.expiry);
    }
    dst.put_u16(p.token.len() as u16);
    dst.put_slice(p.token);
    dst.put_u16(p.payload.len() as u16);
    dst.put_slice(p.payload);
}

/// Command 2: frame length, then the items token (1), payload (2),
/// identifier (3), expiry (4) and priority (5).
fn put_frame(p: &PushRef<'_>, dst: &mut BytesMut) {
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

#[cfg(test)]
mod tests {
    use super::super::test_util::push;
    use super::*;

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
}
