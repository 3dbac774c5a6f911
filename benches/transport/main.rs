//! The transport benchmarks of BENCH.md: W1, W2, W3-idle, W3-load, W4 and
//! the raw-TCP baseline (RAW), plus a throughput-vs-payload-size curve for
//! raftwire and RAW; the same workloads on the Go peers (etcd rafthttp,
//! hashicorp/raft, raw Go TCP) when `peerbench` can be built; and, with the
//! `raft-rs` feature, W1 with raft-rs's `MsgAppend` (`w1-raft`) and W5,
//! three raft-rs `RawNode`s over raftwire. BENCHMARKS.md has the method and
//! the results.
//!
//! ```text
//! cargo bench --bench transport -- [--runs N] [--quick] [--only LIST]
//!     [--json FILE] [--markdown FILE] [--svg FILE] [--quiet-wait SECS]
//!     [--from FILE] [--list] [--against BIN]
//!     [--no-peers] [--peers DIR] [--peerbench BIN]
//! ```
//!
//! The parent process runs every measurement in a fresh child process (this
//! same executable with `--child JOB`, or `peerbench` for a peer's job),
//! run after run, interleaving raftwire, RAW and the peers so that machine
//! noise falls on all. Each child prints its raw values; the parent reports
//! the median of the runs with min and max as BENCH.md's JSON lines
//! (stdout, and `--json FILE`), then Markdown tables (stdout, and
//! `--markdown FILE`): raftwire against the peers and RAW first, then every
//! raftwire figure as a ratio to RAW from the same invocation with
//! BENCH.md's targets, and draws the curve with the peers' W1/W2 points
//! (`--svg FILE`). `--from FILE` redraws tables and plot from saved JSON
//! lines without measuring. `--against BIN` also runs every raftwire job
//! with another build of this benchmark (say, the previous commit's), in
//! the same invocation, alternating which goes first, and adds a table of
//! this build against that one.

mod common;
mod pair;
mod peers;
mod raw_tcp;
mod report;
mod svg;
#[cfg(feature = "raft-rs")]
mod w5;

use raftwire::Envelope;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// Payload sizes of the throughput-vs-size curve.
pub const CURVE_SIZES: [usize; 6] = [64, 512, 4 << 10, 64 << 10, 1 << 20, 4 << 20];

/// W5's entry sizes.
pub const W5_SIZES: [usize; 2] = [128, 16 << 10];

/// The sizes and durations of every workload.
#[derive(Debug, Clone)]
pub struct Scale {
    pub w1_payload: usize,
    pub w1_warmup: u64,
    pub w1_count: u64,
    pub w2_payload: usize,
    pub w2_warmup: u64,
    pub w2_count: u64,
    pub hb_period: Duration,
    pub hb_interval: Duration,
    /// W4: bytes in the snapshot.
    pub w4_size: u64,
    /// Curve points: untimed warm-up that measures the rate…
    pub curve_pilot: Duration,
    /// …from which the timed count is chosen to take about this long…
    pub curve_target: Duration,
    /// …within this much payload built up front.
    pub curve_max_bytes: u64,
    /// W5: proposals flow this long before the timed phase…
    pub w5_warmup: Duration,
    /// …which lasts this long.
    pub w5_duration: Duration,
}

impl Scale {
    /// BENCH.md's workloads.
    fn full() -> Scale {
        Scale {
            w1_payload: 128,
            w1_warmup: 10_000,
            w1_count: 1_000_000,
            w2_payload: 1 << 20,
            w2_warmup: 20,
            w2_count: 2_000,
            hb_period: Duration::from_secs(2),
            hb_interval: Duration::from_millis(1),
            w4_size: 512 << 20,
            curve_pilot: Duration::from_millis(150),
            curve_target: Duration::from_millis(750),
            curve_max_bytes: 3 << 29,
            w5_warmup: Duration::from_secs(1),
            w5_duration: Duration::from_secs(5),
        }
    }

