//! The line protocol's input path: arbitrary bytes, fed in arbitrary
//! pieces, through `pushbridge_kit::LineCodec`, then each line through
//! `pushbridge_line::command::parse`.
//!
//! Properties: no panic; the frames equal those of a simple reference
//! model (so they do not depend on where the input was split); no line is
//! longer than the limit; the codec never keeps a whole line's worth of
//! bytes buffered; an `ERR` reply is one line of bounded length.
#![no_main]

use arbitrary::Arbitrary;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pushbridge_kit::{Frame, LineCodec, OverLong};
use tokio_util::codec::Decoder;

#[derive(Debug, Arbitrary)]
struct Input {
    /// Line limit, terminator included (kept small so over-long lines happen).
    max: u8,
    discard: bool,
    /// Sizes of the pieces the input arrives in.
    pieces: Vec<u8>,
    data: Vec<u8>,
}

/// The frames `data` must give: lines of at most `max` bytes with their
/// terminator, CR stripped; `TooLong` for a longer one (then stop, or skip
/// to its end); an unterminated tail is a frame only when over-long.
fn model(data: &[u8], max: usize, over_long: OverLong) -> Vec<Frame> {
    let mut out = Vec::new();
    let mut rest = data;
    loop {
        match rest.iter().position(|&b| b == b'\n') {
            Some(pos) if pos < max => {
                let line = rest[..pos].strip_suffix(b"\r").unwrap_or(&rest[..pos]);
                out.push(Frame::Line(bytes::Bytes::copy_from_slice(line)));
                rest = &rest[pos + 1..];
            }
            Some(pos) => {
                out.push(Frame::TooLong);
                if over_long == OverLong::Close {
                    return out;
                }
                rest = &rest[pos + 1..];
            }
            None => {
                if rest.len() >= max {
                    out.push(Frame::TooLong);
                }
                return out;
            }
        }
    }
}

fuzz_target!(|input: Input| {
    let max = usize::from(input.max).max(1);
    let over_long = if input.discard {
        OverLong::Discard
    } else {
        OverLong::Close
    };
    let mut codec = LineCodec::new(max, over_long);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut rest = &input.data[..];
    let mut sizes = input
        .pieces
        .iter()
        .map(|&n| usize::from(n) + 1)
        .chain(std::iter::repeat(64));
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(64).min(rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        while let Some(frame) = codec.decode(&mut buf).expect("the line codec never fails") {
            frames.push(frame);
        }
        assert!(buf.len() < max, "{} bytes buffered under a {max}-byte limit", buf.len());
    }
    assert_eq!(frames, model(&input.data, max, over_long));
    for frame in &frames {
        let Frame::Line(line) = frame else { continue };
        assert!(line.len() < max, "a {}-byte line under a {max}-byte limit", line.len());
        check_parse(line);
    }
    // The parser on the raw input too (longer lines, embedded newlines).
    check_parse(&input.data);
});

/// Parse one line; an error's `ERR` reply must be exactly one line of
/// bounded length (nothing the peer sent can inject a second reply).
fn check_parse(line: &[u8]) {
    if let Err(e) = pushbridge_line::command::parse(line) {
        let reply = e.line();
        assert!(reply.starts_with("ERR ") && reply.ends_with('\n'), "{reply:?}");
        assert_eq!(reply.matches(['\n', '\r']).count(), 1, "{reply:?}");
        assert!(reply.len() <= 512, "a {}-byte reply", reply.len());
    }
}
