//! The Go peers: etcd's rafthttp, hashicorp/raft's NetworkTransport and a
//! raw Go TCP floor, measured by `peerbench` (the project's shared
//! `peers/`: its README has the versions and what each does) on the same
//! workloads and rules as raftwire, one fresh `peerbench` process per job
//! and run, interleaved with the harness's own jobs.
//!
//! peerbench is built with `peers/build.sh` (which installs Go and the two
//! Debian source packages with apt when they are missing) into
//! `target/peerbench/`, and rebuilt only when a file under `peers/` is
//! newer than the binary. Nothing here is needed to compile the bench: a
//! machine without Go runs everything else and says the peers were not run.

use crate::{Scale, Value, Workload};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

pub const ETCD: &str = "etcd-rafthttp";
/// etcd's sender with a receiver that discards the snapshot stream (W4
/// only; the stock receiver writes it to a file under /dev/shm).
pub const ETCD_DISCARD: &str = "etcd-rafthttp-discard";
pub const HASHICORP: &str = "hashicorp-raft";
/// Raw Go TCP: the floor for W3 (heartbeats on a connection of their own).
pub const RAWGO: &str = "rawgo";

/// Each peer: the harness's name, peerbench's `-impl`, and the `impl`
/// peerbench prints in its JSON lines.
const PEERS: [(&str, &str, &str); 4] = [
    (ETCD, "etcd", "etcd-rafthttp"),
    (ETCD_DISCARD, "etcd-discard", "etcd-rafthttp(discard-recv)"),
    (HASHICORP, "hashicorp", "hashicorp-raft"),
    (RAWGO, "rawgo", "raw-tcp-go"),
];

/// Where to find `peers/` (the folder with `build.sh`) when neither
/// `--peers` nor this variable says.
pub const ENV_DIR: &str = "RAFTWIRE_PEERS";
/// A peerbench binary to use as it is, instead of building one.
pub const ENV_BIN: &str = "RAFTWIRE_PEERBENCH";

fn peer(imp: &str) -> Option<&'static (&'static str, &'static str, &'static str)> {
    PEERS.iter().find(|p| p.0 == imp)
}

pub fn is_peer(imp: &str) -> bool {
    peer(imp).is_some()
}

/// The peers that run `w`, in the order one run executes them.
pub fn jobs_for(w: Workload) -> &'static [&'static str] {
    match w {
        Workload::W1 | Workload::W2 => &[ETCD, HASHICORP],
        Workload::W3Idle | Workload::W3Load => &[ETCD, HASHICORP, RAWGO],
        Workload::W4 => &[ETCD, ETCD_DISCARD, HASHICORP],
        _ => &[],
    }
}

/// peerbench's `-workload` for one of the harness's workloads.
fn workload_flag(w: Workload) -> Option<&'static str> {
    Some(match w {
        Workload::W1 => "w1",
        Workload::W2 => "w2",
        Workload::W3Idle => "w3idle",
        Workload::W3Load => "w3load",
        Workload::W4 => "w4",
        _ => return None,
    })
}

/// A Go duration flag.
fn go_duration(d: std::time::Duration) -> String {
    format!("{}us", d.as_micros())
}

/// One run of peer `imp` on `w`, at the harness's scale (so `--quick`
/// shrinks the peers' workloads exactly as it shrinks raftwire's).
pub fn command(bin: &Path, imp: &str, w: Workload, scale: &Scale, run: usize) -> Command {
    let flag = peer(imp).map_or(imp, |p| p.1);
    let mut c = Command::new(bin);
    c.arg("-impl").arg(flag);
    c.arg("-workload").arg(workload_flag(w).unwrap_or("?"));
    c.arg("-run").arg(run.to_string());
    c.arg("-window").arg(crate::common::WINDOW.to_string());
    let stream = |c: &mut Command, n: u64, size: usize, warmup: u64| {
        c.arg("-n").arg(n.to_string());
        c.arg("-size").arg(size.to_string());
        c.arg("-warmup").arg(warmup.to_string());
    };
    match w {
        Workload::W1 => stream(&mut c, scale.w1_count, scale.w1_payload, scale.w1_warmup),
        Workload::W2 => stream(&mut c, scale.w2_count, scale.w2_payload, scale.w2_warmup),
        Workload::W3Idle => {
            c.arg("-hbdur").arg(go_duration(scale.hb_period));
        }
        Workload::W3Load => stream(&mut c, scale.w2_count, scale.w2_payload, scale.w2_warmup),
        Workload::W4 => {
            c.arg("-snapsize").arg(scale.w4_size.to_string());
        }
        _ => {}
    }
    if matches!(w, Workload::W3Idle | Workload::W3Load) {
        c.arg("-hbevery").arg(go_duration(scale.hb_interval));
    }
    c
}

