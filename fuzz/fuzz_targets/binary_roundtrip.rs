//! Encode -> decode round trips of arbitrary notifications, error
//! responses and feedback tuples through the legacy binary protocol's
//! codecs, the whole stream decoded in arbitrary pieces.
//!
//! Properties: the encoder refuses exactly what is out of the limits;
//! `encoded_len` is the bytes written; the decoder gives back every
//! accepted notification as it was (command 0 has no identifier or expiry,
//! commands 0 and 1 no priority; command 2 with a priority other than 5
//! or 10 is refused with a processing error naming its identifier).
#![no_main]

use arbitrary::Arbitrary;
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use pushbridge::sink::binary::codec::{
    status, ErrorResponse, ErrorResponseCodec, FeedbackCodec, FeedbackTuple, Push, PushDecoder, PushEncoder, Refused,
    MAX_PAYLOAD, MAX_TOKEN,
};
use tokio_util::codec::{Decoder, Encoder};

#[derive(Debug, Arbitrary)]
struct Note {
    command: u8,
    id: u32,
    expiry: u32,
    priority: u8,
    token: Vec<u8>,
    /// Payload length beyond the bytes given (padded with `x`), so the
    /// 2048-byte limit is reached.
    pad: u16,
    payload: Vec<u8>,
}

#[derive(Debug, Arbitrary)]
struct Input {
    notes: Vec<Note>,
    errors: Vec<(u8, u32)>,
    tuples: Vec<(u32, Vec<u8>)>,
    /// Size of the pieces the decoders read.
    piece: u16,
}

impl Note {
    fn push(&self) -> Push {
        let mut payload = self.payload.clone();
        payload.resize(payload.len() + usize::from(self.pad % 2100), b'x');
        Push {
            command: self.command % 4,
            id: self.id,
            expiry: self.expiry,
            priority: self.priority,
            token: Bytes::from(self.token.clone()),
            payload: Bytes::from(payload),
        }
    }
}

/// What decoding `p` must give back.
fn expected(p: &Push) -> Result<Push, Refused> {
    let mut want = p.clone();
    match p.command {
        0 => (want.id, want.expiry, want.priority) = (0, 0, 10),
        1 => want.priority = 10,
        _ if p.priority != 5 && p.priority != 10 => {
            return Err(Refused {
                status: status::PROCESSING_ERROR,
                id: p.id,
            })
        }
        _ => {}
    }
    Ok(want)
}

/// Decode all of `wire` read `piece` bytes at a time.
fn decode_all<D: Decoder>(d: &mut D, wire: &[u8], piece: usize) -> Vec<D::Item>
where
    D::Error: std::fmt::Debug,
{
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for chunk in wire.chunks(piece) {
        buf.extend_from_slice(chunk);
        while let Some(item) = d.decode(&mut buf).expect("valid input decodes") {
            out.push(item);
        }
    }
    assert!(buf.is_empty(), "{} bytes left over", buf.len());
    out
}

fuzz_target!(|input: Input| {
    let piece = usize::from(input.piece).max(1);
    let mut wire = BytesMut::new();
    let mut want = Vec::new();
    for note in &input.notes {
        let p = note.push();
        let before = wire.len();
        let ok =
            (1..=MAX_TOKEN).contains(&p.token.len()) && (1..=MAX_PAYLOAD).contains(&p.payload.len()) && p.command <= 2;
        match PushEncoder.encode(&p, &mut wire) {
            Ok(()) => {
                assert!(ok, "encoded out of the limits: {p:?}");
                assert_eq!(wire.len() - before, p.encoded_len());
                want.push(expected(&p));
                if want.last().is_some_and(Result::is_err) {
                    break; // nothing after a refusal decodes
                }
            }
            Err(_) => {
                assert!(!ok, "refused within the limits: {p:?}");
                assert_eq!(wire.len(), before, "a refused notification writes nothing");
            }
        }
    }
    assert_eq!(decode_all(&mut PushDecoder::default(), &wire, piece), want);

    let errors: Vec<ErrorResponse> = input
        .errors
        .iter()
        .map(|&(status, id)| ErrorResponse { status, id })
        .collect();
    let mut wire = BytesMut::new();
    for e in &errors {
        ErrorResponseCodec.encode(*e, &mut wire).expect("encoding never fails");
    }
    assert_eq!(wire.len(), 6 * errors.len());
    assert_eq!(decode_all(&mut ErrorResponseCodec, &wire, piece), errors);

    let tuples: Vec<FeedbackTuple> = input
        .tuples
        .iter()
        .filter(|(_, t)| (1..=MAX_TOKEN).contains(&t.len()))
        .map(|(time, token)| FeedbackTuple {
            time: *time,
            token: Bytes::from(token.clone()),
        })
        .collect();
    let mut wire = BytesMut::new();
    for t in &tuples {
        FeedbackCodec.encode(t, &mut wire).expect("encoding never fails");
    }
    assert_eq!(decode_all(&mut FeedbackCodec, &wire, piece), tuples);
});
