//! The feedback service's tuples (PROTOCOLS.md §1.8): when APNS found the
//! app gone from a device (seconds since 1970), and the device token.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::MAX_TOKEN;

/// One feedback-service entry: when APNS found the app gone, and the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedbackTuple {
    /// Seconds since 1970.
    pub time: u32,
    /// The device token, binary (1 to [`MAX_TOKEN`] bytes).
    pub token: Bytes,
}

/// Encodes (service side) and decodes (provider side) feedback tuples;
/// a token of 0 or over [`MAX_TOKEN`] bytes is an `InvalidData` error.
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
    use super::super::test_util::decode_split;
    use super::*;

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