/// The harness's name for a metric peerbench prints under another name.
fn metric_name(metric: &str) -> &str {
    match metric {
        // W3-load: the load's undelivered messages, raftwire's `dropped`.
        "load_dropped" => "dropped",
        // getrusage's ru_maxrss, what `/usr/bin/time -v` reports.
        "peak_rss_MiB_getrusage" => "peak_rss_MiB",
        m => m,
    }
}

/// One of peerbench's JSON lines (`{"impl":…,"workload":…,"metric":…,
/// "value":…,"run":…}`) as a value of job `imp` on `workload`. Lines that
/// are not results are `None`; a result for another implementation or
/// workload than asked is reported on stderr and kept under the job's
/// names.
pub fn parse_line(line: &str, imp: &str, workload: &str) -> Option<Value> {
    use crate::report::json_field as field;
    let (got_imp, got_w) = (field(line, "impl")?, field(line, "workload")?);
    let metric = field(line, "metric")?;
    let value: f64 = field(line, "value")?.parse().ok()?;
    let want_imp = peer(imp).map_or(imp, |p| p.2);
    if got_imp != want_imp || got_w != workload {
        eprintln!(
            "    peerbench printed {got_imp}/{got_w}, expected {want_imp}/{workload}: kept as {imp}"
        );
    }
    Some((
        imp.to_string(),
        workload.to_string(),
        metric_name(metric).to_string(),
        value,
    ))
}

/// Where the peerbench binary comes from: `--peerbench BIN` (or
/// `RAFTWIRE_PEERBENCH`), used as it is; otherwise a build from `--peers
/// DIR` (or `RAFTWIRE_PEERS`, default `../shared/peers` beside the crate)
/// cached in `target/peerbench/`.
#[derive(Debug, Default, Clone)]
pub struct Source {
    pub bin: Option<String>,
    pub dir: Option<String>,
}

impl Source {
    fn bin(&self) -> Option<PathBuf> {
        self.bin
            .clone()
            .or_else(|| std::env::var(ENV_BIN).ok().filter(|s| !s.is_empty()))
            .map(PathBuf::from)
    }

    fn dir(&self) -> PathBuf {
        self.dir
            .clone()
            .or_else(|| std::env::var(ENV_DIR).ok().filter(|s| !s.is_empty()))
            .map_or_else(
                || Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/peers"),
                PathBuf::from,
            )
    }

    /// The binary to run, building it if needed; the error says why there
    /// is none, for stderr and the report.
    pub fn locate(&self) -> Result<PathBuf, String> {
        if let Some(bin) = self.bin() {
            return if bin.is_file() {
                Ok(bin)
            } else {
                Err(format!("peerbench binary {} does not exist", bin.display()))
            };
        }
        let dir = self.dir();
        let script = dir.join("build.sh");
        if !script.is_file() {
            return Err(format!(
                "no {} (set --peers DIR or {ENV_DIR})",
                script.display()
            ));
        }
        let out = target_dir().join("peerbench");
        let cached = out.join("peerbench");
        // Which sources the cached binary was built from.
        let stamp = out.join("built-from");
        let from = std::fs::canonicalize(&dir).unwrap_or(dir.clone());
        let same = std::fs::read_to_string(&stamp).is_ok_and(|s| Path::new(s.trim()) == from);
        if let (true, Some(built), Some(sources)) = (same, mtime(&cached), newest(&dir))
            && built >= sources
        {
            eprintln!("peers: peerbench built earlier: {}", cached.display());
            return Ok(cached);
        }
        eprintln!(
            "peers: building peerbench: {} {} (installs Go with apt if missing; about a minute)",
            script.display(),
            out.display()
        );
        let res = Command::new("bash")
            .arg(&script)
            .arg(&out)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if !res.status.success() {
            let err = String::from_utf8_lossy(&res.stderr);
            let tail: Vec<&str> = err.lines().rev().take(12).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(format!(
                "{} failed ({}):\n      {}",
                script.display(),
                res.status,
                tail.join("\n      ")
            ));
        }
        let printed = String::from_utf8_lossy(&res.stdout);
        let bin = PathBuf::from(printed.lines().last().unwrap_or("").trim());
        if bin.is_file() {
            if bin == cached {
                let _ = std::fs::write(&stamp, from.to_string_lossy().as_bytes());
            }
            Ok(bin)
        } else {
            Err(format!(
                "{} printed no binary (stdout: {printed:?})",
                script.display()
            ))
        }
    }
}

/// The target directory this bench was built into (`target/<profile>/deps`
/// holds the binary), else `CARGO_TARGET_DIR`, else `target/` in the crate.
fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return d.into();
    }
    std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.parent()?.parent()?.to_path_buf()))
        .filter(|t| t.join("CACHEDIR.TAG").is_file())
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).ok()?.modified().ok()
}

/// The newest modification time of any file under `dir`.
fn newest(dir: &Path) -> Option<SystemTime> {
    let mut latest = mtime(dir)?;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let p = entry.path();
        let t = if p.is_dir() { newest(&p) } else { mtime(&p) };
        latest = latest.max(t?);
    }
    Some(latest)
}
