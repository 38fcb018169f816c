//! The 6-byte error response (command 8, PROTOCOLS.md §1.6): the gateway
//! names the first notification it refused, then closes the connection.

use bytes::{BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// The 6-byte error response: command 8, status, identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorResponse {
    /// One of [`super::status`].
    pub status: u8,
    /// The identifier of the refused notification.
    pub id: u32,
}

/// Encodes (gateway side) and decodes (provider side) error responses;
/// decoding anything but command 8 is an `InvalidData` error.
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
#[cfg(test)]
mod tests {
    use super::super::test_util::decode_split;
    use super::*;

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
}
