//! Micro-benchmarks of the frame codec (`raftwire::testing::wire`) and of what the
//! writer and reader threads do per message around it.
//!
//! ```text
//! cargo bench --bench codec -- [--quick] [--json FILE] [FILTER]
//! ```
//!
//! Each case runs in a loop until a sample takes at least 20 ms of the
//! thread's CPU time (5 ms with `--quick`); the figure is the median of 7
//! samples (3 with `--quick`). Thread CPU time, not the wall clock: the
//! machine is shared, and time spent waiting for a core is not the codec's.
//! `GB/s` counts payload bytes (10^9 B/s). Baselines: `memcpy` (append the
//! payload to a reused buffer, laid out as frames are) and `crc32c` (the
//! checksum alone, with the kernel the crate picked for this CPU, printed
//! first) are the floor that encoding and decoding a frame cannot beat.
//! `crc kernel fold` and `crc kernel crc32` time both checksum kernels
//! whichever was picked (`fold` needs VPCLMULQDQ to be the faster one).

use raftwire::testing::wire::{Deframer, FrameKind, Kernel, encode_frame};
use raftwire::{Envelope, Message, MessageClass};
use std::hint::black_box;
use std::time::Duration;

/// Bytes a writer batch holds before it is handed on (the default
/// `batch_max_bytes`): the encoders clear their buffer past it.
const BATCH: usize = 256 << 10;
/// The default `read_chunk_len`: the reader sees the stream in pieces this big.
const READ_CHUNK: usize = 64 << 10;
const MAX_LEN: u32 = 16 << 20;

struct Opts {
    quick: bool,
    json: Option<String>,
    filter: Vec<String>,
}

fn opts() -> Opts {
    let mut o = Opts {
        quick: false,
        json: None,
        filter: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--json" => o.json = it.next(),
            "--bench" => {}
            f if !f.starts_with('-') => o.filter.push(f.to_string()),
            other => {
                eprintln!(
                    "unknown argument {other}\nusage: cargo bench --bench codec -- [--quick] [--json FILE] [FILTER]"
                );
                std::process::exit(2);
            }
        }
    }
    o
}

/// CPU time of the calling thread: unlike the wall clock, it does not run
/// while the thread waits for a core, so a busy shared machine does not
/// inflate the figures (the codec is single-threaded and never blocks).
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes into the struct we pass.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Times `op`, which does `per_op` frames' work, and returns ns per frame.
fn measure(o: &Opts, per_op: u64, mut op: impl FnMut()) -> f64 {
    let (min_sample, samples) = if o.quick {
        (Duration::from_millis(5), 3)
    } else {
        (Duration::from_millis(20), 7)
    };
    // Warm up and find an iteration count that fills a sample.
    let mut iters = 1u64;
    loop {
        let t = thread_cpu();
        for _ in 0..iters {
            op();
        }
        if thread_cpu() - t >= min_sample {
            break;
        }
        iters *= 2;
    }
    let mut ns: Vec<f64> = (0..samples)
        .map(|_| {
            let t = thread_cpu();
            for _ in 0..iters {
                op();
            }
            (thread_cpu() - t).as_nanos() as f64 / (iters * per_op) as f64
        })
        .collect();
    ns.sort_by(f64::total_cmp);
    ns[ns.len() / 2]
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 131 + 7) as u8).collect()
}

/// Encoded frames of `payload`, enough to fill about a batch (at least one).
fn stream_of(payload: &[u8]) -> (Vec<u8>, u64) {
    let mut out = Vec::new();
    let mut n = 0;
    while n == 0 || out.len() < BATCH {
        encode_frame(&mut out, FrameKind::Message, MAX_LEN, |b| {
            b.extend_from_slice(payload)
        })
        .unwrap();
        n += 1;
    }
    (out, n)
}

/// Decodes `stream` fed in pieces of `chunk` bytes; calls `f` per payload.
fn decode_all(d: &mut Deframer, stream: &[u8], chunk: usize, mut f: impl FnMut(&[u8])) {
    for piece in stream.chunks(chunk) {
        let mut c = d.feed(piece);
        while let Some(frame) = c.next() {
            f(frame.expect("valid frame").payload);
        }
    }
}

struct Result {
    case: &'static str,
    payload: usize,
    ns: f64,
}

