//! CRC-32C (Castagnoli): the bulk checksum, and the arithmetic around it.
//!
//! Two kernels, picked once at run time from the CPU's features:
//!
//! - [`Kernel::Fold`], the `crc-fast` crate's carry-less multiplication
//!   folding 64 bytes per step, on x86-64 CPUs with AVX-512 VPCLMULQDQ.
//!   Measured on the development machine on a day it had them: 24–58 GB/s
//!   from 1 KiB to 1 MiB and 7.5 GB/s at 64 bytes, where the `crc32c`
//!   crate did 8–22 and 4.0.
//! - [`Kernel::Crc32`], the `crc32c` crate: three interleaved SSE 4.2
//!   `crc32` streams (the ARMv8 CRC instructions on aarch64, a table-driven
//!   scalar loop on CPUs with neither). On an AVX2-only EPYC it did
//!   24 GB/s on 1 MiB where `crc-fast`'s 16-byte PCLMULQDQ fold did 18.6,
//!   so without VPCLMULQDQ it stays the choice.
//!
//! `RAFTWIRE_CRC_KERNEL=fold` or `=crc32` in the environment overrides the
//! pick (read once, for benchmarks that compare the two); [`implementation`]
//! names the kernel in use.
//!
//! Beyond the kernels: combining the checksums of two byte strings into the
//! checksum of their concatenation in a few dozen nanoseconds, so that a
//! snapshot chunk's bytes are checksummed once and the result serves both
//! the frame checksum (header bytes, then payload) and the checksum of the
//! whole snapshot. The method is zlib's `crc32_combine_op`: appending `n`
//! bytes to a message multiplies its (reflected) CRC by x^(8n) modulo the
//! polynomial, then the CRC of the appended bytes is added. Computing the
//! operator costs a few hundred nanoseconds, so [`Combiner`] keeps the last.

use crc_fast::CrcAlgorithm;
use std::sync::OnceLock;

/// A CRC-32C implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// `crc-fast`: VPCLMULQDQ folding (its own dispatch within).
    Fold,
    /// The `crc32c` crate: SSE 4.2 / ARMv8 CRC instructions, or tables.
    Crc32,
}

impl Kernel {
    /// The kernel for this CPU, or the one `RAFTWIRE_CRC_KERNEL` names.
    fn pick() -> Kernel {
        match std::env::var("RAFTWIRE_CRC_KERNEL").as_deref() {
            Ok("fold") => return Kernel::Fold,
            Ok("crc32") => return Kernel::Crc32,
            _ => {}
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("vpclmulqdq")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512f")
        {
            return Kernel::Fold;
        }
        Kernel::Crc32
    }

    /// The kernel in use (picked on first use).
    #[inline]
    pub fn current() -> Kernel {
        static KERNEL: OnceLock<Kernel> = OnceLock::new();
        *KERNEL.get_or_init(Kernel::pick)
    }

    /// The CRC-32C of `data` with this kernel.
    #[inline]
    pub fn checksum(self, data: &[u8]) -> u32 {
        match self {
            Kernel::Fold => crc_fast::crc32_iscsi(data),
            Kernel::Crc32 => crc32c::crc32c(data),
        }
    }

    /// The CRC-32C of `a ++ data`, given `crc = crc32c(a)`, with this kernel.
    #[inline]
    pub fn append(self, crc: u32, data: &[u8]) -> u32 {
        if data.is_empty() {
            return crc;
        }
        match self {
            Kernel::Fold => {
                // The register before the final inversion is the
                // complement of a finished checksum.
                let mut d = crc_fast::Digest::new_with_init_state(
                    CrcAlgorithm::Crc32Iscsi,
                    u64::from(!crc),
                );
                d.update(data);
                d.finalize() as u32
            }
            Kernel::Crc32 => crc32c::crc32c_append(crc, data),
        }
    }
}

/// The CRC-32C of `data`.
#[inline]
pub fn crc32c(data: &[u8]) -> u32 {
    Kernel::current().checksum(data)
}

/// The CRC-32C of `a ++ data`, given `crc = crc32c(a)`.
#[inline]
pub(crate) fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    Kernel::current().append(crc, data)
}

/// The checksum kernel in use, as benchmarks and logs report it: `crc-fast`
/// with its target (for example `crc-fast x86_64-avx512-vpclmulqdq`), or
/// `crc32c`.
pub fn implementation() -> String {
    match Kernel::current() {
        Kernel::Fold => format!(
            "crc-fast {}",
            crc_fast::get_calculator_target(CrcAlgorithm::Crc32Iscsi)
        ),
        Kernel::Crc32 => "crc32c (SSE 4.2 / ARMv8 crc32, or tables)".to_string(),
    }
}

/// The CRC-32C polynomial, reflected.
const POLY: u32 = 0x82F6_3B78;

/// a(x) * b(x) modulo the polynomial, in the reflected representation
/// (bit 31 is x^0).
fn multmodp(a: u32, mut b: u32) -> u32 {
    let mut m = 1u32 << 31;
    let mut p = 0u32;
    loop {
        if a & m != 0 {
            p ^= b;
            if a & (m - 1) == 0 {
                break;
            }
        }
        m >>= 1;
        b = if b & 1 != 0 { (b >> 1) ^ POLY } else { b >> 1 };
    }
    p
}

/// x^(2^k) modulo the polynomial, for k = 0..32 (the powers repeat with
/// period dividing 2^32 - 1; 32 entries cover every `usize` length here).
fn x2n_table() -> &'static [u32; 32] {
    static TABLE: std::sync::OnceLock<[u32; 32]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = [0u32; 32];
        let mut p = 1u32 << 30; // x^1
        for e in t.iter_mut() {
            *e = p;
            p = multmodp(p, p);
        }
        t
    })
}

