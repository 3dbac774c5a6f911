//! Frame boundaries for the event loop: where each frame of a connection's
//! byte stream starts, so that a large frame can be read from the socket
//! straight into a buffer of its own, whole, instead of in read-sized pieces
//! that the reader thread copies together again.
//!
//! The splitter looks only at the length field of each header. Everything
//! else (kind, reserved bits, checksum) is the [`Deframer`](super::Deframer)'s
//! job on the reader thread, which sees exactly the same bytes either way.

use super::frame::FRAME_HEADER_LEN;
use byteorder::{BigEndian, ByteOrder};

/// What to do with the bytes of one read; see [`Splitter::split`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Split {
    /// Hand over `input[..n]` as it is. The bytes after it (fewer than a
    /// frame header) are the start of a header: keep them and put them in
    /// front of the next read.
    Pass(usize),
    /// Hand over `input[..at]` as it is. A frame of `total` bytes (header
    /// included) starts at `at` and runs past the end of the input:
    /// `input[at..]` is its beginning, and its other
    /// `total - (input.len() - at)` bytes are to be read into a buffer of
    /// its own, after which the stream is at a frame boundary again.
    Direct { at: usize, total: usize },
}

/// Follows the frame boundaries of one inbound connection.
#[derive(Debug)]
pub(crate) struct Splitter {
    /// Stream bytes still to pass before the next frame header: first the
    /// hello, then the rest of the frame being passed.
    skip: usize,
    /// Frames of at least this many bytes (header included) are read
    /// directly when they run past a read.
    min_direct: usize,
    max_len: u32,
    /// A header announced more than `max_len`: from here on everything is
    /// passed on as it is (the reader thread fails the connection).
    off: bool,
}

impl Splitter {
    /// A splitter for a stream that starts with `skip` bytes that are not
    /// frames (the hello).
    pub fn new(skip: usize, min_direct: usize, max_len: u32) -> Splitter {
        Splitter {
            skip,
            min_direct: min_direct.max(FRAME_HEADER_LEN + 1),
            max_len,
            off: false,
        }
    }

