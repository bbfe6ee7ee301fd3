//! Directory handles: every access inside the store goes through an open directory and a
//! single name (`openat`, `fstatat`, `unlinkat`, `renameat`), never through a path string that
//! the kernel resolves again. Two things follow, as in uutils `rm`:
//! - no symlink inside the store is ever followed (`O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`): a
//!   planted `tags/x -> /etc` is seen as a symlink, reported, and never entered;
//! - a directory swapped for a symlink between listing and opening is not followed either,
//!   because the open itself refuses it.

use crate::error::{errno, Error, Result};
use nix::dir::{Dir, Type};
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fstat, fstatat, FileStat, Mode};
use nix::unistd::{unlinkat, UnlinkatFlags};
use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// What a directory entry is, as `readdir` reports it (no `stat` unless the file system does
/// not say).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link (never followed).
    Symlink,
    /// Anything else (socket, fifo, device).
    Other,
}

/// One directory entry.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The name within its directory.
    pub name: OsString,
    /// Its type.
    pub kind: Kind,
}

impl Entry {
    /// The name as UTF-8, if it is.
    pub fn name_str(&self) -> Option<&str> {
        self.name.to_str()
    }
}

/// An open directory plus its path (for messages only; the path is never used for access).
pub struct DirFd {
    dir: Dir,
    path: PathBuf,
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

impl DirFd {
    /// Opens a directory by path. The last component must not be a symlink; earlier ones may
    /// be (the storage root itself is the administrator's choice, e.g. a symlinked volume).
    pub fn open(path: &Path) -> Result<DirFd> {
        let dir = Dir::open(path, DIR_FLAGS, Mode::empty())
            .map_err(|e| Error::io("opening directory", path, errno(e)))?;
        Ok(DirFd {
            dir,
            path: path.to_path_buf(),
        })
    }

    /// Opens the child directory `name` without following a symlink.
    pub fn sub(&self, name: impl AsRef<OsStr>) -> Result<DirFd> {
        let name = name.as_ref();
        let path = self.path.join(name);
        match Dir::openat(self.dir.as_fd(), name, DIR_FLAGS, Mode::empty()) {
            Ok(dir) => Ok(DirFd { dir, path }),
            Err(e) => Err(Error::io("opening directory", path, errno(e))),
        }
    }

