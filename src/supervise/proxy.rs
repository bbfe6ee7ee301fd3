//! The front door: a byte-level TCP proxy from the registry's public address to whichever
//! registry child is current. Bytes are copied untouched, so TLS passes through (the registry
//! child terminates it, with its own certificates).
//!
//! Switching is per connection: a new connection goes to the current child; an open one stays
//! with the child it started on until either side closes it. The old child is then stopped
//! with SIGTERM, and the registry's own graceful shutdown (`http.draintimeout`, which the
//! supervisor sets when the config does not) finishes its requests in flight.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where new connections go.
pub struct Proxy {
    backend: Mutex<SocketAddr>,
    /// Set when the supervisor stops: new connections are closed at once.
    closing: std::sync::atomic::AtomicBool,
    /// Connections being relayed (all backends).
    pub active: AtomicUsize,
}

impl Proxy {
    /// A proxy to `backend`.
    pub fn new(backend: SocketAddr) -> Arc<Proxy> {
        Arc::new(Proxy {
            backend: Mutex::new(backend),
            closing: std::sync::atomic::AtomicBool::new(false),
            active: AtomicUsize::new(0),
        })
    }

    /// Sends new connections to `backend` from now on.
    pub fn switch(&self, backend: SocketAddr) {
        *self.backend.lock().expect("backend") = backend;
    }

    /// No new connections from now on (the supervisor is stopping).
    pub fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
    }

    fn current(&self) -> SocketAddr {
        *self.backend.lock().expect("backend")
    }

    /// Accepts forever on `listener` (one thread per direction of each connection).
    pub fn serve(self: Arc<Self>, listener: TcpListener) {
        for client in listener.incoming() {
            let client = match client {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors (EMFILE) or a connection reset before accept: wait
                    // a little instead of spinning.
                    tracing::warn!("proxy: accepting a connection: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            if self.closing.load(Ordering::SeqCst) {
                continue; // dropped: closed at once
            }
            let me = Arc::clone(&self);
            std::thread::spawn(move || me.relay(client));
        }
    }

    /// Connects to the current backend. A connection refused right after a switch (the old
    /// child already stopping) is retried on the then-current backend for up to 5 s: the
    /// client never sees the switch.
    fn connect(&self) -> Option<TcpStream> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match TcpStream::connect_timeout(&self.current(), Duration::from_secs(2)) {
                Ok(s) => return Some(s),
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!("proxy: connecting to the registry child: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    tracing::warn!("proxy: no registry child accepts connections: {e}");
                    return None;
                }
            }
        }
    }

    fn relay(&self, client: TcpStream) {
        let Some(server) = self.connect() else { return };
        self.active.fetch_add(1, Ordering::SeqCst);
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
            self.active.fetch_sub(1, Ordering::SeqCst);
            return;
        };
        let up = std::thread::spawn(move || pipe(&c2, &s2));
        pipe(&server, &client);
        // The registry closed its side: nothing the client still sends can matter (an idle
        // keep-alive connection, typically). Close both, so that the other direction ends
        // too instead of holding the relay (and a stopping supervisor) until the client goes.
        let _ = client.shutdown(Shutdown::Both);
        let _ = server.shutdown(Shutdown::Both);
        let _ = up.join();
        self.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` until EOF or an error, then half-closes `to` (so the other side sees
/// the end of this direction, as without a proxy). Zero-copy where the kernel allows:
/// `splice(2)` socket → pipe → socket moves pages without bringing them to user space (a
/// 256 MiB layer pull went from 0.56× to 0.61× of the direct speed, benches/RESULTS.md);
/// plain reads and writes otherwise.
fn pipe(from: &TcpStream, to: &TcpStream) {
    match splice_all(from, to) {
        Ok(()) => {
            let _ = to.shutdown(Shutdown::Write);
        }
        Err(Spliced::Unsupported) => copy(from, to),
        Err(Spliced::Failed) => {
            let _ = to.shutdown(Shutdown::Both);
            let _ = from.shutdown(Shutdown::Both);
        }
    }
}

enum Spliced {
    /// Nothing was moved yet and splice cannot be used here: copy instead.
    Unsupported,
    /// A socket failed.
    Failed,
}

fn splice_all(from: &TcpStream, to: &TcpStream) -> Result<(), Spliced> {
    use nix::errno::Errno;
    use nix::fcntl::{splice, SpliceFFlags};
    let (r, w) = nix::unistd::pipe().map_err(|_| Spliced::Unsupported)?;
    // A larger pipe moves more per call (1 MiB; the default 64 KiB where that is refused).
    let _ = nix::fcntl::fcntl(&w, nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20));
    // No SPLICE_F_MORE: like MSG_MORE it holds back a partial segment, which delays every
    // small response by the kernel's cork timeout.
    let flags = SpliceFFlags::SPLICE_F_MOVE;
    let mut moved = false;
    loop {
        let n = match splice(from, None, &w, None, 1 << 20, flags) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(Errno::EINVAL | Errno::ENOSYS) if !moved => return Err(Spliced::Unsupported),
            Err(_) => return Err(Spliced::Failed),
        };
        moved = true;
        let mut left = n;
        while left > 0 {
            match splice(&r, None, to, None, left, flags) {
                Ok(0) => return Err(Spliced::Failed),
                Ok(m) => left -= m,
                Err(Errno::EINTR) => {}
                Err(_) => return Err(Spliced::Failed),
            }
        }
    }
}

/// Plain copy through a buffer.
fn copy(mut from: &TcpStream, mut to: &TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    let _ = from.shutdown(Shutdown::Both);
                    break;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => {
                let _ = to.shutdown(Shutdown::Both);
                return;
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Binds the public address as the registry would: `:5000` means every interface (IPv6 and
/// IPv4 where the kernel allows dual-stack, else IPv4).
pub fn bind(addr: &str) -> std::io::Result<TcpListener> {
    match addr.strip_prefix(':') {
        Some(port) => TcpListener::bind(format!("[::]:{port}"))
            .or_else(|_| TcpListener::bind(format!("0.0.0.0:{port}"))),
        None => TcpListener::bind(addr),
    }
}
