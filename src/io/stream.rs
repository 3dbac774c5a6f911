//! A connection's byte stream as the event loop sees it: a non-blocking
//! TCP socket, optionally wrapped in TLS (feature `tls`). rustls is
//! sans-IO, so TLS runs right here on the loop thread: `read` pulls TLS
//! records from the socket, processes them (answering handshake messages)
//! and returns plaintext; `write_vectored` encrypts into rustls's bounded
//! buffer and pushes records to the socket until it would block. Both keep
//! mio's contract: `WouldBlock` only when the socket itself would block, so
//! an edge-triggered readiness event is sure to come.

use crate::config::Config;
use crate::error::CloseReason;
use mio::net::TcpStream;
use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};
use std::io::{self, IoSlice, Read, Write};
use std::net::SocketAddr;

/// Most plaintext rustls buffers for writing per connection (encrypted
/// records waiting for the socket included).
#[cfg(feature = "tls")]
const TLS_BUFFER_LIMIT: usize = 256 << 10;

pub(crate) struct Stream {
    sock: TcpStream,
    #[cfg(feature = "tls")]
    tls: Option<Box<Tls>>,
}

#[cfg(feature = "tls")]
struct Tls {
    conn: rustls::Connection,
    /// We dialed (the TLS client).
    client: bool,
    /// The acceptor has not looked at the first byte yet.
    sniff: bool,
    /// The handshake has completed and the loop has not been told.
    established: bool,
    /// What broke the TLS session, for the close reason.
    failure: Option<crate::error::TlsFailure>,
}

impl Stream {
    pub fn plain(sock: TcpStream) -> Stream {
        Stream {
            sock,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    #[cfg(feature = "tls")]
    pub fn tls(sock: TcpStream, conn: impl Into<rustls::Connection>) -> Stream {
        let mut conn = conn.into();
        conn.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
        let client = matches!(conn, rustls::Connection::Client(_));
        Stream {
            sock,
            tls: Some(Box::new(Tls {
                conn,
                client,
                sniff: !client,
                established: false,
                failure: None,
            })),
        }
    }

    pub fn sock(&self) -> &TcpStream {
        &self.sock
    }

    pub fn sock_mut(&mut self) -> &mut TcpStream {
        &mut self.sock
    }

    /// Plaintext from the peer. `Ok(0)` is the end of the stream.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        #[cfg(feature = "tls")]
        if let Some(t) = &mut self.tls {
            return t.read(&mut self.sock, buf);
        }
        self.sock.read(buf)
    }

    /// Writes plaintext; returns how much was taken.
    pub fn write_vectored(&mut self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        #[cfg(feature = "tls")]
        if let Some(t) = &mut self.tls {
            return t.write_vectored(&mut self.sock, iov);
        }
        self.sock.write_vectored(iov)
    }

    /// Pushes buffered TLS records (handshake messages, alerts, data) to
    /// the socket until it would block.
    pub fn flush_pending(&mut self) -> io::Result<()> {
        #[cfg(feature = "tls")]
        if let Some(t) = &mut self.tls {
            return t.flush(&mut self.sock);
        }
        Ok(())
    }

    /// Whether TLS bytes still wait for the socket.
    pub fn has_pending(&self) -> bool {
        #[cfg(feature = "tls")]
        if let Some(t) = &self.tls {
            return t.conn.wants_write();
        }
        false
    }

    /// The close reason for an error this stream returned.
    pub fn close_reason(&mut self, e: &io::Error) -> CloseReason {
        #[cfg(feature = "tls")]
        if let Some(f) = self.tls.as_mut().and_then(|t| t.failure.take()) {
            return CloseReason::Tls(f);
        }
        CloseReason::Io(e.kind())
    }

    /// True once, when the TLS handshake has just completed: the loop then
    /// checks the peer's identity before it passes on any plaintext.
    #[cfg(feature = "tls")]
    pub fn take_established(&mut self) -> bool {
        self.tls
            .as_mut()
            .is_some_and(|t| std::mem::take(&mut t.established))
    }

    /// The peer's certificate chain, once the handshake has completed.
    #[cfg(feature = "tls")]
    pub fn peer_certificates(&self) -> Option<&[rustls::pki_types::CertificateDer<'static>]> {
        self.tls.as_ref().and_then(|t| t.conn.peer_certificates())
    }
}

#[cfg(feature = "tls")]
impl Tls {
    fn fail(&mut self, f: crate::error::TlsFailure, sock: &mut TcpStream) -> io::Error {
        let e = io::Error::new(io::ErrorKind::InvalidData, f.to_string());
        self.failure = Some(f);
        // Best effort: let the peer see our alert, if there is one.
        let _ = self.flush(sock);
        e
    }