    /// Like [`DirFd::sub`], but `Ok(None)` when the child does not exist.
    pub fn sub_opt(&self, name: impl AsRef<OsStr>) -> Result<Option<DirFd>> {
        match self.sub(name) {
            Ok(d) => Ok(Some(d)),
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The path this handle was opened as (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of a child (for messages).
    pub fn child_path(&self, name: impl AsRef<OsStr>) -> PathBuf {
        self.path.join(name.as_ref())
    }

    /// Lists the entries (without `.` and `..`).
    pub fn entries(&mut self) -> Result<Vec<Entry>> {
        let mut raw = Vec::new();
        for ent in self.dir.iter() {
            let ent = ent.map_err(|e| Error::io("listing directory", &self.path, errno(e)))?;
            let name = ent.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            raw.push((OsStr::from_bytes(name).to_os_string(), ent.file_type()));
        }
        // Iter's drop rewinds the directory, so a second listing starts from the beginning.
        raw.into_iter()
            .map(|(name, t)| {
                let kind = match t {
                    Some(t) => kind_of(t),
                    None => self.kind_by_stat(&name)?,
                };
                Ok(Entry { name, kind })
            })
            .collect()
    }

    fn kind_by_stat(&self, name: &OsStr) -> Result<Kind> {
        let st = self.stat(name)?;
        Ok(kind_of_mode(st.st_mode))
    }

    /// `fstatat` without following a symlink.
    pub fn stat(&self, name: impl AsRef<OsStr>) -> Result<FileStat> {
        let name = name.as_ref();
        fstatat(
            self.dir.as_fd(),
            name,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| Error::io("reading metadata of", self.child_path(name), errno(e)))
    }

    /// `fstat` of this directory itself.
    pub fn self_stat(&self) -> Result<FileStat> {
        fstat(self.dir.as_fd()).map_err(|e| Error::io("reading metadata of", &self.path, errno(e)))
    }

    /// Opens the regular file `name` for reading, refusing a symlink.
    pub fn open_file(&self, name: impl AsRef<OsStr>) -> Result<std::fs::File> {
        let name = name.as_ref();
        let fd = openat(
            self.dir.as_fd(),
            name,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::io("reading", self.child_path(name), errno(e)))?;
        Ok(std::fs::File::from(fd))
    }

    /// Reads a small regular file (at most `max` bytes; more is reported as `max + 1` bytes
    /// read, which callers treat as malformed). Refuses a symlink.
    pub fn read_small(&self, name: impl AsRef<OsStr>, max: usize) -> Result<Vec<u8>> {
        let name = name.as_ref();
        // Links are 71 bytes and manifests a few KiB: start small, grow if needed (a
        // max-sized buffer per call would be an mmap per manifest).
        let mut buf = Vec::with_capacity((max + 1).min(4096));
        self.open_file(name)?
            .take(max as u64 + 1)
            .read_to_end(&mut buf)
            .map_err(|e| Error::io("reading", self.child_path(name), e))?;
        Ok(buf)
    }

    /// Removes a file (or symlink: the link itself) named `name`.
    pub fn unlink(&self, name: impl AsRef<OsStr>) -> Result<()> {
        let name = name.as_ref();
        unlinkat(self.dir.as_fd(), name, UnlinkatFlags::NoRemoveDir)
            .map_err(|e| Error::io("removing", self.child_path(name), errno(e)))
    }

    /// Removes the empty directory `name`; `Ok(false)` if it is not empty (or gone).
    pub fn rmdir_if_empty(&self, name: impl AsRef<OsStr>) -> Result<bool> {
        let name = name.as_ref();
        match unlinkat(self.dir.as_fd(), name, UnlinkatFlags::RemoveDir) {
            Ok(()) => Ok(true),
            Err(
                nix::errno::Errno::ENOTEMPTY
                | nix::errno::Errno::EEXIST
                | nix::errno::Errno::ENOENT,
            ) => Ok(false),
            Err(e) => Err(Error::io(
                "removing directory",
                self.child_path(name),
                errno(e),
            )),
        }
    }

    /// Atomically renames `name` in this directory to `to_name` in `to`. Both must be on the
    /// same file system (the kernel refuses otherwise with EXDEV, and so do we).
    pub fn rename_to(
        &self,
        name: impl AsRef<OsStr>,
        to: &DirFd,
        to_name: impl AsRef<OsStr>,
    ) -> Result<()> {
        let name = name.as_ref();
        nix::fcntl::renameat(self.dir.as_fd(), name, to.dir.as_fd(), to_name.as_ref())
            .map_err(|e| Error::io("moving to trash", self.child_path(name), errno(e)))
    }

    /// Creates the directory `name` (mode 0700) if missing and opens it.
    pub fn ensure_sub(&self, name: impl AsRef<OsStr>) -> Result<DirFd> {
        let name = name.as_ref();
        match nix::sys::stat::mkdirat(self.dir.as_fd(), name, Mode::from_bits_truncate(0o700)) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => self.sub(name),
            Err(e) => Err(Error::io(
                "creating directory",
                self.child_path(name),
                errno(e),
            )),
        }
    }

    /// The raw handle, for callers that need another `*at` call.
    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.dir.as_fd()
    }
}

fn kind_of(t: Type) -> Kind {
    match t {
        Type::Directory => Kind::Dir,
        Type::File => Kind::File,
        Type::Symlink => Kind::Symlink,
        _ => Kind::Other,
    }
}

/// Maps `st_mode` to a [`Kind`].
pub fn kind_of_mode(mode: u32) -> Kind {
    match mode & libc_mode::S_IFMT {
        libc_mode::S_IFDIR => Kind::Dir,
        libc_mode::S_IFREG => Kind::File,
        libc_mode::S_IFLNK => Kind::Symlink,
        _ => Kind::Other,
    }
}

mod libc_mode {
    pub const S_IFMT: u32 = 0o170000;
    pub const S_IFDIR: u32 = 0o040000;
    pub const S_IFREG: u32 = 0o100000;
    pub const S_IFLNK: u32 = 0o120000;
}

/// The modification time of a stat result, as a `SystemTime`.
pub fn mtime(st: &FileStat) -> std::time::SystemTime {
    let secs = st.st_mtime;
    let nanos = st.st_mtime_nsec as u32;
    if secs >= 0 {
        std::time::UNIX_EPOCH + std::time::Duration::new(secs as u64, nanos)
    } else {
        std::time::UNIX_EPOCH
    }
}

// SAFETY: `Dir` is not `Sync` only because `readdir` must not run on one `DIR*` from two threads
// at once. `readdir` is reachable solely through `DirFd::entries`, which takes `&mut self`; every
// `&self` method uses the descriptor alone (`*at` system calls), which is thread-safe.
unsafe impl Sync for DirFd {}