    /// Looks at the next bytes of the stream (after any bytes kept from the
    /// last call) and says which of them to hand over.
    pub fn split(&mut self, input: &[u8]) -> Split {
        let mut pos = 0;
        loop {
            if self.off {
                return Split::Pass(input.len());
            }
            let left = input.len() - pos;
            if self.skip >= left {
                self.skip -= left;
                return Split::Pass(input.len());
            }
            pos += self.skip;
            self.skip = 0;
            if input.len() - pos < FRAME_HEADER_LEN {
                return Split::Pass(pos);
            }
            let len = BigEndian::read_u32(&input[pos..pos + 4]);
            if len > self.max_len {
                self.off = true;
                return Split::Pass(input.len());
            }
            let total = FRAME_HEADER_LEN + len as usize;
            if total >= self.min_direct && total > input.len() - pos {
                return Split::Direct { at: pos, total };
            }
            self.skip = total;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Deframer, FrameKind, encode_frame, heartbeat_frame};

    const MAX: u32 = 1 << 20;

    /// A hello-sized prefix and frames of the given payload sizes.
    fn stream(sizes: &[usize]) -> Vec<u8> {
        let mut out = vec![0xAB; 32];
        for (i, &n) in sizes.iter().enumerate() {
            encode_frame(&mut out, FrameKind::Message, MAX, |b| {
                b.extend((0..n).map(|j| (i * 7 + j) as u8))
            })
            .unwrap();
            out.extend_from_slice(&heartbeat_frame());
        }
        out
    }

    /// Plays the event loop: reads of at most `read` bytes, bytes kept in
    /// front of the next read, direct frames read whole. Returns the pieces
    /// handed over, each marked direct or not.
    fn drive(bytes: &[u8], read: usize, min_direct: usize) -> Vec<(bool, Vec<u8>)> {
        let mut s = Splitter::new(32, min_direct, MAX);
        let mut out = Vec::new();
        let mut carry: Vec<u8> = Vec::new();
        let mut pos = 0;
        while pos < bytes.len() {
            let n = read.min(bytes.len() - pos);
            let mut input = std::mem::take(&mut carry);
            input.extend_from_slice(&bytes[pos..pos + n]);
            pos += n;
            match s.split(&input) {
                Split::Pass(k) => {
                    assert!(input.len() - k < FRAME_HEADER_LEN, "kept a whole header");
                    if k > 0 {
                        out.push((false, input[..k].to_vec()));
                    }
                    carry = input[k..].to_vec();
                }
                Split::Direct { at, total } => {
                    assert!(total >= min_direct);
                    assert!(input.len() - at < total, "a direct frame fits the read");
                    if at > 0 {
                        out.push((false, input[..at].to_vec()));
                    }
                    let mut frame = input[at..].to_vec();
                    let rest = total - frame.len();
                    frame.extend_from_slice(&bytes[pos..pos + rest]);
                    pos += rest;
                    out.push((true, frame));
                }
            }
        }
        if !carry.is_empty() {
            out.push((false, carry));
        }
        out
    }

    /// The frames a deframer finds in the pieces (after the hello).
    fn frames(pieces: &[(bool, Vec<u8>)]) -> Vec<Vec<u8>> {
        let mut all = Vec::new();
        for (_, p) in pieces {
            all.extend_from_slice(p);
        }
        let mut d = Deframer::new(MAX);
        let mut cursor = d.feed(&all[32..]);
        let mut got = Vec::new();
        while let Some(f) = cursor.next() {
            got.push(f.unwrap().payload.to_vec());
        }
        assert_eq!(cursor.remaining(), 0);
        got
    }

    #[test]
    fn every_read_size_keeps_the_bytes_and_reads_large_frames_whole() {
        let sizes = [0, 5, 3000, 100, 70_000, 1, 200_000, 9];
        let bytes = stream(&sizes);
        let want = frames(&[(false, bytes.clone())]);
        for read in (1..=80).chain([1000, 4096, 65_536, 65_547, 300_000]) {
            let pieces = drive(&bytes, read, 4096);
            let joined: Vec<u8> = pieces.iter().flat_map(|(_, p)| p.clone()).collect();
            assert_eq!(joined, bytes, "read size {read}: bytes changed");
            assert_eq!(frames(&pieces), want, "read size {read}");
            for (direct, p) in &pieces {
                if *direct {
                    // A whole frame of at least min_direct bytes.
                    let len = BigEndian::read_u32(&p[0..4]) as usize;
                    assert_eq!(p.len(), FRAME_HEADER_LEN + len);
                    assert!(p.len() >= 4096);
                }
            }
            // Both large frames are longer than any of these reads (plus
            // the kept header bytes): each was read whole.
            let direct = pieces.iter().filter(|(d, _)| *d).count();
            if read + FRAME_HEADER_LEN < 70_012 {
                assert_eq!(direct, 2, "read size {read}");
            }
        }
    }

    #[test]
    fn small_frames_and_frames_within_one_read_are_passed() {
        let bytes = stream(&[10, 20, 5000]);
        let pieces = drive(&bytes, bytes.len(), 4096);
        assert_eq!(pieces, vec![(false, bytes.clone())]);
        let pieces = drive(&bytes, 100, 1 << 20);
        assert!(pieces.iter().all(|(d, _)| !d));
    }

    #[test]
    fn an_impossible_length_turns_the_splitter_off() {
        let mut bytes = vec![0u8; 32];
        bytes.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF, 1, 0, 0, 0, 0, 0, 0, 0]);
        bytes.extend_from_slice(&[7; 100]);
        let mut s = Splitter::new(32, 64, MAX);
        assert_eq!(s.split(&bytes[..40]), Split::Pass(32));
        assert_eq!(s.split(&bytes[32..60]), Split::Pass(28));
        assert_eq!(s.split(&bytes[60..]), Split::Pass(bytes.len() - 60));
    }

    #[test]
    fn random_bytes_never_panic_and_every_byte_is_accounted_for() {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..2000 {
            let len = (next() % 600) as usize;
            // Small lengths now and then, so that frames also end in range.
            let bytes: Vec<u8> = (0..len)
                .map(|i| if i % 12 < 2 { 0 } else { next() as u8 })
                .collect();
            let max = (next() % 300) as u32;
            let mut s = Splitter::new((next() % 40) as usize, 1 + (next() % 100) as usize, max);
            let mut pos = 0;
            let mut carry = 0;
            while pos < bytes.len() {
                let n = 1 + (next() as usize % 64).min(bytes.len() - pos - 1);
                let input = &bytes[pos - carry..pos + n];
                match s.split(input) {
                    Split::Pass(k) => {
                        assert!(k <= input.len() && input.len() - k < FRAME_HEADER_LEN);
                        carry = input.len() - k;
                        pos += n;
                    }
                    Split::Direct { at, total } => {
                        assert!(at <= input.len() && total > input.len() - at);
                        assert!(total <= FRAME_HEADER_LEN + max as usize);
                        // The caller reads the rest of the frame whole.
                        pos = (pos + n + total - (input.len() - at)).min(bytes.len());
                        carry = 0;
                    }
                }
            }
        }
    }

    #[test]
    fn the_header_may_arrive_a_byte_at_a_time() {
        let bytes = stream(&[100_000]);
        let mut s = Splitter::new(32, 64, MAX);
        assert_eq!(s.split(&bytes[..32]), Split::Pass(32));
        for k in 1..FRAME_HEADER_LEN {
            assert_eq!(s.split(&bytes[32..32 + k]), Split::Pass(0));
        }
        assert_eq!(
            s.split(&bytes[32..32 + FRAME_HEADER_LEN]),
            Split::Direct {
                at: 0,
                total: FRAME_HEADER_LEN + 100_000
            }
        );
    }
}
