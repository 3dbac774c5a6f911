//! Helpers shared by the fuzz targets: reading the control bytes at the
//! front of an input (frame limit, chunk plan), optionally repairing frame
//! checksums so the fuzzer gets past the CRC, and a straightforward
//! one-shot reference frame decoder to compare the incremental one with.

#![allow(dead_code)]

use raftwire::testing::wire::{Deframer, FRAME_HEADER_LEN, FrameError, FrameKind};

/// Reads control bytes from the front of the input; missing bytes read as 0.
pub struct Control<'a> {
    data: &'a [u8],
}

impl<'a> Control<'a> {
    pub fn new(data: &'a [u8]) -> Control<'a> {
        Control { data }
    }

    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    pub fn u64(&mut self) -> u64 {
        (u64::from(self.u32()) << 32) | u64::from(self.u32())
    }

    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (a, b) = self.data.split_at(n);
        self.data = b;
        a
    }

    pub fn rest(self) -> &'a [u8] {
        self.data
    }
}

/// The default `max_frame_len` (16 MiB). Limits up to 1 GiB are valid too,
/// but a header announcing that much makes the decoder reserve it (by
/// design, after the limit check), which under ASan costs a lot per run.
pub const DEFAULT_MAX_FRAME_LEN: u32 = 16 << 20;

/// A frame limit chosen by one mode byte and four value bytes: mostly
/// small (so lengths in the input hit it from both sides), sometimes 0 (a
/// dialer's limit) and sometimes up to the default limit.
pub fn pick_max(c: &mut Control<'_>) -> u32 {
    let mode = c.u8();
    let raw = c.u32();
    match mode % 8 {
        0 => 0,
        1 => 1,
        2..=4 => raw % 256,
        5 | 6 => raw % 65_536,
        _ => raw % (DEFAULT_MAX_FRAME_LEN + 1),
    }
}

/// Chunk sizes for feeding a stream: a count byte (0 to 15 size bytes)
/// then that many size bytes, used in a cycle. A size byte `b` means
/// `b` bytes when `b < 0x80`, and `(b & 0x7f) * 97` bytes otherwise, so
/// both one-byte and large chunks occur; 0 is an empty chunk (fed as is).
/// With no size bytes the whole input is one chunk.
pub struct ChunkPlan {
    sizes: Vec<usize>,
}

impl ChunkPlan {
    pub fn read(c: &mut Control<'_>) -> ChunkPlan {
        let n = (c.u8() % 16) as usize;
        let sizes = c
            .bytes(n)
            .iter()
            .map(|&b| {
                if b < 0x80 {
                    b as usize
                } else {
                    (b & 0x7f) as usize * 97
                }
            })
            .collect();
        ChunkPlan { sizes }
    }

    /// Splits `bytes` into chunks by the plan (empty chunks included, but
    /// at most as many empty ones in a row as the plan has sizes).
    pub fn split<'b>(&self, bytes: &'b [u8]) -> Vec<&'b [u8]> {
        if self.sizes.is_empty() || self.sizes.iter().all(|&s| s == 0) {
            return vec![bytes];
        }
        let mut out = Vec::new();
        let mut rest = bytes;
        let mut i = 0;
        while !rest.is_empty() {
            let n = self.sizes[i % self.sizes.len()].min(rest.len());
            out.push(&rest[..n]);
            rest = &rest[n..];
            i += 1;
        }
        out
    }
}

/// CRC-32C of a frame: header bytes 0..8 then the payload.
pub fn frame_crc(header8: &[u8], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(header8), payload)
}

/// Rewrites the checksum of every complete frame from the start of `bytes`
/// (whatever its kind, flags or length), so decoding goes past the CRC check
/// and reaches the other checks and the payload decoders.
pub fn fix_checksums(bytes: &mut [u8]) {
    let mut pos = 0;
    while bytes.len() - pos >= FRAME_HEADER_LEN {
        let len = u32::from_be_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        let Some(end) = (pos + FRAME_HEADER_LEN).checked_add(len) else {
            break;
        };
        if end > bytes.len() {
            break;
        }
        let crc = frame_crc(&bytes[pos..pos + 8], &bytes[pos + FRAME_HEADER_LEN..end]);
        bytes[pos + 8..pos + 12].copy_from_slice(&crc.to_be_bytes());
        pos = end;
    }
}

