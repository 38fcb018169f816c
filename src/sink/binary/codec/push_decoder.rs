//! The gateway side's notification decoder: commands 0, 1 and 2,
//! validated as Apple does (PROTOCOLS.md §1.4, §1.7); the first invalid one
//! yields a [`Refused`] with the error response's status and identifier,
//! and everything after it is discarded.

use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::Decoder;

use super::{status, Push, MAX_FRAME, MAX_PAYLOAD, MAX_TOKEN};

/// A notification the gateway side refuses: the status and identifier of
/// the error response to send. After one, the stream cannot be trusted
/// and the connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// One of [`status`].
    pub status: u8,
    /// The refused notification's identifier (0 if it had none).
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

/// Command 2: a frame of items. `None` until the whole frame is buffered.
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
    let (items, bad) = FrameItems::read(frame);
    Some(items.validate(bad))
}

/// The items of one command-2 frame, each at most once.
#[derive(Debug, Default)]
struct FrameItems {
    token: Option<Bytes>,
    payload: Option<Bytes>,
    id: Option<u32>,
    expiry: Option<u32>,
    priority: Option<u8>,
}

impl FrameItems {
    /// Read every item of `frame`; with the first problem's status (a
    /// truncated, unknown, wrongly sized or repeated item: protocol
    /// error). The items read before a problem are kept (the identifier
    /// names the refused notification).
    fn read(mut frame: Bytes) -> (Self, Option<u8>) {
        let mut items = Self::default();
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
            if !items.set(item, data) {
                bad.get_or_insert(status::PROTOCOL_ERROR);
            }
        }
        (items, bad)
    }

    /// Keep item number `item`; false if it is unknown, wrongly sized or
    /// repeated.
    fn set(&mut self, item: u8, data: Bytes) -> bool {
        let be_u32 = |d: &Bytes| u32::from_be_bytes([d[0], d[1], d[2], d[3]]);
        let dup = match item {
            1 => self.token.replace(data).is_some(),
            2 => self.payload.replace(data).is_some(),
            3 if data.len() == 4 => self.id.replace(be_u32(&data)).is_some(),
            4 if data.len() == 4 => self.expiry.replace(be_u32(&data)).is_some(),
            5 if data.len() == 1 => self.priority.replace(data[0]).is_some(),
            _ => return false,
        };
        !dup
    }

    /// The notification, or its refusal: `bad` from [`Self::read`] first,
    /// then token, payload and priority (5 or 10) as Apple checks them.
    fn validate(self, bad: Option<u8>) -> Result<Push, Refused> {
        let id = self.id.unwrap_or(0);
        let refuse = |status| Err(Refused { status, id });
        if let Some(s) = bad {
            return refuse(s);
        }
        let Some(token) = self.token.filter(|t| !t.is_empty()) else {
            return refuse(status::MISSING_TOKEN);
        };
        if token.len() > MAX_TOKEN {
            return refuse(status::INVALID_TOKEN_SIZE);
        }
        let Some(payload) = self.payload.filter(|p| !p.is_empty()) else {
            return refuse(status::MISSING_PAYLOAD);
        };
        if payload.len() > MAX_PAYLOAD {
            return refuse(status::INVALID_PAYLOAD_SIZE);
        }
        let priority = self.priority.unwrap_or(10);
        if priority != 5 && priority != 10 {
            return refuse(status::PROCESSING_ERROR);
        }
        Ok(Push {
            command: 2,
            id,
            expiry: self.expiry.unwrap_or(0),
            priority,
            token,
            payload,
        })
    }
}

#[cfg(test)]
mod tests {
    use bytes::BufMut;
    use tokio_util::codec::Encoder;

    use super::super::test_util::{decode_split, push};
    use super::super::PushEncoder;
    use super::*;

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
}
