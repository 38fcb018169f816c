//! A line codec for untrusted input: LF-terminated lines (CRLF accepted) of
//! at most `max` bytes including the terminator. Bytes, not strings: each
//! protocol decides how to treat invalid UTF-8 (refuse the line, or decode
//! lossily). Bytes already scanned are never scanned again (a resume
//! index), and the buffer never holds more than `max` bytes of one line.
//! Modelled on tokio-util's `LinesCodec`.

use bytes::{Bytes, BytesMut};
use tokio_util::codec::Decoder;

/// What happens after a line longer than the maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverLong {
    /// Report [`Frame::TooLong`] once, then decode nothing more: the caller
    /// answers and closes (what follows cannot be framed reliably).
    Close,
    /// Report [`Frame::TooLong`] once, drop the rest of that line up to its
    /// terminator, then go on with the next line.
    Discard,
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A line without its `\n` / `\r\n`.
    Line(Bytes),
    /// `max` bytes arrived without a terminator.
    TooLong,
}

/// Line decoder with a hard length limit.
#[derive(Debug, Clone)]
pub struct LineCodec {
    max: usize,
    over_long: OverLong,
    /// Where to resume the search for `\n`: bytes before it were scanned.
    next_index: usize,
    /// Dropping the tail of an over-long line ([`OverLong::Discard`]).
    discarding: bool,
    /// An over-long line was seen with [`OverLong::Close`].
    closed: bool,
}

impl LineCodec {
    /// `max`: longest line in bytes, terminator included (at least 1).
    pub fn new(max: usize, over_long: OverLong) -> Self {
        Self {
            max: max.max(1),
            over_long,
            next_index: 0,
            discarding: false,
            closed: false,
        }
    }

    /// Drop the tail of an over-long line; `true` once its terminator went.
    fn skip_tail(&mut self, buf: &mut BytesMut) -> bool {
        match buf[self.next_index..].iter().position(|&b| b == b'\n') {
            Some(pos) => {
                let _ = buf.split_to(self.next_index + pos + 1);
                self.next_index = 0;
                self.discarding = false;
                true
            }
            None => {
                buf.clear();
                self.next_index = 0;
                false
            }
        }
    }
}

