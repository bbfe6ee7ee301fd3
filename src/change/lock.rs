//! One regclean per store: an exclusive `flock` on the storage root directory itself.
//!
//! Why the directory and not a lock file: taking the lock must write nothing, so that a dry run
//! and a refused run leave the root byte-identical (a lock file would have to be created the
//! first time), and so that nobody can plant a link for regclean to write through (a symlinked
//! or hard-linked lock file once made regclean truncate an outside file). `flock` works on a
//! directory opened read-only, is shared by every process that opens the same inode (the
//! container's `docker exec` and a host maintenance script see one lock), and the kernel drops
//! it when the process dies, even by SIGKILL, so a crashed run never leaves a stale lock.
//!
//! The holder's pid, for the refusal message, is read from `/proc/locks` (no pid file).

use crate::error::{errno, Error, Result};
use crate::fsx::DirFd;
use nix::fcntl::{Flock, FlockArg};
use std::path::Path;

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
    _flock: Flock<std::fs::File>,
}

/// Takes the lock on the storage root `root` (an open directory handle).
pub fn acquire(root: &DirFd, mode: WaitMode) -> Result<Lock> {
    let path = root.path();
    // A second descriptor of the same directory: the lock lives on the open file description,
    // and the caller keeps using its own handle.
    let file = std::fs::File::from(
        root.as_fd()
            .try_clone_to_owned()
            .map_err(|e| Error::io("locking", path, e))?,
    );
    let st = root.self_stat()?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(l) => Ok(Lock { _flock: l }),
        Err((file, nix::errno::Errno::EWOULDBLOCK)) => {
            let who = holder(st.st_dev, st.st_ino)
                .map(|p| format!(" (pid {p})"))
                .unwrap_or_default();
            if mode == WaitMode::NoWait {
                return Err(Error::Unsafe(format!(
                    "another regclean{who} is working on the store {}: it holds the lock on the directory; retry later or pass --wait",
                    path.display()
                )));
            }
            tracing::info!("waiting for the lock on {} held{who}", path.display());
            Flock::lock(file, FlockArg::LockExclusive)
                .map(|l| Lock { _flock: l })
                .map_err(|(_, e)| Error::io("locking", path, errno(e)))
        }
        Err((_, e)) => Err(Error::io("locking", path, errno(e))),
    }
}

/// The pid holding an `flock` on the inode (`dev`, `ino`), from `/proc/locks`.
fn holder(dev: u64, ino: u64) -> Option<u32> {
    let text = std::fs::read_to_string(Path::new("/proc/locks")).ok()?;
    holder_in(&text, dev, ino)
}

/// Parses `/proc/locks` lines such as `1: FLOCK  ADVISORY  WRITE 1234 fe:01:5678 0 EOF`.
fn holder_in(text: &str, dev: u64, ino: u64) -> Option<u32> {
    let (maj, min) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // "->" marks a waiter, which shifts the fields by one.
        let f: &[&str] = if f.get(1) == Some(&"->") { &[] } else { &f };
        if f.len() < 6 || f[1] != "FLOCK" {
            return None;
        }
        let mut id = f[5].split(':');
        let ma = u64::from_str_radix(id.next()?, 16).ok()?;
        let mi = u64::from_str_radix(id.next()?, 16).ok()?;
        let i: u64 = id.next()?.parse().ok()?;
        (ma == maj && mi == min && i == ino)
            .then(|| f[4].parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_is_found_by_device_and_inode() {
        let dev = nix::sys::stat::makedev(0xfe, 1);
        let t = "1: POSIX  ADVISORY  WRITE 99 fe:01:77 0 EOF\n2: FLOCK  ADVISORY  WRITE 1234 fe:01:77 0 EOF\n2: -> FLOCK  ADVISORY  WRITE 555 fe:01:77 0 EOF\n";
        assert_eq!(holder_in(t, dev, 77), Some(1234));
        assert_eq!(holder_in(t, dev, 78), None);
    }

    #[test]
    fn second_lock_on_the_same_root_is_refused_and_writes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let d = DirFd::open(tmp.path()).unwrap();
        let _held = acquire(&d, WaitMode::NoWait).unwrap();
        let d2 = DirFd::open(tmp.path()).unwrap();
        let e = acquire(&d2, WaitMode::NoWait).err().expect("refused");
        assert!(matches!(e, Error::Unsafe(_)), "{e}");
        assert!(
            e.to_string()
                .contains(&format!("pid {}", std::process::id())),
            "{e}"
        );
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }
}