fn main() {
    let o = opts();
    eprintln!(
        "checksum kernel: {}",
        raftwire::testing::wire::crc_implementation()
    );
    let sizes: [(usize, &str); 5] = [
        (0, "empty"),
        (128 + 17, "W1 envelope (145 B)"),
        (4 << 10, "4 KiB"),
        (64 << 10, "64 KiB"),
        ((1 << 20) + 17, "W2 envelope (1 MiB + 17 B)"),
    ];
    let wanted = |case: &str| o.filter.is_empty() || o.filter.iter().any(|f| case.contains(f));
    let mut results = Vec::new();
    let mut run = |case: &'static str, payload: usize, per_op: u64, op: &mut dyn FnMut()| {
        if wanted(case) {
            let ns = measure(&o, per_op, op);
            eprintln!("  {case:<32} {payload:>8} B  {ns:>10.1} ns");
            results.push(Result { case, payload, ns });
        }
    };
    for (size, _) in sizes {
        let payload = pattern(size);
        let mut buf: Vec<u8> = Vec::with_capacity(BATCH + size + 64);

        // Copies laid out as frames are (a 12-byte gap before each payload):
        // the encoder's copy without the checksum.
        run("memcpy (baseline)", size, 1, &mut || {
            if buf.len() >= BATCH {
                buf.clear();
            }
            buf.extend_from_slice(&[0u8; 12]);
            buf.extend_from_slice(black_box(&payload));
            black_box(&buf);
        });
        run("crc32c (baseline)", size, 1, &mut || {
            black_box(raftwire::testing::wire::crc32c(black_box(&payload)));
        });
        run("crc kernel fold", size, 1, &mut || {
            black_box(Kernel::Fold.checksum(black_box(&payload)));
        });
        run("crc kernel crc32", size, 1, &mut || {
            black_box(Kernel::Crc32.checksum(black_box(&payload)));
        });
        buf.clear();
        run("encode_frame", size, 1, &mut || {
            if buf.len() >= BATCH {
                buf.clear();
            }
            encode_frame(&mut buf, FrameKind::Message, MAX_LEN, |b| {
                b.extend_from_slice(black_box(&payload))
            })
            .unwrap();
            black_box(&buf);
        });

        let (stream, frames) = stream_of(&payload);
        let mut d = Deframer::new(MAX_LEN);
        run("decode (whole buffer)", size, frames, &mut || {
            decode_all(&mut d, black_box(&stream), stream.len(), |p| {
                black_box(p);
            });
        });
        let mut d = Deframer::new(MAX_LEN);
        run("decode (64 KiB reads)", size, frames, &mut || {
            decode_all(&mut d, black_box(&stream), READ_CHUNK, |p| {
                black_box(p);
            });
        });

        // What the writer and the reader do per Envelope, around the codec.
        if size >= 17 {
            let env = Envelope::new(2, 1, MessageClass::Append, payload[17..].to_vec());
            buf.clear();
            run("writer: Envelope -> frame", size, 1, &mut || {
                if buf.len() >= BATCH {
                    buf.clear();
                }
                let m = black_box(&env);
                encode_frame(&mut buf, FrameKind::Message, MAX_LEN, |b| m.encode(b)).unwrap();
                black_box(&buf);
            });
            let (stream, frames) = {
                let mut out = Vec::new();
                let mut n = 0;
                while n == 0 || out.len() < BATCH {
                    encode_frame(&mut out, FrameKind::Message, MAX_LEN, |b| env.encode(b)).unwrap();
                    n += 1;
                }
                (out, n)
            };
            let mut d = Deframer::new(MAX_LEN);
            // As the reader does: a payload is a slice of the shared read
            // buffer (or, when its frame spans reads, of its own buffer).
            let shared = raftwire::Bytes::from(stream.clone());
            let slice = |p: &[u8]| {
                let (base, at) = (shared.as_ptr() as usize, p.as_ptr() as usize);
                if at >= base && at + p.len() <= base + shared.len() {
                    shared.slice_ref(p)
                } else {
                    raftwire::Bytes::copy_from_slice(p)
                }
            };
            run(
                "reader: 64 KiB reads -> Envelope",
                size,
                frames,
                &mut || {
                    decode_all(&mut d, black_box(&shared), READ_CHUNK, |p| {
                        black_box(Envelope::decode(slice(p)).unwrap());
                    });
                },
            );
            run("caller: build Envelope", size, 1, &mut || {
                black_box(Envelope::new(
                    2,
                    1,
                    MessageClass::Append,
                    black_box(&payload[17..]).to_vec(),
                ));
            });
        }
    }

    // The table: one row per case, one column pair per size.
    let mut cases: Vec<&str> = Vec::new();
    for r in &results {
        if !cases.contains(&r.case) {
            cases.push(r.case);
        }
    }
    let header: Vec<String> = sizes
        .iter()
        .map(|(_, name)| format!("{name}: ns/frame, GB/s"))
        .collect();
    println!(
        "codec micro-benchmarks{} (median of samples; GB/s = payload bytes / time, 10^9 B/s)\n",
        if o.quick { " (QUICK)" } else { "" }
    );
    println!("| case | {} |", header.join(" | "));
    println!("| --- |{}", " ---: |".repeat(sizes.len()));
    for case in &cases {
        let cells: Vec<String> = sizes
            .iter()
            .map(|(size, _)| {
                match results
                    .iter()
                    .find(|r| r.case == *case && r.payload == *size)
                {
                    Some(r) if r.payload == 0 => format!("{:.1} ns", r.ns),
                    Some(r) => format!("{:.1} ns, {:.2}", r.ns, r.payload as f64 / r.ns),
                    None => "—".into(),
                }
            })
            .collect();
        println!("| {case} | {} |", cells.join(" | "));
    }
    if let Some(path) = &o.json {
        let lines: String = results
            .iter()
            .map(|r| {
                format!(
                    "{{\"bench\":\"codec\",\"case\":\"{}\",\"payload\":{},\"ns_per_frame\":{:.2},\"GBps\":{:.3}}}\n",
                    r.case,
                    r.payload,
                    r.ns,
                    if r.payload == 0 { 0.0 } else { r.payload as f64 / r.ns }
                )
            })
            .collect();
        std::fs::write(path, lines).expect("write --json file");
    }
}
