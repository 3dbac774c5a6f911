//! A 1 GiB snapshot streams through in constant memory while heartbeats
//! keep flowing on the message lane. Alone in its test binary so that the
//! process's peak RSS (VmHWM) measures this test only.

mod common;
use common::*;
use raftwire::{Envelope, MessageClass, ReportEvent, SnapshotStatus};
use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// `len` bytes repeating a 64 KiB pattern, generated on the fly.
struct Pattern {
    block: Vec<u8>,
    pos: u64,
    len: u64,
}

impl Read for Pattern {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let at = (self.pos % self.block.len() as u64) as usize;
        let n = ((self.len - self.pos) as usize)
            .min(buf.len())
            .min(self.block.len() - at);
        buf[..n].copy_from_slice(&self.block[at..at + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

fn block() -> Vec<u8> {
    (0..64u32 << 10)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

#[test]
fn a_1_gib_snapshot_streams_in_constant_memory_while_heartbeats_flow() {
    let nodes = cluster(&[1, 2]);
    let (n1, n2) = (&nodes[0].t, &nodes[1].t);
    let before = vm_hwm_bytes();
    let size: u64 = 1 << 30;
    let pattern = block();
    let t0 = Instant::now();
    n1.send_snapshot(
        Envelope::new(2, 1, MessageClass::Snapshot, b"meta".to_vec()),
        Pattern {
            block: pattern.clone(),
            pos: 0,
            len: size,
        },
        size,
    )
    .unwrap();

    // A heartbeat round trip every 5 ms on the message lane meanwhile.
    let done = Arc::new(AtomicBool::new(false));
    let slowest = Arc::new(AtomicU64::new(0));
    let beats = {
        let (n1, n2, done, slowest) = (n1.clone(), n2.clone(), done.clone(), slowest.clone());
        std::thread::spawn(move || {
            let mut count = 0u64;
            while !done.load(Ordering::Relaxed) {
                let sent = Instant::now();
                n1.send([Envelope::new(2, 1, MessageClass::Other, vec![1])]);
                n2.messages().recv_timeout(Duration::from_secs(5)).unwrap();
                slowest.fetch_max(sent.elapsed().as_micros() as u64, Ordering::Relaxed);
                count += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            count
        })
    };
    let mut inc = n2.snapshots().recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(inc.size, size);
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = inc.data.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        // Spot-check the content: the first byte of every read.
        let at = (total % pattern.len() as u64) as usize;
        assert_eq!(buf[0], pattern[at], "byte {total}");
        total += n as u64;
    }
    done.store(true, Ordering::Relaxed);
    let beats = beats.join().unwrap();
    let elapsed = t0.elapsed();
    assert_eq!(total, size);
    let report = wait_event(&nodes[0].events, 10, |e| {
        matches!(e, ReportEvent::Snapshot(..))
    });
    assert_eq!(report, ReportEvent::Snapshot(2, SnapshotStatus::Finish));
    let growth_mib = vm_hwm_bytes().saturating_sub(before) >> 20;
    println!(
        "1 GiB in {elapsed:?} ({:.0} MB/s); {beats} heartbeat round trips, slowest {} us; \
         VmHWM grew {growth_mib} MiB",
        size as f64 / elapsed.as_secs_f64() / 1e6,
        slowest.load(Ordering::Relaxed)
    );
    assert!(beats > 0, "heartbeats flowed during the snapshot");
    assert!(growth_mib < 64, "peak RSS grew {growth_mib} MiB");
}
