//! Fuzzes `raftwire::testing::wire::Deframer` (the frame decoder every connection
//! runs on bytes from the network).
//!
//! Input layout:
//!
//! ```text
//! byte 0        bit 0: repair the CRC of every complete frame first
//! bytes 1..6    the frame limit (see common::pick_max)
//! byte 6..      the chunk plan (count byte, then size bytes)
//! rest          the byte stream
//! ```
//!
//! Checked: no panic; no frame over the limit; `pending_bytes()` never
//! above 12 + limit and the buffer never larger than one frame; nothing
//! after an error; the chunked decode equals a one-shot reference decode of
//! the whole stream (frames, error and pending bytes); every frame decoded
//! re-encodes with `encode_frame` to exactly the bytes it came from and
//! decodes again to the same frame.

#![no_main]

mod common;

use common::{ChunkPlan, Control, deframe_checked, fix_checksums, reference_decode};
use libfuzzer_sys::fuzz_target;
use raftwire::testing::wire::{Deframer, FRAME_HEADER_LEN, FrameError, encode_frame};

fuzz_target!(|data: &[u8]| {
    let mut c = Control::new(data);
    let flags = c.u8();
    let max = common::pick_max(&mut c);
    let plan = ChunkPlan::read(&mut c);
    let mut stream = c.rest().to_vec();
    if flags & 1 != 0 {
        fix_checksums(&mut stream);
    }

    let got = deframe_checked(&plan.split(&stream), max);
    let want = reference_decode(&stream, max);
    assert_eq!(got, want, "chunked decode differs from the reference");
    if let Some(FrameError::Oversize { len, max: m }) = got.error {
        assert!(len > m && m == max);
    }

    for (kind, payload, offset) in &got.frames {
        let original = &stream[*offset..*offset + FRAME_HEADER_LEN + payload.len()];
        let mut again = Vec::new();
        encode_frame(&mut again, *kind, max, |b| b.extend_from_slice(payload))
            .expect("a frame within the limit re-encodes");
        assert_eq!(again, original, "re-encoding is not the original bytes");

        let mut d = Deframer::new(max);
        let mut cursor = d.feed(&again);
        let f = cursor.next().expect("a frame").expect("a valid frame");
        assert_eq!((f.kind, f.payload), (*kind, &payload[..]));
        assert!(cursor.next().is_none());
        assert_eq!(d.pending_bytes(), 0);

        // A limit one below the payload refuses it and leaves `out` alone.
        if !payload.is_empty() {
            let mut out = vec![0xAB];
            let r = encode_frame(&mut out, *kind, payload.len() as u32 - 1, |b| {
                b.extend_from_slice(payload)
            });
            assert_eq!(r, Err(payload.len()));
            assert_eq!(out, [0xAB]);
        }
    }
});
