//! RAW: the W1 and W2 shapes over plain blocking `std::net` TCP, the
//! baseline every raftwire figure is divided by. Each message is a 4-byte
//! big-endian length and the payload; small messages are coalesced into
//! 64 KiB writes, large ones go out with `writev` (length beside payload,
//! no copy); the receiver reads each payload into one reused buffer.

use crate::common::{Stamp, Throughput, Window, emit, info, pattern};
use crate::{Pilot, Plan, Run};
use std::io::{self, BufReader, IoSlice, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::*};
use std::time::Duration;

pub const IMPL: &str = "raw-tcp";

/// Small messages are gathered into writes of at least this many bytes.
const COALESCE: usize = 64 << 10;
/// From this payload size on, a message is written with `writev`.
const VECTORED_FROM: usize = 16 << 10;

struct Shared {
    window: Window,
    bytes: AtomicU64,
    /// Messages (warm-up included) after which the receiver stops the clock.
    total: AtomicU64,
}

struct Sender {
    stream: TcpStream,
    out: Vec<u8>,
    payload: Vec<u8>,
    sent: u64,
    /// The sender's last look at the delivered count.
    seen: u64,
}

impl Sender {
    fn send(&mut self, shared: &Shared) -> io::Result<()> {
        let Sender {
            stream,
            out,
            sent,
            seen,
            ..
        } = self;
        let mut failed = Ok(());
        shared.window.wait_for_room(*sent, seen, || {
            failed = flush(stream, out);
        });
        failed?;
        let len = self.payload.len();
        let hdr = (len as u32).to_be_bytes();
        if len >= VECTORED_FROM {
            write_all_vectored(
                &mut self.stream,
                &mut [
                    IoSlice::new(&self.out),
                    IoSlice::new(&hdr),
                    IoSlice::new(&self.payload),
                ],
            )?;
            self.out.clear();
        } else {
            self.out.extend_from_slice(&hdr);
            self.out.extend_from_slice(&self.payload);
            if self.out.len() >= COALESCE {
                flush(&mut self.stream, &mut self.out)?;
            }
        }
        self.sent += 1;
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        flush(&mut self.stream, &mut self.out)
    }
}

fn flush(stream: &mut TcpStream, out: &mut Vec<u8>) -> io::Result<()> {
    stream.write_all(out)?;
    out.clear();
    Ok(())
}

fn write_all_vectored(w: &mut impl Write, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match w.write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The receiver: counts messages and bytes, bumps the window, and stamps
/// the moment it has counted message number `total`.
fn receive(listener: TcpListener, shared: Arc<Shared>) -> io::Result<Option<Stamp>> {
    let (stream, _) = listener.accept()?;
    stream.set_nodelay(true)?;
    let mut r = BufReader::with_capacity(COALESCE, stream);
    let mut hdr = [0u8; 4];
    let mut payload = Vec::new();
    let (mut n, mut bytes) = (0u64, 0u64);
    loop {
        match r.read_exact(&mut hdr) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let len = u32::from_be_bytes(hdr) as usize;
        if payload.len() != len {
            payload.resize(len, 0);
        }
        r.read_exact(&mut payload)?;
        std::hint::black_box(&payload);
        n += 1;
        bytes += len as u64;
        shared.bytes.store(bytes, Relaxed);
        shared.window.set_delivered(n);
        if n == shared.total.load(Relaxed) {
            return Ok(Some(Stamp::now()));
        }
    }
}

/// Runs one RAW measurement in this process and emits its metrics.
pub fn run(workload: &str, plan: &Plan) -> io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let shared = Arc::new(Shared {
        window: Window::for_current_thread(),
        bytes: AtomicU64::new(0),
        total: AtomicU64::new(u64::MAX),
    });
    let receiver = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("raw-receiver".into())
            .spawn(move || receive(listener, shared))?
    };
    let stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    let mut tx = Sender {
        stream,
        out: Vec::with_capacity(2 * COALESCE),
        payload: pattern(plan.payload_len),
        sent: 0,
        seen: 0,
    };

    // Warm-up on the same connection, untimed.
    let count = match plan.run {
        Run::Fixed { warmup, count } => {
            for _ in 0..warmup {
                tx.send(&shared)?;
            }
            tx.flush()?;
            wait(&shared, tx.sent)?;
            count
        }
        Run::Sized {
            pilot,
            target,
            max_bytes,
        } => {
            let mut p = Pilot::new(pilot);
            while p.running(tx.sent, || shared.window.delivered()) {
                tx.send(&shared)?;
            }
            let (n, took) = p.rate(shared.window.delivered(), tx.sent);
            tx.flush()?;
            wait(&shared, tx.sent)?;
            plan.sized_count(n, took, target, max_bytes)
        }
    };
    let warm = tx.sent;
    let bytes0 = shared.bytes.load(Relaxed);
    shared.total.store(warm + count, Relaxed);

    let start = Stamp::now();
    for _ in 0..count {
        tx.send(&shared)?;
    }
    tx.flush()?;
    drop(tx);
    let end = receiver
        .join()
        .expect("raw receiver panicked")?
        .ok_or_else(|| io::Error::other("raw receiver: connection ended early"))?;
    let m = Throughput::between(start, end, count, shared.bytes.load(Relaxed) - bytes0);
    m.emit(IMPL, workload);
    emit(IMPL, workload, "dropped", 0.0);
    info(&format!(
        "{IMPL} {workload}: warm-up {warm} msgs, timed {count} msgs of {} B",
        plan.payload_len
    ));
    Ok(())
}

fn wait(shared: &Shared, n: u64) -> io::Result<()> {
    if shared.window.wait_delivered(n, Duration::from_secs(60)) {
        Ok(())
    } else {
        Err(io::Error::other("raw: warm-up not delivered within 60 s"))
    }
}
