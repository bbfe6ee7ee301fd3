//! The supervisor's control socket: `<root>/.regclean/supervise.sock`, owner-only. A regclean
//! run next to a supervised registry (`docker exec registry regclean app:pr-1`) removes what
//! it was asked to, then asks here for an online collection cycle and waits for its result.
//!
//! Protocol: one JSON line each way. Request `{"args": [...]}` (the collection options of the
//! run: pruning scope, `--keep-untagged`...; only those are accepted); response the cycle's
//! result (see [`super::Cycle`]) or `{"error": "..."}`.
//!
//! The socket is bound and connected through `/proc/self/fd/N/`, a handle on `.regclean`, so
//! a long storage root never hits the 108-byte limit of a socket path and a symlink planted
//! at `.regclean` is never followed.

use crate::app::STATE_DIR;
use nix::fcntl::{open, OFlag};
use nix::sys::stat::Mode;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Where supervisors keep their state for stores on object storage when REGCLEAN_STATE_DIR
/// does not say.
pub const OBJECT_STATE_DEFAULT: &str = "/var/lib/regclean";

/// The local directory whose `.regclean` holds a supervisor's state for this bucket:
/// `$REGCLEAN_STATE_DIR/s3-<hash>` (default [`OBJECT_STATE_DEFAULT`]), the hash of the
/// endpoint, bucket and prefix. One per bucket: two supervised registries on one host never
/// share a control socket or a pull record, and a run only ever finds its own bucket's.
pub fn object_state_root(s3: &crate::storage::s3::settings::S3Settings) -> PathBuf {
    use sha2::Digest as _;
    let base = std::env::var_os("REGCLEAN_STATE_DIR")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(OBJECT_STATE_DEFAULT), PathBuf::from);
    let id = format!(
        "{}\n{}\n{}",
        s3.endpoint.as_deref().unwrap_or(""),
        s3.bucket,
        s3.prefix
    );
    let h = sha2::Sha256::digest(id.as_bytes());
    let hex: String = h[..8].iter().map(|b| format!("{b:02x}")).collect();
    base.join(format!("s3-{hex}"))
}

/// Set in the environment of a cycle's own collection run: it never asks the supervisor
/// (which is waiting for it) for a cycle.
pub const IN_CYCLE: &str = "REGCLEAN_IN_CYCLE";

/// Is a supervisor listening at `root`'s control socket, and is this run not its cycle's
/// own collection?
pub fn listening(root: &Path) -> bool {
    std::env::var_os(IN_CYCLE).is_none()
        && state_dir(root, false)
            .ok()
            .is_some_and(|fd| UnixStream::connect(via_fd(&fd)).is_ok())
}

/// The socket's name in `.regclean`.
pub const SOCKET: &str = "supervise.sock";

/// A request for a cycle.
#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    /// Collection options (see [`allowed`]).
    pub args: Vec<String>,
}

/// The options a request may pass to the collection run: nothing that removes or reaches
/// outside the store.
pub fn allowed(args: &[String]) -> Result<(), String> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--keep-untagged" | "--prune-referrers" | "--keep-attachments" => {}
            "--collector" | "--prune-in" | "--keep-manifest" | "--protect-tag" => {
                if it.next().is_none() {
                    return Err(format!("{a} needs a value"));
                }
            }
            other => return Err(format!("option {other} is not accepted by the supervisor")),
        }
    }
    Ok(())
}

/// `.regclean` opened as a directory without following a symlink there (created, owner-only,
/// with `create`).
pub fn state_dir(root: &Path, create: bool) -> std::io::Result<OwnedFd> {
    let dir = root.join(STATE_DIR);
    if create {
        match std::fs::create_dir(&dir) {
            Ok(()) => std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    let fd = open(
        &dir,
        OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_RDONLY,
        Mode::empty(),
    )
    .map_err(std::io::Error::from)?;
    // The socket and the pull record are trusted: only in a directory nobody else can write.
    let st = nix::sys::stat::fstat(&fd).map_err(std::io::Error::from)?;
    if st.st_uid != nix::unistd::geteuid().as_raw() || st.st_mode & 0o022 != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} is not owned by this user or is writable by others (uid {}, mode {:o}): not trusted",
                dir.display(),
                st.st_uid,
                st.st_mode & 0o7777
            ),
        ));
    }
    Ok(fd)
}

fn via_fd(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}/{SOCKET}", fd.as_raw_fd()))
}

