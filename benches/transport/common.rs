//! Pieces every workload shares: the in-flight window, the process CPU
//! clock, latency percentiles, and how a child process reports a result.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// BENCH.md's window: the sender waits while `sent - delivered >= WINDOW`.
pub const WINDOW: u64 = 4096;

/// A sender that had to wait is woken once the in-flight count has fallen
/// to this. Waking it for every single delivered message would cost one
/// futex wake per message and measure the harness, not the transport;
/// with this hysteresis the transport always has at least this many
/// messages queued while the sender sleeps, so it never runs dry.
pub const WAKE_AT: u64 = WINDOW - 1024;

/// Keeps the consumer's hot counter on its own cache line.
#[repr(align(128))]
struct Padded<T>(T);

/// The in-flight window between one sender thread and one consumer thread.
pub struct Window {
    delivered: Padded<AtomicU64>,
    sleeping: AtomicBool,
    wake_when: AtomicU64,
    sender: Thread,
}

impl Window {
    /// A window whose sender is the calling thread.
    pub fn for_current_thread() -> Window {
        Window::for_thread(std::thread::current())
    }

    pub fn for_thread(sender: Thread) -> Window {
        Window {
            delivered: Padded(AtomicU64::new(0)),
            sleeping: AtomicBool::new(false),
            wake_when: AtomicU64::new(0),
            sender,
        }
    }

    pub fn delivered(&self) -> u64 {
        self.delivered.0.load(Acquire)
    }

    /// Sender side: returns once message number `sent + 1` may be sent.
    /// `seen` is the sender's last look at the delivered count: a lower
    /// bound, so while it already leaves room the shared counter is not
    /// read at all (reading it for every message would bounce its cache
    /// line between the consumer's core and the sender's). `flush` runs
    /// once before the sender sleeps (RAW must write out what it has
    /// coalesced, or nothing would ever be delivered).
    #[inline]
    pub fn wait_for_room(&self, sent: u64, seen: &mut u64, flush: impl FnOnce()) {
        if sent - *seen < WINDOW {
            return;
        }
        *seen = self.delivered.0.load(Acquire);
        if sent - *seen < WINDOW {
            return;
        }
        flush();
        self.wake_when.store(sent - WAKE_AT, SeqCst);
        self.sleeping.store(true, SeqCst);
        loop {
            let d = self.delivered.0.load(SeqCst);
            if d >= sent - WAKE_AT {
                *seen = d;
                break;
            }
            // The timeout only guards against a lost wake-up.
            std::thread::park_timeout(Duration::from_millis(1));
        }
        self.sleeping.store(false, SeqCst);
    }

    /// Waits (sleeping) until `n` messages have been delivered, or `limit`.
    pub fn wait_delivered(&self, n: u64, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.delivered() < n {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        true
    }

    /// Consumer side: `n` messages have now been delivered in total.
    #[inline]
    pub fn set_delivered(&self, n: u64) {
        self.delivered.0.store(n, Release);
        if self.sleeping.load(Acquire)
            && n >= self.wake_when.load(Acquire)
            && self.sleeping.swap(false, AcqRel)
        {
            self.sender.unpark();
        }
    }
}

/// User + system CPU time of the whole process so far.
pub fn process_cpu() -> Duration {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    assert_eq!(rc, 0, "getrusage failed");
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// CLOCK_MONOTONIC in seconds, as `perf record -k CLOCK_MONOTONIC` stamps
/// its samples: printed so that a profile can be cut to the timed phase
/// with `perf report --time START,END`.
pub fn monotonic_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes into the struct we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// A point in time on the one monotonic clock, with the process CPU then.
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    pub at: Instant,
    pub cpu: Duration,
    pub mono_s: f64,
}

impl Stamp {
    pub fn now() -> Stamp {
        // CPU first: it is the slower call, and the clock should be as
        // close as possible to the event being stamped.
        let cpu = process_cpu();
        Stamp {
            at: Instant::now(),
            cpu,
            mono_s: monotonic_s(),
        }
    }
}

/// What a timed throughput phase measured.
#[derive(Debug, Clone, Copy)]
pub struct Throughput {
    /// CLOCK_MONOTONIC seconds at the start and end of the timed phase.
    pub mono_s: (f64, f64),
    pub msgs: u64,
    pub payload_bytes: u64,
    pub elapsed: Duration,
    pub cpu: Duration,
}

impl Throughput {
    pub fn between(start: Stamp, end: Stamp, msgs: u64, payload_bytes: u64) -> Throughput {
        Throughput {
            mono_s: (start.mono_s, end.mono_s),
            msgs,
            payload_bytes,
            elapsed: end.at - start.at,
            cpu: end.cpu.saturating_sub(start.cpu),
        }
    }

    pub fn msgs_per_s(&self) -> f64 {
        self.msgs as f64 / self.elapsed.as_secs_f64()
    }

    /// Payload megabytes (10^6 B) per second.
    pub fn payload_mbps(&self) -> f64 {
        self.payload_bytes as f64 / 1e6 / self.elapsed.as_secs_f64()
    }

    pub fn cpu_us_per_msg(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.msgs as f64
    }

    /// Emits the three throughput metrics for `imp`/`workload`.
    pub fn emit(&self, imp: &str, workload: &str) {
        emit(imp, workload, "msgs_per_s", self.msgs_per_s());
        emit(imp, workload, "payload_MBps", self.payload_mbps());
        emit(imp, workload, "cpu_us_per_msg", self.cpu_us_per_msg());
        info(&format!(
            "{imp} {workload}: {} msgs, {} payload bytes in {:.3} s, CPU {:.3} s \
             (timed phase: perf report --time {:.6},{:.6})",
            self.msgs,
            self.payload_bytes,
            self.elapsed.as_secs_f64(),
            self.cpu.as_secs_f64(),
            self.mono_s.0,
            self.mono_s.1
        ));
    }
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Emits `{prefix}_p50_us`, `{prefix}_p99_us` and `{prefix}_max_us` of
/// latencies in nanoseconds; returns them sorted.
pub fn emit_percentiles(imp: &str, workload: &str, prefix: &str, lat_ns: &[u64]) -> Vec<u64> {
    let mut v = lat_ns.to_vec();
    v.sort_unstable();
    let us = |ns: u64| ns as f64 / 1e3;
    emit(
        imp,
        workload,
        &format!("{prefix}_p50_us"),
        us(percentile(&v, 50.0)),
    );
    emit(
        imp,
        workload,
        &format!("{prefix}_p99_us"),
        us(percentile(&v, 99.0)),
    );
    let max = v.last().copied().unwrap_or(0);
    emit(imp, workload, &format!("{prefix}_max_us"), us(max));
    v
}

/// Marks a line of a child's stdout that the parent collects as a result.
pub const RESULT_TAG: &str = "@result ";
/// Marks a line of a child's stdout that the parent passes on as a note.
pub const INFO_TAG: &str = "@info ";

/// Reports one measured value of one run (child side).
pub fn emit(imp: &str, workload: &str, metric: &str, value: f64) {
    println!("{RESULT_TAG}{imp} {workload} {metric} {value}");
}

/// A note the parent prints once (configs, counts).
pub fn info(text: &str) {
    println!("{INFO_TAG}{text}");
}

/// Nanoseconds since a process-wide epoch: the timestamp heartbeats carry.
pub fn now_ns(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

/// A payload of `len` bytes with a non-trivial pattern.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 131 + 7) as u8).collect()
}
