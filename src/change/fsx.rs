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

    /// A second handle on this same directory (for a fresh listing), under the same path.
    pub fn reopen(&self) -> Result<DirFd> {
        let dir = Dir::openat(self.dir.as_fd(), ".", DIR_FLAGS, Mode::empty())
            .map_err(|e| Error::io("opening directory", &self.path, errno(e)))?;
        Ok(DirFd {
            dir,
            path: self.path.clone(),
        })
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

    /// Opens the regular file `name` for reading, refusing a symlink (`O_NOFOLLOW`) and
    /// anything but a regular file: the open is non-blocking (a FIFO with no writer would
    /// otherwise block the run forever, lock held) and the descriptor is `fstat`ed, which
    /// callers reuse (size, mtime) instead of a separate `stat`. A FIFO, socket or device is
    /// [`NotRegular`]; a symlink is `ELOOP`.
    pub fn open_file(&self, name: impl AsRef<OsStr>) -> Result<(std::fs::File, FileStat)> {
        let name = name.as_ref();
        let fd = openat(
            self.dir.as_fd(),
            name,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
            Mode::empty(),
        )
        .map_err(|e| Error::io("reading", self.child_path(name), errno(e)))?;
        let st = fstat(&fd).map_err(|e| Error::io("reading", self.child_path(name), errno(e)))?;
        let kind = kind_of_mode(st.st_mode);
        if kind != Kind::File {
            let what = special_name(st.st_mode);
            return Err(Error::io(
                "reading",
                self.child_path(name),
                std::io::Error::new(std::io::ErrorKind::InvalidInput, NotRegular(what)),
            ));
        }
        Ok((std::fs::File::from(fd), st))
    }

    /// Reads a small regular file (at most `max` bytes; more is reported as `max + 1` bytes
    /// read, which callers treat as malformed), with its metadata. Refuses a symlink and
    /// anything but a regular file (see [`DirFd::open_file`]).
    pub fn read_small_stat(
        &self,
        name: impl AsRef<OsStr>,
        max: usize,
    ) -> Result<(Vec<u8>, FileStat)> {
        let name = name.as_ref();
        let (f, st) = self.open_file(name)?;
        // The size is known from the fstat: one allocation of the right size (links are 71
        // bytes, manifests a few KiB; a max-sized buffer per call would be an mmap each).
        let cap = (st.st_size.max(0) as usize).min(max) + 1;
        let mut buf = Vec::with_capacity(cap);
        f.take(max as u64 + 1)
            .read_to_end(&mut buf)
            .map_err(|e| Error::io("reading", self.child_path(name), e))?;
        Ok((buf, st))
    }

    /// [`DirFd::read_small_stat`] without the metadata.
    pub fn read_small(&self, name: impl AsRef<OsStr>, max: usize) -> Result<Vec<u8>> {
        self.read_small_stat(name, max).map(|(b, _)| b)
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

    /// Opens the child directory `name` without following a symlink and without crossing
    /// into another mount: a bind mount of an outside directory placed inside the store has
    /// the same device number, so only the mount identity tells it apart. `openat2` with
    /// `RESOLVE_NO_XDEV` refuses the crossing itself (no extra system call); where the kernel
    /// lacks `openat2` (before 5.6), the child's mount ID is compared with `statx`.
    /// A crossing is [`Crossing`] (exit 1, the path in the message).
    pub fn sub_same_mount(&self, name: impl AsRef<OsStr>) -> Result<DirFd> {
        let name = name.as_ref();
        let path = self.path.join(name);
        let crossing =
            |path: PathBuf| Error::io("not entering", path, std::io::Error::other(Crossing));
        if OPENAT2.load(std::sync::atomic::Ordering::Relaxed) {
            let how = nix::fcntl::OpenHow::new()
                .flags(DIR_FLAGS)
                .resolve(nix::fcntl::ResolveFlag::RESOLVE_NO_XDEV);
            match nix::fcntl::openat2(self.dir.as_fd(), name, how) {
                Ok(fd) => {
                    let dir = Dir::from_fd(fd)
                        .map_err(|e| Error::io("opening directory", &path, errno(e)))?;
                    return Ok(DirFd { dir, path });
                }
                Err(nix::errno::Errno::EXDEV) => return Err(crossing(path)),
                Err(nix::errno::Errno::ENOSYS) => {
                    OPENAT2.store(false, std::sync::atomic::Ordering::Relaxed)
                }
                Err(e) => return Err(Error::io("opening directory", path, errno(e))),
            }
        }
        let child = self.sub(name)?;
        if child.mount_key()? != self.mount_key()? {
            return Err(crossing(path));
        }
        Ok(child)
    }

    /// Which mount this directory is on: the mount ID (`statx` `STATX_MNT_ID`, Linux 5.8),
    /// else the device number (older kernels: a same-file-system bind mount then goes
    /// unnoticed by this fallback, never by `openat2`).
    pub fn mount_key(&self) -> Result<MountKey> {
        let mut stx = std::mem::MaybeUninit::<nix::libc::statx>::zeroed();
        // SAFETY: statx writes into `stx`, a zeroed buffer of the right type; the path is a
        // NUL-terminated empty string used with AT_EMPTY_PATH on a valid descriptor.
        let rc = unsafe {
            nix::libc::statx(
                std::os::fd::AsRawFd::as_raw_fd(&self.dir.as_fd()),
                c"".as_ptr(),
                nix::libc::AT_EMPTY_PATH,
                nix::libc::STATX_MNT_ID,
                stx.as_mut_ptr(),
            )
        };
        if rc == 0 {
            // SAFETY: statx succeeded and filled the buffer.
            let stx = unsafe { stx.assume_init() };
            if stx.stx_mask & nix::libc::STATX_MNT_ID != 0 {
                return Ok(MountKey::Id(stx.stx_mnt_id));
            }
        }
        Ok(MountKey::Dev(self.self_stat()?.st_dev))
    }

    /// Mount points strictly below this directory, as paths relative to it (sorted), read
    /// from `/proc/self/mountinfo` once: cheaper than a `statx` per directory of the store.
    pub fn mount_points_below(&self) -> Result<Vec<String>> {
        let fd_link = format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&self.dir.as_fd())
        );
        let me = std::fs::read_link(&fd_link)
            .map_err(|e| Error::io("finding the real path of", &self.path, e))?;
        let table = std::fs::read("/proc/self/mountinfo")
            .map_err(|e| Error::io("reading", "/proc/self/mountinfo", e))?;
        Ok(mounts_below(&table, me.as_os_str().as_bytes()))
    }

    /// The raw handle, for callers that need another `*at` call.
    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.dir.as_fd()
    }
}