impl Decoder for LineCodec {
    type Item = Frame;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, Self::Error> {
        if self.closed {
            buf.clear();
            return Ok(None);
        }
        if self.discarding && !self.skip_tail(buf) {
            return Ok(None);
        }
        let window = buf.len().min(self.max);
        let from = self.next_index.min(window);
        if let Some(pos) = buf[from..window].iter().position(|&b| b == b'\n') {
            let end = from + pos;
            let mut line = buf.split_to(end + 1);
            self.next_index = 0;
            line.truncate(end);
            if line.last() == Some(&b'\r') {
                line.truncate(end - 1);
            }
            return Ok(Some(Frame::Line(line.freeze())));
        }
        if buf.len() >= self.max {
            match self.over_long {
                OverLong::Close => {
                    buf.clear();
                    self.closed = true;
                    self.next_index = 0;
                }
                OverLong::Discard => {
                    // The window held no terminator: drop it and the rest of
                    // the line, wherever it ends.
                    let _ = buf.split_to(self.max);
                    self.next_index = 0;
                    self.discarding = true;
                    self.skip_tail(buf);
                }
            }
            return Ok(Some(Frame::TooLong));
        }
        self.next_index = buf.len();
        Ok(None)
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, Self::Error> {
        match self.decode(buf)? {
            Some(frame) => Ok(Some(frame)),
            None => {
                // An unterminated last line is not a line.
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

    fn line(s: &'static [u8]) -> Frame {
        Frame::Line(Bytes::from_static(s))
    }

    /// Feeds `input` split at every offset; the frames must not depend on
    /// where the split falls.
    fn at_every_split(input: &[u8], max: usize, over_long: OverLong, expected: &[Frame]) {
        for split in 0..=input.len() {
            let mut codec = LineCodec::new(max, over_long);
            let mut buf = BytesMut::new();
            buf.extend_from_slice(&input[..split]);
            let mut got = decode_all(&mut codec, &mut buf);
            buf.extend_from_slice(&input[split..]);
            got.extend(decode_all(&mut codec, &mut buf));
            assert_eq!(got, expected, "split at {split}");
        }
    }

    #[test]
    fn split_at_every_offset() {
        let input = b"PING\r\nMSG a b hello world\n\nREGISTER x y\n";
        let expected = [
            line(b"PING"),
            line(b"MSG a b hello world"),
            line(b""),
            line(b"REGISTER x y"),
        ];
        at_every_split(input, 8192, OverLong::Close, &expected);
        at_every_split(input, 8192, OverLong::Discard, &expected);
    }

    #[test]
    fn byte_by_byte() {
        let input = b"AUTH s3cret\nPING\n";
        let mut codec = LineCodec::new(8192, OverLong::Close);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in input {
            buf.extend_from_slice(&[*b]);
            got.extend(decode_all(&mut codec, &mut buf));
        }
        assert_eq!(got, [line(b"AUTH s3cret"), line(b"PING")]);
    }

    #[test]
    fn limit_includes_terminator() {
        let mut codec = LineCodec::new(8, OverLong::Close);
        let mut buf = BytesMut::from(&b"1234567\n"[..]); // 8 bytes with LF: fits
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(line(b"1234567")));
        let mut buf = BytesMut::from(&b"123456\r\n"[..]); // CRLF counts too
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(line(b"123456")));
        let mut buf = BytesMut::from(&b"12345678\n"[..]); // 9 bytes: too long
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(Frame::TooLong));
    }

    #[test]
    fn close_stops_decoding_after_an_over_long_line() {
        let mut codec = LineCodec::new(8, OverLong::Close);
        let mut buf = BytesMut::from(&b"123456789\nPING\n"[..]);
        assert_eq!(decode_all(&mut codec, &mut buf), [Frame::TooLong]);
        buf.extend_from_slice(b"PING\n");
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert!(buf.is_empty(), "nothing is kept after closing");
    }

    #[test]
    fn discard_drops_the_whole_over_long_line_and_goes_on() {
        let input = b"ok\n0123456789abcdef\r\nnext\n";
        at_every_split(
            input,
            8,
            OverLong::Discard,
            &[line(b"ok"), Frame::TooLong, line(b"next")],
        );
        // A very long line fed in pieces never holds more than `max` bytes.
        let mut codec = LineCodec::new(16, OverLong::Discard);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for _ in 0..1000 {
            buf.extend_from_slice(&[b'x'; 100]);
            got.extend(decode_all(&mut codec, &mut buf));
            assert!(buf.len() <= 16, "buffer held {} bytes", buf.len());
        }
        buf.extend_from_slice(b"\nafter\n");
        got.extend(decode_all(&mut codec, &mut buf));
        assert_eq!(got, [Frame::TooLong, line(b"after")]);
    }

    #[test]
    fn resume_index_never_rescans() {
        // 1 MB arriving one byte at a time under a 2 MB limit would be
        // quadratic without the resume index; with it this is instant.
        let mut codec = LineCodec::new(2 << 20, OverLong::Close);
        let mut buf = BytesMut::new();
        for _ in 0..(1 << 20) {
            buf.extend_from_slice(b"a");
            assert_eq!(codec.decode(&mut buf).unwrap(), None);
        }
        buf.extend_from_slice(b"\n");
        assert!(matches!(codec.decode(&mut buf).unwrap(), Some(Frame::Line(l)) if l.len() == 1 << 20));
    }

    #[test]
    fn invalid_utf8_is_still_a_frame() {
        let mut codec = LineCodec::new(8192, OverLong::Close);
        let mut buf = BytesMut::from(&b"MSG a b \xff\xfe\n"[..]);
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(line(b"MSG a b \xff\xfe")));
    }

    #[test]
    fn unterminated_tail_at_eof_is_dropped() {
        let mut codec = LineCodec::new(8192, OverLong::Close);
        let mut buf = BytesMut::from(&b"PING\nPIN"[..]);
        assert!(codec.decode_eof(&mut buf).unwrap().is_some());
        assert_eq!(codec.decode_eof(&mut buf).unwrap(), None);
        assert!(buf.is_empty());
    }
}
