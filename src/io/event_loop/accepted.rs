//! The event loop's inbound connections: accepting sockets (within
//! `max_inbound_connections`), reading them within their read credit into
//! the reader thread's hands, the reader's verdict on their hello, and
//! closing them.

use super::{EventLoop, Owner, Sock, deregister};
use crate::conn::ConnId;
use crate::conn::accept::Verdict;
use crate::conn::inbound::{Admission, Credit, InConn};
use crate::conn::turns::Ready;
use crate::error::CloseReason;
use crate::io::account::Incident;
use crate::io::channels::ReaderMsg;
use crate::io::stream::configure;
#[cfg(feature = "tls")]
use crate::io::stream::identify;
use log::{debug, warn};
use mio::net::TcpStream;
use mio::{Interest, Token};
use socket2::SockRef;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
#[cfg(feature = "tls")]
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

impl EventLoop {
    /// The reader's verdict on an inbound hello.
    pub(super) fn verdict(&mut self, conn: ConnId, verdict: Verdict, now: Instant) {
        if let Verdict::Violation(v) = verdict {
            return self.close_inbound(conn, CloseReason::PeerMisbehaved(v));
        }
        let replaced = self.inbounds.handle_verdict(conn, &verdict, now);
        let at = self.inbounds.get_mut(conn).and_then(|c| c.poll_timeout());
        self.schedule(at);
        self.mark(conn, Ready::WRITE);
        if let Some(old) = replaced {
            self.close_inbound(old, CloseReason::Replaced);
        }
    }

    /// Closes an inbound connection and tells the reader, which first gets
    /// every byte that came (so that it can tell a connection that ended
    /// inside a frame).
    pub(super) fn close_inbound(&mut self, id: ConnId, reason: CloseReason) {
        let Some(mut sock) = deregister(&self.poll, &mut self.socks, id) else {
            return;
        };
        let Some(mut c) = self.inbounds.remove(id) else {
            return;
        };
        self.accounts.note(
            None,
            Incident::InboundClosed {
                addr: sock.stream.sock().peer_addr().ok(),
                from: c.accepted(),
                reason: &reason,
            },
        );
        let bytes = c.take_unsent();
        if let (false, Some(credit)) = (bytes.is_empty(), sock.credit.take()) {
            credit.take(bytes.len());
            let _ = self.reader_tx.send(ReaderMsg::Data { conn: id, bytes });
        }
        let _ = self.reader_tx.send(ReaderMsg::Closed { conn: id, reason });
    }

    /// Reads inbound connection `id` until the socket would block, its read
    /// credit runs out, or `budget` bytes are read (then it is read again
    /// next turn).
    pub(super) fn read_inbound(&mut self, id: ConnId, budget: usize) {
        let Some(Sock {
            stream,
            credit: Some(credit),
            ..
        }) = self.socks.get_mut(&id)
        else {
            return;
        };
        let Some(c) = self.inbounds.get_mut(id) else {
            return;
        };
        let reader_tx = &self.reader_tx;
        let mut read = 0usize;
        let mut more = false;
        let outcome = loop {
            if read >= budget {
                more = true;
                break None;
            }
            if !c.wants_read(credit) {
                break None;
            }
            let r = stream.read(c.read_into(&mut self.scratch));
            #[cfg(feature = "tls")]
            if stream.take_established() {
                match identify(&self.tls, stream) {
                    Ok(node) => {
                        self.accounts.global.tls.handshakes.fetch_add(1, Relaxed);
                        let _ = reader_tx.send(ReaderMsg::Identity { conn: id, node });
                    }
                    Err(f) => break Some(CloseReason::Tls(f)),
                }
            }
            match r {
                Ok(0) => break Some(CloseReason::Eof),
                Ok(n) => {
                    read += n;
                    c.handle_read(
                        n,
                        Instant::now(),
                        credit,
                        &mut self.scratch,
                        &mut self.pools,
                        &mut |bytes| {
                            let _ = reader_tx.send(ReaderMsg::Data { conn: id, bytes });
                        },
                    )
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Some(stream.close_reason(&e)),
            }
        };
        let at = c.poll_timeout();
        self.schedule(at);
        if more {
            self.turns.again(id, Ready::READ);
        }
        if let Some(reason) = outcome {
            self.close_inbound(id, reason);
        }
    }

    pub(super) fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((sock, addr)) => self.accept(sock, addr),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE and friends: count, log, and try again later
                    // from the timers: the listener's readiness edge may not
                    // come again for the connections still queued.
                    self.accounts
                        .note(None, Incident::AcceptFailed { error: &e });
                    self.accept_retry = true;
                    self.schedule(Some(Instant::now() + Duration::from_millis(10)));
                    return;
                }
            }
        }
    }

    pub(super) fn accept(&mut self, sock: TcpStream, addr: SocketAddr) {
        let max = self.config.max_inbound_connections;
        match self.inbounds.admission() {
            Admission::Admit => {}
            Admission::Evict(old) => {
                self.accounts
                    .note(None, Incident::Evicted { admit: addr, max });
                self.close_inbound(old, CloseReason::Evicted);
            }
            Admission::Refuse => {
                self.accounts
                    .note(None, Incident::InboundRefused { addr, max });
                return; // dropping `sock` closes it
            }
        }
        let Some(mut stream) = self.stream(sock, None) else {
            return;
        };
        if let Err(e) = configure(SockRef::from(stream.sock()), &self.config) {
            debug!(
                "node {}: socket options for {addr}: {e}",
                self.config.node_id
            );
        }
        let id = self.next_id();
        if let Err(e) = self.poll.registry().register(
            stream.sock_mut(),
            Token(id),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!("node {}: cannot register {addr}: {e}", self.config.node_id);
            return;
        }
        let credit = Arc::new(Credit::default());
        let conn = InConn::new(&self.config, Instant::now());
        self.schedule(conn.poll_timeout());
        self.inbounds.insert(id, conn);
        let sock = Sock {
            stream,
            owner: Owner::Inbound,
            credit: Some(credit.clone()),
        };
        self.socks.insert(id, sock);
        let _ = self.reader_tx.send(ReaderMsg::Opened {
            conn: id,
            peer_addr: Some(addr),
            credit,
        });
    }
}