/// Binds the control socket (removing a stale one left by a killed supervisor; refusing
/// anything else at that name). The directory handle must stay open as long as the socket is
/// used through it, so it is returned too.
pub fn bind(root: &Path) -> std::io::Result<(UnixListener, OwnedFd)> {
    let fd = state_dir(root, true)?;
    let path = via_fd(&fd);
    match std::fs::symlink_metadata(&path) {
        // A live supervisor's socket is never taken over: two supervisors on one store would
        // each believe their cycle is the only writer.
        Ok(m) if m.file_type().is_socket() && UnixStream::connect(&path).is_ok() => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!(
                    "another supervisor listens on {}",
                    root.join(STATE_DIR).join(SOCKET).display()
                ),
            ))
        }
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(&path)?,
        Ok(_) => {
            return Err(std::io::Error::other(format!(
                "{} exists and is not a socket",
                root.join(STATE_DIR).join(SOCKET).display()
            )))
        }
        Err(_) => {}
    }
    let l = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok((l, fd))
}

/// Serves requests, each on its own thread and answered by `cycle` (which serialises the
/// cycles themselves). A client that sends nothing is dropped after 10 s instead of blocking
/// everyone after it.
pub fn serve(
    l: UnixListener,
    cycle: impl Fn(Request) -> serde_json::Value + Send + Sync + 'static,
) {
    let cycle = std::sync::Arc::new(cycle);
    for conn in l.incoming() {
        let Ok(conn) = conn else { continue };
        let cycle = std::sync::Arc::clone(&cycle);
        std::thread::spawn(move || answer(conn, &*cycle));
    }
}

fn answer(mut conn: UnixStream, cycle: &dyn Fn(Request) -> serde_json::Value) {
    let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(10)));
    {
        let mut line = String::new();
        if BufReader::new(&conn).read_line(&mut line).is_err() {
            return;
        }
        let reply = match serde_json::from_str::<Request>(&line) {
            Ok(r) => match allowed(&r.args) {
                Ok(()) => cycle(r),
                Err(e) => serde_json::json!({ "error": e }),
            },
            Err(e) => serde_json::json!({ "error": format!("bad request: {e}") }),
        };
        let _ = writeln!(conn, "{reply}");
    }
}

/// Asks the supervisor serving `root` for a cycle and waits for its answer. `None` when no
/// supervisor listens there.
pub fn request(root: &Path, args: Vec<String>) -> Option<Result<serde_json::Value, String>> {
    let fd = state_dir(root, false).ok()?;
    let mut s = UnixStream::connect(via_fd(&fd)).ok()?;
    let req = serde_json::to_string(&Request { args }).expect("serializes");
    if let Err(e) = writeln!(s, "{req}") {
        return Some(Err(format!("writing to the supervisor: {e}")));
    }
    let mut line = String::new();
    Some(match BufReader::new(&s).read_line(&mut line) {
        Ok(0) => Err("the supervisor closed the connection without an answer".into()),
        Ok(_) => serde_json::from_str(&line).map_err(|e| format!("bad answer: {e}")),
        Err(e) => Err(format!("reading from the supervisor: {e}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_supervisors_socket_is_never_taken_over_and_a_stale_one_is() {
        let t = tempfile::tempdir().unwrap();
        let (first, _fd) = bind(t.path()).unwrap();
        let e = bind(t.path()).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}");
        assert!(listening(t.path()));
        drop(first);
        // The listener is gone, its socket file stays: stale, replaced.
        assert!(!listening(t.path()));
        let (_again, _fd) = bind(t.path()).unwrap();
        assert!(listening(t.path()));
    }

    #[test]
    fn a_state_directory_others_can_write_is_not_trusted() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join(STATE_DIR);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = state_dir(t.path(), false).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}");
        assert!(bind(t.path()).is_err());
        assert!(!listening(t.path()));
    }

    #[test]
    fn each_bucket_has_its_own_state_directory() {
        let s = |bucket: &str, prefix: &str| crate::storage::s3::settings::S3Settings {
            region: "us-east-1".into(),
            endpoint: Some("http://127.0.0.1:8333".into()),
            bucket: bucket.into(),
            prefix: prefix.into(),
            keys: None,
            session_token: None,
            secure: false,
            path_style: true,
            source: "test".into(),
        };
        let a = object_state_root(&s("images", "reg"));
        assert_eq!(a, object_state_root(&s("images", "reg")));
        assert_ne!(a, object_state_root(&s("images", "other")));
        assert_ne!(a, object_state_root(&s("images2", "reg")));
        assert!(a.file_name().unwrap().to_str().unwrap().starts_with("s3-"));
    }
}
