//! Framing for the line protocol: LF-terminated lines (CRLF accepted) of at
//! most `max` bytes including the terminator. Bytes, not strings: UTF-8 is
//! checked per command so a bad line gets an error reply instead of killing
//! the stream.

use bytes::{Bytes, BytesMut};
use tokio_util::codec::Decoder;

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A line without its `\n` / `\r\n`.
    Line(Bytes),
    /// `max` bytes arrived without a terminator. The connection must close:
    /// what follows cannot be framed reliably.
    TooLong,
}

/// Line decoder with a hard length limit.
#[derive(Debug, Clone)]
pub struct LineCodec {
    max: usize,
    /// Where to resume the search for `\n`: bytes before it were scanned.
    next_index: usize,
}

impl LineCodec {
    /// `max`: longest line in bytes, terminator included.
    pub fn new(max: usize) -> Self {
        Self { max, next_index: 0 }
    }
}

impl Decoder for LineCodec {
    type Item = Frame;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, Self::Error> {
        let window = buf.len().min(self.max);
        if let Some(pos) = buf[self.next_index.min(window)..window]
            .iter()
            .position(|&b| b == b'\n')
        {
            let end = self.next_index.min(window) + pos;
            let mut line = buf.split_to(end + 1);
            self.next_index = 0;
            line.truncate(end);
            if line.last() == Some(&b'\r') {
                line.truncate(end - 1);
            }
            return Ok(Some(Frame::Line(line.freeze())));
        }
        if buf.len() >= self.max {
            buf.clear();
            self.next_index = 0;
            return Ok(Some(Frame::TooLong));
        }
        self.next_index = buf.len();
        Ok(None)
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, Self::Error> {
        match self.decode(buf)? {
            Some(frame) => Ok(Some(frame)),
            None => {
                // An unterminated last line is not a command.
                buf.clear();
                self.next_index = 0;
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(codec: &mut LineCodec, buf: &mut BytesMut) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Some(f) = codec.decode(buf).unwrap() {
            out.push(f);
        }
        out
    }

    #[test]
    fn split_at_every_offset() {
        let input = b"PING\r\nMSG a b hello world\n\nREGISTER x y\n";
        let expected = vec![
            Frame::Line(Bytes::from_static(b"PING")),
            Frame::Line(Bytes::from_static(b"MSG a b hello world")),
            Frame::Line(Bytes::from_static(b"")),
            Frame::Line(Bytes::from_static(b"REGISTER x y")),
        ];
        for split in 0..=input.len() {
            let mut codec = LineCodec::new(8192);
            let mut buf = BytesMut::new();
            buf.extend_from_slice(&input[..split]);
            let mut got = decode_all(&mut codec, &mut buf);
            buf.extend_from_slice(&input[split..]);
            got.extend(decode_all(&mut codec, &mut buf));
            assert_eq!(got, expected, "split at {split}");
        }
    }

    #[test]
    fn byte_by_byte() {
        let input = b"AUTH s3cret\nPING\n";
        let mut codec = LineCodec::new(8192);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in input {
            buf.extend_from_slice(&[*b]);
            got.extend(decode_all(&mut codec, &mut buf));
        }
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn limit_includes_terminator() {
        let mut codec = LineCodec::new(8);
        let mut buf = BytesMut::from(&b"1234567\n"[..]); // 8 bytes with LF: fits
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(Frame::Line(Bytes::from_static(b"1234567")))
        );
        let mut buf = BytesMut::from(&b"12345678\n"[..]); // 9 bytes: too long
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(Frame::TooLong));
        let mut buf = BytesMut::from(&b"123456\r\n"[..]); // CRLF counts too
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(Frame::Line(Bytes::from_static(b"123456")))
        );
        let mut codec = LineCodec::new(8192);
        let mut buf = BytesMut::from(&vec![b'a'; 9000][..]);
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(Frame::TooLong));
    }

    #[test]
    fn invalid_utf8_is_still_a_frame() {
        let mut codec = LineCodec::new(8192);
        let mut buf = BytesMut::from(&b"MSG a b \xff\xfe\n"[..]);
        assert!(matches!(codec.decode(&mut buf).unwrap(), Some(Frame::Line(_))));
    }

    #[test]
    fn unterminated_tail_at_eof_is_dropped() {
        let mut codec = LineCodec::new(8192);
        let mut buf = BytesMut::from(&b"PING\nPIN"[..]);
        assert!(codec.decode_eof(&mut buf).unwrap().is_some());
        assert_eq!(codec.decode_eof(&mut buf).unwrap(), None);
        assert!(buf.is_empty());
    }
}