    /// A smoke run: a tenth of the messages, shorter periods. Not BENCH.md.
    fn quick() -> Scale {
        Scale {
            w1_count: 100_000,
            w2_count: 200,
            hb_period: Duration::from_millis(500),
            w4_size: 64 << 20,
            curve_pilot: Duration::from_millis(50),
            curve_target: Duration::from_millis(200),
            curve_max_bytes: 1 << 28,
            w5_warmup: Duration::from_millis(300),
            w5_duration: Duration::from_secs(1),
            ..Scale::full()
        }
    }
}

/// One throughput measurement: a payload size and how many messages.
#[derive(Debug, Clone)]
pub struct Plan {
    pub payload_len: usize,
    pub run: Run,
}

#[derive(Debug, Clone)]
pub enum Run {
    /// Fixed counts (W1, W2): warm-up, then the timed messages.
    Fixed { warmup: u64, count: u64 },
    /// Curve points: a warm-up of `pilot` that measures the rate, then
    /// enough messages to take about `target`, at most `max_bytes` of them.
    Sized {
        pilot: Duration,
        target: Duration,
        max_bytes: u64,
    },
}

impl Plan {
    /// The timed count for a curve point, from the pilot's steady-state
    /// delivery rate (`delivered` messages in `took`, measured over the
    /// pilot's last two thirds, after the cold start).
    pub fn sized_count(
        &self,
        delivered: u64,
        took: Duration,
        target: Duration,
        max_bytes: u64,
    ) -> u64 {
        let rate = delivered as f64 / took.as_secs_f64().max(1e-6);
        let cap = (max_bytes / self.payload_len.max(1) as u64).max(16);
        ((rate * target.as_secs_f64()) as u64).clamp(16, cap)
    }
}

/// Watches deliveries during a pilot: the rate is taken from one third of
/// the pilot on, when the connections and allocators are warm.
pub struct Pilot {
    start: Instant,
    pilot: Duration,
    mark: Option<(Instant, u64)>,
}

impl Pilot {
    pub fn new(pilot: Duration) -> Pilot {
        Pilot {
            start: Instant::now(),
            pilot,
            mark: None,
        }
    }

    /// Whether the pilot is still running (at least 16 messages are sent);
    /// `delivered` is the consumer's count now.
    pub fn running(&mut self, sent: u64, delivered: impl FnOnce() -> u64) -> bool {
        let t = self.start.elapsed();
        if self.mark.is_none() && t >= self.pilot / 3 {
            self.mark = Some((Instant::now(), delivered()));
        }
        sent < 16 || t < self.pilot
    }