/// Whether `openat2` is worth trying (cleared once the kernel says ENOSYS).
static OPENAT2: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// The identity of a mount, as [`DirFd::mount_key`] found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountKey {
    /// The kernel's mount ID: distinguishes bind mounts of the same file system.
    Id(u64),
    /// Only the device number (kernels without `STATX_MNT_ID`).
    Dev(u64),
}

/// The cause of an [`Error::Io`] when an open would cross into another mount.
#[derive(Debug)]
pub struct Crossing;

impl std::fmt::Display for Crossing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "it is a mount point (another mount than the store's); left in place, never crossed",
        )
    }
}

impl std::error::Error for Crossing {}

/// The cause of an [`Error::Io`] when a file that must be regular is not: reading a FIFO
/// blocks, a device has side effects; neither belongs in a registry store.
#[derive(Debug)]
pub struct NotRegular(pub &'static str);

impl std::fmt::Display for NotRegular {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "not a regular file ({})", self.0)
    }
}

impl std::error::Error for NotRegular {}

/// If `e` says a file is not regular, what it is instead (`fifo`, `socket`, ...).
pub fn not_regular(e: &Error) -> Option<&'static str> {
    match e {
        Error::Io { source, .. } => source
            .get_ref()
            .and_then(|x| x.downcast_ref::<NotRegular>())
            .map(|n| n.0),
        _ => None,
    }
}

/// Is `e` a refused mount crossing?
pub fn is_crossing(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. }
        if source.get_ref().is_some_and(|x| x.is::<Crossing>()))
}

/// What a non-regular file is, from `st_mode` (for messages).
pub fn special_name(mode: u32) -> &'static str {
    match mode & libc_mode::S_IFMT {
        libc_mode::S_IFDIR => "directory",
        libc_mode::S_IFLNK => "symbolic link",
        libc_mode::S_IFIFO => "fifo",
        libc_mode::S_IFSOCK => "socket",
        libc_mode::S_IFCHR => "character device",
        libc_mode::S_IFBLK => "block device",
        libc_mode::S_IFREG => "regular file",
        _ => "unknown file type",
    }
}

/// The mount points listed in `mountinfo` (the contents of `/proc/self/mountinfo`) that lie
/// strictly below the absolute path `dir`, relative to it, sorted and deduplicated.
/// The mount point is the fifth field, with space, tab, newline and backslash written as
/// octal escapes (`\040`).
pub fn mounts_below(mountinfo: &[u8], dir: &[u8]) -> Vec<String> {
    let dir = dir.strip_suffix(b"/").unwrap_or(dir);
    let mut out: Vec<String> = mountinfo
        .split(|b| *b == b'\n')
        .filter_map(|line| line.split(|b| *b == b' ').nth(4))
        .map(unescape_octal)
        .filter_map(|mp| {
            let rest = mp.strip_prefix(dir)?.strip_prefix(b"/")?;
            (!rest.is_empty()).then(|| String::from_utf8_lossy(rest).into_owned())
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Decodes the `\NNN` octal escapes of a mountinfo field.
fn unescape_octal(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let oct = s
            .get(i + 1..i + 4)
            .filter(|d| s[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match oct {
            Some(d) => {
                let v = d.iter().fold(0u32, |a, c| a * 8 + u32::from(c - b'0'));
                out.push(v as u8);
                i += 4;
            }
            None => {
                out.push(s[i]);
                i += 1;
            }
        }
    }
    out
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
    pub const S_IFIFO: u32 = 0o010000;
    pub const S_IFSOCK: u32 = 0o140000;
    pub const S_IFCHR: u32 = 0o020000;
    pub const S_IFBLK: u32 = 0o060000;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_below_decodes_octal_escapes_and_keeps_only_strict_descendants() {
        let table = b"22 1 8:1 / / rw - ext4 /dev/sda1 rw\n\
30 22 8:1 /data/x /srv/my\\040store/docker/registry/v2/repositories/a/_uploads/x rw - ext4 /dev/sda1 rw\n\
31 22 8:1 / /srv/my\\040store rw - ext4 /dev/sda1 rw\n\
32 22 8:1 / /srv/my\\040store2/y rw - ext4 /dev/sda1 rw\n";
        assert_eq!(
            mounts_below(table, b"/srv/my store"),
            vec!["docker/registry/v2/repositories/a/_uploads/x".to_string()]
        );
        assert_eq!(
            mounts_below(table, b"/srv/my store/"),
            mounts_below(table, b"/srv/my store")
        );
        assert!(mounts_below(table, b"/nowhere").is_empty());
    }

    #[test]
    fn unescape_octal_leaves_other_backslashes() {
        assert_eq!(unescape_octal(b"a\\134b\\x\\0"), b"a\\b\\x\\0".to_vec());
    }
}
