//! The legacy binary protocol's decoders over arbitrary bytes, fed in
//! arbitrary pieces: notifications (`PushDecoder`, what the simulator's
//! gateway side reads), error responses (`ErrorResponseCodec`, what the
//! binary sink reads from Apple) and feedback tuples (`FeedbackCodec`).
//!
//! Properties: no panic; a decoder never holds more than one bounded
//! frame; nothing is decoded after a refusal or an error; what decodes
//! has sizes within the limits and encodes back to what decodes the same.
#![no_main]

use arbitrary::Arbitrary;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pushbridge::sink::binary::codec::{
    ErrorResponseCodec, FeedbackCodec, Push, PushDecoder, PushEncoder, MAX_FRAME, MAX_PAYLOAD, MAX_TOKEN,
};
use tokio_util::codec::{Decoder, Encoder};

/// The longest notification on the wire: a command-2 frame at the limit
/// (command 1 at its maximum is shorter).
const LONGEST: usize = 5 + MAX_FRAME;

#[derive(Debug, Arbitrary)]
struct Input {
    /// Sizes of the pieces the input arrives in.
    pieces: Vec<u16>,
    data: Vec<u8>,
}

/// Feed `data` to `decoder` in the pieces `sizes` gives; every item, and
/// whether decoding failed. After each piece the buffer holds less than
/// `bound` bytes.
fn feed<D: Decoder>(decoder: &mut D, data: &[u8], pieces: &[u16], bound: usize) -> (Vec<D::Item>, bool) {
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    let mut sizes = pieces.iter().map(|&n| usize::from(n) + 1).chain(std::iter::repeat(512));
    let mut rest = data;
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(512).min(rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => break,
                Err(_) => return (items, true),
            }
        }
        assert!(buf.len() < bound, "{} bytes buffered (bound {bound})", buf.len());
    }
    (items, false)
}

/// A decoded notification is within the limits, and encoding it gives
/// bytes that decode to the same notification.
fn check_push(p: &Push) {
    assert!((1..=MAX_TOKEN).contains(&p.token.len()), "token of {}", p.token.len());
    assert!(
        (1..=MAX_PAYLOAD).contains(&p.payload.len()),
        "payload of {}",
        p.payload.len()
    );
    assert!(p.command <= 2 && (p.priority == 5 || p.priority == 10), "{p:?}");
    let mut wire = BytesMut::new();
    PushEncoder
        .encode(p, &mut wire)
        .expect("a decoded notification encodes");
    assert_eq!(wire.len(), p.encoded_len());
    let again = PushDecoder::default().decode(&mut wire).expect("decoding never fails");
    assert_eq!(again, Some(Ok(p.clone())));
    assert!(wire.is_empty());
}

fuzz_target!(|input: Input| {
    let mut decoder = PushDecoder::default();
    let (pushes, failed) = feed(&mut decoder, &input.data, &input.pieces, LONGEST);
    assert!(
        !failed,
        "the notification decoder reports refusals as items, never errors"
    );
    if let Some(i) = pushes.iter().position(Result::is_err) {
        assert_eq!(i + 1, pushes.len(), "nothing decodes after a refusal");
    }
    pushes.iter().filter_map(|r| r.as_ref().ok()).for_each(check_push);

    let (errors, _) = feed(&mut ErrorResponseCodec, &input.data, &input.pieces, 6);
    for (e, wire) in errors.iter().zip(input.data.chunks(6)) {
        let mut out = BytesMut::new();
        ErrorResponseCodec.encode(*e, &mut out).expect("encoding never fails");
        assert_eq!(&out[..], wire);
    }

    let (tuples, _) = feed(&mut FeedbackCodec, &input.data, &input.pieces, 6 + MAX_TOKEN);
    let mut out = BytesMut::new();
    for t in &tuples {
        assert!((1..=MAX_TOKEN).contains(&t.token.len()));
        FeedbackCodec.encode(t, &mut out).expect("encoding never fails");
    }
    assert_eq!(&out[..], &input.data[..out.len()], "tuples encode back to their bytes");
});
