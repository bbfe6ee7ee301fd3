//! One regclean per store: an exclusive `flock` on `<root>/.regclean/lock`, outside
//! `repositories/` and `blobs/` (anything created there would confuse the registry's walks).
//! The kernel drops the lock when the process dies, even by SIGKILL, so a crashed run never
//! leaves a stale lock behind.

use crate::error::{errno, Error, Result};
use crate::fsx::DirFd;
use nix::fcntl::{openat, Flock, FlockArg, OFlag};
use nix::sys::stat::Mode;
use std::fs::File;
use std::io::{Read, Seek, Write};

/// Whether to wait for another run to finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitMode {
    /// Refuse at once (exit 3).
    NoWait,
    /// Block until the other run releases the lock (`--wait`).
    Wait,
}

/// A held lock; released on drop.
pub struct Lock {
    _flock: Flock<File>,
}

/// Takes the lock in `state` (the `.regclean` directory).
pub fn acquire(state: &DirFd, mode: WaitMode) -> Result<Lock> {
    let path = state.child_path("lock");
    let fd = openat(
        state.as_fd(),
        "lock",
        OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(|e| Error::io("opening lock file", &path, errno(e)))?;
    let file = File::from(fd);
    let flock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            if mode == WaitMode::NoWait {
                let who = if holder.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {holder})")
                };
                return Err(Error::Unsafe(format!(
                    "another regclean{who} is working on this store: lock {} is held; retry later or pass --wait",
                    path.display()
                )));
            }
            tracing::info!("waiting for lock {} held by pid {holder}", path.display());
            Flock::lock(file, FlockArg::LockExclusive)
                .map_err(|(_, e)| Error::io("locking", &path, errno(e)))?
        }
        Err((_, e)) => return Err(Error::io("locking", &path, errno(e))),
    };
    // Record our pid for the message another run prints; the lock is the flock, not this text.
    let mut f: &File = &flock;
    let _ = f.set_len(0);
    let _ = f.rewind();
    let _ = write!(f, "{}", std::process::id());
    Ok(Lock { _flock: flock })
}