    fn read(&mut self, sock: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
        use crate::error::TlsFailure;
        if self.sniff {
            // A TLS connection starts with a handshake record (0x16). A
            // plaintext raftwire hello starts with `R`: say so, clearly.
            let mut first = [0u8; 1];
            match sock.peek(&mut first) {
                Ok(0) => return Ok(0),
                Ok(_) if first[0] != 0x16 => return Err(self.fail(TlsFailure::NotTls, sock)),
                Ok(_) => self.sniff = false,
                Err(e) => return Err(e),
            }
        }
        let mut filled = 0;
        loop {
            match self.conn.reader().read(&mut buf[filled..]) {
                Ok(0) if filled == 0 => return Ok(0), // close_notify
                Ok(0) => return Ok(filled),
                Ok(n) => {
                    filled += n;
                    if filled == buf.len() {
                        return Ok(filled);
                    }
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The peer closed without close_notify: an end of stream
                // like any other (frames are self-delimiting and checked).
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(filled),
                Err(e) => return Err(e),
            }
            match self.conn.read_tls(sock) {
                Ok(0) => {
                    if self.client && self.conn.is_handshaking() {
                        // A plaintext acceptor closes on our ClientHello.
                        return Err(self.fail(TlsFailure::NotTls, sock));
                    }
                    // Let rustls see the end; the next reader() call says
                    // whether it was clean.
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && filled > 0 => {
                    return Ok(filled);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let handshaking = self.conn.is_handshaking();
            if let Err(e) = self.conn.process_new_packets() {
                return Err(self.fail(crate::tls::classify(&e), sock));
            }
            if handshaking && !self.conn.is_handshaking() {
                self.established = true;
            }
            // Handshake replies (and, after a failure, alerts) go out now.
            self.flush(sock)?;
        }
    }

    fn write_vectored(&mut self, sock: &mut TcpStream, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        self.flush(sock)?;
        let n = self.conn.writer().write_vectored(iov)?;
        self.flush(sock)?;
        if n == 0 && iov.iter().any(|b| !b.is_empty()) {
            // rustls's buffer is full, which means the socket would block.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    /// Writes buffered records until done or the socket would block.
    fn flush(&mut self, sock: &mut TcpStream) -> io::Result<()> {
        while self.conn.wants_write() {
            match self.conn.write_tls(sock) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Applies the socket options of the config to any TCP socket.
pub(crate) fn configure(sock: SockRef<'_>, config: &Config) -> io::Result<()> {
    sock.set_tcp_nodelay(true)?;
    if let Some(idle) = config.tcp_keepalive {
        sock.set_tcp_keepalive(&TcpKeepalive::new().with_time(idle))?;
    }
    if let Some(n) = config.send_buffer_size {
        sock.set_send_buffer_size(n)?;
    }
    if let Some(n) = config.recv_buffer_size {
        sock.set_recv_buffer_size(n)?;
    }
    Ok(())
}

/// Starts a non-blocking connect.
pub(crate) fn dial(addr: SocketAddr, config: &Config) -> io::Result<TcpStream> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    configure(SockRef::from(&sock), config)?;
    sock.set_nonblocking(true)?;
    match sock.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(sock.into()))
}

/// Whether a non-blocking connect has completed (`Ok(false)`: not yet).
pub(crate) fn connect_result(stream: &Stream) -> Result<bool, CloseReason> {
    match stream.sock().take_error() {
        Ok(None) => {}
        Ok(Some(e)) | Err(e) => return Err(CloseReason::Io(e.kind())),
    }
    match stream.sock().peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(e) => Err(CloseReason::Io(e.kind())),
    }
}

/// The node id in a TLS peer's certificate, once its handshake is done.
#[cfg(feature = "tls")]
pub(crate) fn identify(
    ctx: &Option<std::sync::Arc<crate::tls::TlsContext>>,
    stream: &Stream,
) -> Result<u64, crate::error::TlsFailure> {
    let ctx = ctx
        .as_ref()
        .ok_or_else(|| crate::error::TlsFailure::Other("TLS context missing".into()))?;
    ctx.peer_id(stream.peer_certificates())
}