/// The operator that appends `len` zero bytes: x^(8 len) modulo the
/// polynomial. Compute it once per length and reuse it.
pub(crate) fn shift_op(len: usize) -> u32 {
    let table = x2n_table();
    let mut p = 1u32 << 31; // x^0
    let mut n = len as u64;
    let mut k = 3usize; // 8 = 2^3
    while n != 0 {
        if n & 1 != 0 {
            p = multmodp(table[k & 31], p);
        }
        n >>= 1;
        k += 1;
    }
    p
}

/// Byte tables for slicing-by-8: `TABLES[k][b]` is the CRC register after
/// byte `b` followed by `k` zero bytes.
const TABLES: [[u32; 256]; 8] = {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut bit = 0;
        while bit < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ POLY } else { c >> 1 };
            bit += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut k = 1;
    while k < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = t[k - 1][i];
            t[k][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            i += 1;
        }
        k += 1;
    }
    t
};

/// The CRC-32C of exactly 8 bytes (a frame header's checksummed part), by
/// table: a few nanoseconds, less than the call into a vector kernel costs
/// before its first byte. Equal to `crc32c(b)`.
pub(crate) fn crc8(b: &[u8; 8]) -> u32 {
    let lo = !u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let t = &TABLES;
    !(t[7][(lo & 0xff) as usize]
        ^ t[6][((lo >> 8) & 0xff) as usize]
        ^ t[5][((lo >> 16) & 0xff) as usize]
        ^ t[4][(lo >> 24) as usize]
        ^ t[3][b[4] as usize]
        ^ t[2][b[5] as usize]
        ^ t[1][b[6] as usize]
        ^ t[0][b[7] as usize])
}

/// The CRC-32C of `a ++ b` from `crc(a)`, `crc(b)` and `shift_op(b.len())`.
pub(crate) fn combine_op(crc_a: u32, crc_b: u32, op: u32) -> u32 {
    multmodp(op, crc_a) ^ crc_b
}

/// The CRC-32C of `a ++ b` from `crc(a)`, `crc(b)` and `b.len()`.
#[cfg(test)]
pub(crate) fn combine(crc_a: u32, crc_b: u32, len_b: usize) -> u32 {
    combine_op(crc_a, crc_b, shift_op(len_b))
}

/// Caches the shift operator of the last length used: snapshot chunks
/// all have one length but the last.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Combiner {
    len: usize,
    op: u32,
}

impl Combiner {
    /// The CRC of `a ++ b` where `b` is `len_b` bytes long.
    pub fn combine(&mut self, crc_a: u32, crc_b: u32, len_b: usize) -> u32 {
        if self.len != len_b || self.op == 0 {
            self.len = len_b;
            self.op = shift_op(len_b);
        }
        combine_op(crc_a, crc_b, self.op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(n: usize, seed: u32) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    /// Bit-at-a-time CRC-32C: the definition, against which the kernels
    /// are checked.
    fn reference(data: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in data {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 != 0 { (c >> 1) ^ POLY } else { c >> 1 };
            }
        }
        !c
    }

    #[test]
    fn the_kernel_equals_the_definition_at_every_length_and_alignment() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        let data = bytes(70_000, 3);
        let lens = (0..=300).chain([511, 512, 513, 1023, 4096, 4097, 65_535, 65_536, 69_000]);
        for len in lens {
            for off in [0, 1, 7, 13] {
                let d = &data[off..off + len];
                let want = reference(d);
                assert_eq!(crc32c(d), want, "len {len} offset {off}");
                for cut in [0, len / 3, len] {
                    let (a, b) = d.split_at(cut);
                    assert_eq!(
                        crc32c_append(crc32c(a), b),
                        want,
                        "append at {cut} of {len}"
                    );
                }
            }
        }
        assert!(!implementation().is_empty());
    }

    #[test]
    fn combine_equals_the_checksum_of_the_concatenation() {
        let mut c = Combiner::default();
        for (la, lb) in [
            (0, 0),
            (0, 1),
            (1, 0),
            (8, 1),
            (8, 145),
            (12, 4096),
            (3, 65_536),
            (8, 1 << 20),
            (1 << 20, 1 << 20),
            (999, 123_457),
        ] {
            let (a, b) = (bytes(la, la as u32 + 7), bytes(lb, lb as u32 + 11));
            let whole = reference(&[a.as_slice(), &b].concat());
            let (ca, cb) = (crc32c(&a), crc32c(&b));
            assert_eq!(combine(ca, cb, lb), whole, "{la} + {lb}");
            assert_eq!(c.combine(ca, cb, lb), whole, "{la} + {lb} (cached)");
        }
    }

    #[test]
    fn crc8_equals_the_crate_on_every_byte_value_in_every_position() {
        for pos in 0..8 {
            for v in 0..=255u8 {
                let mut b = [0x5au8; 8];
                b[pos] = v;
                assert_eq!(crc8(&b), crc32c(&b), "byte {pos} = {v}");
            }
        }
        for seed in 1..2000u32 {
            let b: [u8; 8] = bytes(8, seed).try_into().unwrap();
            assert_eq!(crc8(&b), crc32c(&b));
        }
    }

    #[test]
    fn a_chain_of_chunks_combines_to_the_whole() {
        let data = bytes(3_000_017, 5);
        let mut c = Combiner::default();
        let mut acc = 0u32;
        for chunk in data.chunks(65_536) {
            acc = c.combine(acc, crc32c(chunk), chunk.len());
        }
        assert_eq!(acc, crc32c(&data));
    }
}