/// What decoding a whole stream gave: the frames (kind, payload, offset of
/// the frame in the stream), the error that stopped it if any, and the bytes
/// left pending at the end.
#[derive(Debug, PartialEq, Eq)]
pub struct Decoded {
    pub frames: Vec<(FrameKind, Vec<u8>, usize)>,
    pub error: Option<FrameError>,
    pub pending: usize,
}

/// The protocol's frame rules (docs/PROTOCOL.md §6–§8) applied to a whole
/// buffer at once, written independently of `Deframer`.
pub fn reference_decode(bytes: &[u8], max: u32) -> Decoded {
    let mut frames = Vec::new();
    let mut pos = 0;
    // Decodes until the bytes run out (an incomplete frame stays pending)
    // or a frame breaks a rule (then nothing is pending).
    let (error, pending) = loop {
        let rest = &bytes[pos..];
        if rest.len() < FRAME_HEADER_LEN {
            break (None, rest.len());
        }
        let len = u32::from_be_bytes(rest[0..4].try_into().unwrap());
        let err = if len > max {
            Some(FrameError::Oversize { len, max })
        } else if FrameKind::from_u8(rest[4]).is_none() {
            Some(FrameError::UnknownKind(rest[4]))
        } else if rest[5..8] != [0, 0, 0] {
            Some(FrameError::NonZeroReserved)
        } else {
            None
        };
        if err.is_some() {
            break (err, 0);
        }
        let total = FRAME_HEADER_LEN + len as usize;
        if rest.len() < total {
            break (None, rest.len());
        }
        let expected = u32::from_be_bytes(rest[8..12].try_into().unwrap());
        let actual = frame_crc(&rest[0..8], &rest[FRAME_HEADER_LEN..total]);
        if expected != actual {
            break (Some(FrameError::BadChecksum { expected, actual }), 0);
        }
        let kind = FrameKind::from_u8(rest[4]).unwrap();
        frames.push((kind, rest[FRAME_HEADER_LEN..total].to_vec(), pos));
        pos += total;
    };
    Decoded {
        frames,
        error,
        pending,
    }
}

/// Feeds `chunks` to a `Deframer` with limit `max`, checking the decoder's
/// own invariants after every call, and returns what it decoded. Frame
/// offsets are recomputed from the frame lengths (frames are contiguous).
pub fn deframe_checked(chunks: &[&[u8]], max: u32) -> Decoded {
    let mut d = Deframer::new(max);
    let mut frames = Vec::new();
    let mut error = None;
    let mut offset = 0usize;
    let bound = FRAME_HEADER_LEN + max as usize;
    for chunk in chunks {
        let mut cursor = d.feed(chunk);
        loop {
            match cursor.next() {
                None => break,
                Some(Ok(f)) => {
                    assert!(error.is_none(), "a frame after an error");
                    assert!(
                        f.payload.len() <= max as usize,
                        "frame of {} bytes over the limit {max}",
                        f.payload.len()
                    );
                    frames.push((f.kind, f.payload.to_vec(), offset));
                    offset += FRAME_HEADER_LEN + f.payload.len();
                }
                Some(Err(e)) => {
                    assert!(error.is_none(), "a second error: {e:?}");
                    error = Some(e);
                }
            }
        }
        // `None` means the chunk is used up (buffered or decoded): callers
        // compute their read offset from this. A failed decoder looks at
        // nothing, so it leaves later chunks untouched.
        assert!(
            cursor.remaining() == 0 || error.is_some(),
            "cursor stopped with {} input bytes left",
            cursor.remaining()
        );
        assert!(
            d.pending_bytes() <= bound,
            "pending {} > 12 + max {max}",
            d.pending_bytes()
        );
        // Header reassembly may round the capacity up to 24 (Vec growth);
        // beyond that the buffer is sized exactly for one frame.
        assert!(
            d.buffer_capacity() <= bound.max(2 * FRAME_HEADER_LEN),
            "buffer capacity {} > 12 + max {max}",
            d.buffer_capacity()
        );
        assert_eq!(d.is_failed(), error.is_some());
        if error.is_some() {
            assert_eq!(d.pending_bytes(), 0);
        }
    }
    Decoded {
        frames,
        error,
        pending: d.pending_bytes(),
    }
}