    /// Deliveries per `took` since the mark (or since the start, if too few).
    pub fn rate(&self, delivered_now: u64, total_sent: u64) -> (u64, Duration) {
        match self.mark {
            Some((at, d)) if delivered_now >= d + 8 => (delivered_now - d, at.elapsed()),
            _ => (total_sent, self.start.elapsed()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// W1 with `Envelope`s.
    W1,
    /// W1 with raft-rs `MsgAppend`s of one entry (feature `raft-rs`).
    W1Raft,
    W2,
    W3Idle,
    W3Load,
    W4,
    /// A point of the curve: payload size in bytes.
    Curve(usize),
    /// W5: three raft-rs nodes, proposals of `size` bytes at the leader,
    /// with or without a concurrent stream of 1 MiB entries (`bulk`).
    W5 {
        size: usize,
        bulk: bool,
    },
}

impl Workload {
    pub fn name(self) -> String {
        match self {
            Workload::W1 => "w1".into(),
            Workload::W1Raft => "w1-raft".into(),
            Workload::W2 => "w2".into(),
            Workload::W3Idle => "w3-idle".into(),
            Workload::W3Load => "w3-load".into(),
            Workload::W4 => "w4".into(),
            Workload::Curve(size) => format!("curve-{}", size_name(size)),
            Workload::W5 { size, bulk } => {
                format!("w5-{}{}", size_name(size), if bulk { "-bulk" } else { "" })
            }
        }
    }
}

/// `64B`, `4KiB`, `1MiB`.
pub fn size_name(size: usize) -> String {
    match size {
        s if s >= 1 << 20 && s % (1 << 20) == 0 => format!("{}MiB", s >> 20),
        s if s >= 1 << 10 && s % (1 << 10) == 0 => format!("{}KiB", s >> 10),
        s => format!("{s}B"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Job {
    imp: &'static str,
    workload: Workload,
}

impl Job {
    fn name(self) -> String {
        format!("{}:{}", self.imp, self.workload.name())
    }

    /// A job of one of the Go peers, run by peerbench, not by this binary.
    fn is_peer(self) -> bool {
        peers::is_peer(self.imp)
    }

    /// A job of raftwire's (plain or TLS), which `--against` runs twice.
    fn is_raftwire(self) -> bool {
        self.imp != raw_tcp::IMPL && !self.is_peer()
    }

    /// Runs the measurement in this process (the child's side).
    fn run(self, scale: &Scale) -> Result<(), Box<dyn std::error::Error>> {
        let w = self.workload.name();
        let fixed = |payload_len, warmup, count| Plan {
            payload_len,
            run: Run::Fixed { warmup, count },
        };
        if self.is_peer() {
            return Err(format!("{} runs in peerbench, not here", self.name()).into());
        }
        let plan = match self.workload {
            Workload::W1 | Workload::W1Raft => {
                fixed(scale.w1_payload, scale.w1_warmup, scale.w1_count)
            }
            Workload::W2 => fixed(scale.w2_payload, scale.w2_warmup, scale.w2_count),
            Workload::Curve(size) => Plan {
                payload_len: size,
                run: Run::Sized {
                    pilot: scale.curve_pilot,
                    target: scale.curve_target,
                    max_bytes: scale.curve_max_bytes,
                },
            },
            Workload::W3Idle => return pair::w3_idle::<Envelope>(&w, scale),
            Workload::W3Load => return pair::w3_load::<Envelope>(&w, scale),
            Workload::W4 => return pair::w4(&w, scale),
            #[cfg(feature = "raft-rs")]
            Workload::W5 { size, bulk } => return w5::run(&w, size, bulk, scale),
            #[cfg(not(feature = "raft-rs"))]
            Workload::W5 { .. } => return Err("W5 needs the raft-rs feature".into()),
        };
        match (self.imp, self.workload) {
            (raw_tcp::IMPL, _) => raw_tcp::run(&w, &plan)?,
            #[cfg(feature = "raft-rs")]
            (imp, Workload::W1Raft) => pair::throughput::<raft::eraftpb::Message>(imp, &w, &plan)?,
            #[cfg(not(feature = "raft-rs"))]
            (_, Workload::W1Raft) => return Err("w1-raft needs the raft-rs feature".into()),
            (imp, _) => pair::throughput::<Envelope>(imp, &w, &plan)?,
        }
        Ok(())
    }
}

/// Every job, in the order one run executes them: for each workload RAW,
/// raftwire (plain, then TLS), then the Go peers.
fn all_jobs() -> Vec<Job> {
    let job = |imp, workload| Job { imp, workload };
    let rw = |workload| job(pair::IMPL, workload);
    let raw = |workload| job(raw_tcp::IMPL, workload);
    let tls = |workload| job(pair::IMPL_TLS, workload);
    let mut jobs = Vec::new();
    for w in [
        Workload::W1,
        Workload::W2,
        Workload::W3Idle,
        Workload::W3Load,
        Workload::W4,
    ] {
        if matches!(w, Workload::W1 | Workload::W2) {
            jobs.push(raw(w));
        }
        jobs.push(rw(w));
        if w == Workload::W1 && cfg!(feature = "raft-rs") {
            jobs.push(rw(Workload::W1Raft));
        }
        if matches!(w, Workload::W1 | Workload::W2) && cfg!(feature = "tls") {
            jobs.push(tls(w));
        }
        jobs.extend(peers::jobs_for(w).iter().map(|&imp| job(imp, w)));
    }
    for size in CURVE_SIZES {
        jobs.push(raw(Workload::Curve(size)));
        jobs.push(rw(Workload::Curve(size)));
    }
    if cfg!(feature = "raft-rs") {
        for size in W5_SIZES {
            for bulk in [false, true] {
                jobs.push(rw(Workload::W5 { size, bulk }));
            }
        }
    }
    jobs
}

#[derive(Debug, Default)]
struct Args {
    runs: usize,
    quick: bool,
    only: Vec<String>,
    json: Option<String>,
    markdown: Option<String>,
    svg: Option<String>,
    from: Option<String>,
    child: Option<String>,
    list: bool,
    /// Before each job, wait up to this long for the machine to be idle.
    quiet_wait: Option<Duration>,
    /// Another build of this benchmark to compare with, job by job.
    against: Option<String>,
    /// Leave out the Go peers.
    no_peers: bool,
    /// Where peerbench comes from.
    peers: peers::Source,
}

const USAGE: &str = "usage: cargo bench --bench transport -- [--runs N] [--quick] \
[--only w1,w2,w3,curve,raw-tcp,...] [--json FILE] [--markdown FILE] [--svg FILE] \
[--quiet-wait SECS] [--from FILE] [--list] [--against BIN] [--no-peers] [--peers DIR] \
[--peerbench BIN]";

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        runs: 3,
        ..Args::default()
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--runs" => {
                a.runs = value("--runs")?
                    .parse()
                    .map_err(|e| format!("--runs: {e}"))?
            }
            "--quick" => a.quick = true,
            "--only" => {
                a.only = value("--only")?
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .collect()
            }
            "--json" => a.json = Some(value("--json")?),
            "--markdown" => a.markdown = Some(value("--markdown")?),
            "--svg" => a.svg = Some(value("--svg")?),
            "--from" => a.from = Some(value("--from")?),
            "--child" => a.child = Some(value("--child")?),
            "--against" => a.against = Some(value("--against")?),
            "--list" => a.list = true,
            "--no-peers" => a.no_peers = true,
            "--peers" => a.peers.dir = Some(value("--peers")?),
            "--peerbench" => a.peers.bin = Some(value("--peerbench")?),
            "--quiet-wait" => {
                let secs: f64 = value("--quiet-wait")?
                    .parse()
                    .map_err(|e| format!("--quiet-wait: {e}"))?;
                a.quiet_wait = Some(Duration::from_secs_f64(secs));
            }
            // cargo bench passes --bench to harness = false targets.
            "--bench" => {}
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    if a.runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let scale = if args.quick {
        Scale::quick()
    } else {
        Scale::full()
    };
    if let Some(name) = &args.child {
        let Some(job) = all_jobs().into_iter().find(|j| j.name() == *name) else {
            eprintln!("unknown job {name}");
            return ExitCode::from(2);
        };
        return match job.run(&scale) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{name}: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let jobs: Vec<Job> = all_jobs()
        .into_iter()
        .filter(|j| args.only.is_empty() || args.only.iter().any(|o| j.name().contains(o)))
        .collect();
    if args.list {
        for j in &jobs {
            println!("{}", j.name());
        }
        return ExitCode::SUCCESS;
    }
    match parent(&args, &jobs, &scale) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Whether the Go peers' jobs run: the peerbench binary, or why not (for
/// stderr and the report), or `None` when no peer job was selected.
fn peers_for(args: &Args, jobs: &[Job]) -> Option<Result<std::path::PathBuf, String>> {
    if !jobs.iter().any(|j| j.is_peer()) {
        return None;
    }
    let found = if args.no_peers {
        Err("--no-peers".to_string())
    } else {
        args.peers.locate()
    };
    match &found {
        Ok(bin) => eprintln!(
            "peers: etcd rafthttp, hashicorp/raft, raw Go TCP with {}",
            bin.display()
        ),
        Err(why) => eprintln!(
            "peers: NOT RUN (etcd rafthttp, hashicorp/raft, raw Go TCP): {why}\n\
             peers: every other job runs; the peers' columns stay empty"
        ),
    }
    Some(found)
}

/// Runs every job `runs` times, each in a fresh child, then reports.
/// Returns whether every child succeeded.
fn parent(args: &Args, jobs: &[Job], scale: &Scale) -> std::io::Result<bool> {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut peer_note = None;
    let aggs = if let Some(path) = &args.from {
        report::read_jsonl(&std::fs::read_to_string(path)?)
    } else {
        let peerbench = match peers_for(args, jobs) {
            Some(Ok(bin)) => {
                peer_note = Some(format!("peers run by {}", bin.display()));
                Some(bin)
            }
            Some(Err(why)) => {
                let why = why.lines().next().unwrap_or_default().trim_end_matches(':');
                peer_note = Some(format!("**peers not run**: {why}"));
                None
            }
            None => None,
        };
        let jobs: Vec<&Job> = jobs
            .iter()
            .filter(|j| !j.is_peer() || peerbench.is_some())
            .collect();
        eprintln!(
            "raftwire transport benchmarks: {} job(s) x {} run(s){}, {cores} cores",
            jobs.len(),
            args.runs,
            if args.quick {
                " (QUICK: reduced sizes, not BENCH.md)"
            } else {
                ""
            }
        );
        if args.runs < 3 {
            eprintln!("note: BENCH.md asks for the median of at least 3 runs");
        }
        let exe = std::env::current_exe()?;
        let mut values: BTreeMap<(String, String, String), Vec<f64>> = BTreeMap::new();
        let mut order: Vec<(String, String, String)> = Vec::new();
        let mut ok = true;
        let mut busy_seen = Vec::new();
        for run in 1..=args.runs {
            for &job in &jobs {
                // A peer's job runs in peerbench. With --against, raftwire
                // jobs run with both builds, the first one alternating from
                // run to run.
                let mut exes = vec![(
                    peerbench
                        .clone()
                        .filter(|_| job.is_peer())
                        .unwrap_or(exe.clone()),
                    "",
                )];
                if let (Some(other), true) = (&args.against, job.is_raftwire()) {
                    exes.push((other.into(), report::BEFORE));
                    if run % 2 == 0 {
                        exes.reverse();
                    }
                }
                for (exe, suffix) in &exes {
                    let busy = wait_quiet(args.quiet_wait);
                    busy_seen.push(busy);
                    let t0 = Instant::now();
                    let (status, got) = if job.is_peer() {
                        let w = job.workload.name();
                        let cmd = peers::command(exe, job.imp, job.workload, scale, run);
                        run_process(cmd, run == 1, |l| peers::parse_line(l, job.imp, &w))?
                    } else {
                        run_process(child_command(exe, job, args.quick), run == 1, result_line)?
                    };
                    for (imp, w, metric, v) in got {
                        let key = (format!("{imp}{suffix}"), w, metric);
                        if !values.contains_key(&key) {
                            order.push(key.clone());
                        }
                        values.entry(key).or_default().push(v);
                    }
                    eprintln!(
                        "[run {run}/{}] {:<24} {:>6.2} s  (machine {:>3.0} % busy before){}",
                        args.runs,
                        format!("{}{suffix}", job.name()),
                        t0.elapsed().as_secs_f64(),
                        busy * 100.0,
                        if status.success() { "" } else { "  FAILED" }
                    );
                    ok &= status.success();
                }
            }
        }
        if !ok {
            eprintln!("some runs failed; their figures are missing or have fewer runs");
        }
        busy_seen.sort_by(f64::total_cmp);
        if let (Some(lo), Some(hi)) = (busy_seen.first(), busy_seen.last()) {
            eprintln!(
                "other load on the machine just before each job: {:.0}–{:.0} % of all cores \
                 (median {:.0} %)",
                lo * 100.0,
                hi * 100.0,
                busy_seen[busy_seen.len() / 2] * 100.0
            );
        }
        let aggs: Vec<report::Agg> = order
            .iter()
            .map(|k| report::Agg::of(&k.0, &k.1, &k.2, &values[k]))
            .collect();
        let jsonl: String = aggs.iter().map(|a| a.json() + "\n").collect();
        print!("{jsonl}");
        if let Some(path) = &args.json {
            std::fs::write(path, &jsonl)?;
        }
        if !ok {
            return finish(args, &aggs, cores, peer_note.as_deref()).map(|()| false);
        }
        aggs
    };
    finish(args, &aggs, cores, peer_note.as_deref()).map(|()| true)
}

/// One reported value: `imp`, workload, metric, value.
pub type Value = (String, String, String, f64);

/// This benchmark (`exe`, this build or the `--against` one) measuring
/// `job` in a child process.
fn child_command(exe: &std::path::Path, job: &Job, quick: bool) -> Command {
    let mut cmd = Command::new(exe);
    cmd.arg("--child").arg(job.name());
    if quick {
        cmd.arg("--quick");
    }
    cmd
}

/// A child's result line (`@result imp workload metric value`).
fn result_line(line: &str) -> Option<Value> {
    let f: Vec<&str> = line.strip_prefix(common::RESULT_TAG)?.split(' ').collect();
    let [imp, w, metric, v] = f[..] else {
        return None;
    };
    let v = v.parse().unwrap_or(f64::NAN);
    Some((imp.to_string(), w.to_string(), metric.to_string(), v))
}

/// One measurement in a fresh process: its exit status and the values it
/// reported, which `parse` picks out of its stdout. Notes are passed on
/// when `notes`; any other line always.
fn run_process(
    mut cmd: Command,
    notes: bool,
    parse: impl Fn(&str) -> Option<Value>,
) -> std::io::Result<(std::process::ExitStatus, Vec<Value>)> {
    let mut child = cmd.stdout(Stdio::piped()).spawn()?;
    let out = child.stdout.take().expect("piped stdout");
    let mut got = Vec::new();
    for line in BufReader::new(out).lines() {
        let line = line?;
        if let Some(v) = parse(&line) {
            got.push(v);
        } else if let Some(i) = line.strip_prefix(common::INFO_TAG) {
            if notes {
                eprintln!("    {i}");
            }
        } else {
            eprintln!("    {line}");
        }
    }
    Ok((child.wait()?, got))
}

/// (busy, total) jiffies of all CPUs from /proc/stat.
fn cpu_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4)?;
    Some((total - idle, total))
}

/// The share of all cores busy over the next 300 ms (before a child runs,
/// that is other processes' load).
fn cpu_busy() -> f64 {
    let a = cpu_jiffies();
    std::thread::sleep(Duration::from_millis(300));
    match (a, cpu_jiffies()) {
        (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => (b1 - b0) as f64 / (t1 - t0) as f64,
        _ => 0.0,
    }
}

/// Measures the machine's load; with `limit`, waits up to that long for it
/// to fall under 10 % first. Returns the last load seen.
fn wait_quiet(limit: Option<Duration>) -> f64 {
    let deadline = Instant::now() + limit.unwrap_or_default();
    loop {
        let busy = cpu_busy();
        if busy < 0.10 || Instant::now() >= deadline {
            return busy;
        }
    }
}

fn finish(
    args: &Args,
    aggs: &[report::Agg],
    cores: usize,
    peer_note: Option<&str>,
) -> std::io::Result<()> {
    let header = match &args.from {
        Some(path) => format!("results read from {path}"),
        None => {
            let mut h = format!(
                "{} UTC, {cores} cores; w1: {}",
                report::utc_now(),
                <Envelope as pair::BenchMsg>::NAME
            );
            #[cfg(feature = "raft-rs")]
            h.push_str(&format!(
                ", w1-raft: {}",
                <raft::eraftpb::Message as pair::BenchMsg>::NAME
            ));
            if let Some(note) = peer_note {
                h.push_str("; ");
                h.push_str(note);
            }
            if args.quick {
                h.push_str("; QUICK sizes (not BENCH.md)");
            }
            h
        }
    };
    let mut table = report::markdown(aggs);
    if let Some(before) = report::against(aggs) {
        table.push_str(&before);
    }
    println!("\n{header}\n\n{table}");
    if let Some(path) = &args.markdown {
        std::fs::write(path, format!("{header}\n\n{table}"))?;
    }
    if let Some(path) = &args.svg {
        let runs = aggs.iter().map(|a| a.runs).max().unwrap_or(0);
        let subtitle = format!(
            "payload MB/s (10^6 B/s) vs payload size, median of {runs} run(s), bars min-max; \
             peers at W1 (128 B) and W2 (1 MiB); {cores} cores"
        );
        match svg::throughput_plot(aggs, &subtitle) {
            Some(doc) => std::fs::write(path, doc)?,
            None => eprintln!("no curve, W1 or W2 points: {path} not written"),
        }
    }
    Ok(())
}
