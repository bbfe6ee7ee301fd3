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
    /// Connections being relayed (all backends).
    pub active: AtomicUsize,
}

impl Proxy {
    /// A proxy to `backend`.
    pub fn new(backend: SocketAddr) -> Arc<Proxy> {
        Arc::new(Proxy {
            backend: Mutex::new(backend),
            active: AtomicUsize::new(0),
        })
    }

    /// Sends new connections to `backend` from now on.
    pub fn switch(&self, backend: SocketAddr) {
        *self.backend.lock().expect("backend") = backend;
    }

    fn current(&self) -> SocketAddr {
        *self.backend.lock().expect("backend")
    }

    /// Accepts forever on `listener` (one thread per direction of each connection).
    pub fn serve(self: Arc<Self>, listener: TcpListener) {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
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
        let up = std::thread::spawn(move || pipe(c2, s2));
        pipe(server, client);
        let _ = up.join();
        self.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` until EOF or an error, then half-closes `to` (so the other side sees
/// the end of this direction, as without a proxy).
fn pipe(mut from: TcpStream, mut to: TcpStream) {
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
