//! The trash: how regclean removes things atomically.
//!
//! Every removal is one `rename(2)` of a directory into `<root>/.regclean/trash/<run>/`, then
//! the deletion of the trash. The rename is the commit point: before it the registry sees the
//! tag or repository whole, after it not at all, and a run killed at any moment leaves either
//! state plus some trash, which the next run empties first. The trash lies under the root (same
//! file system, so the rename is atomic and never a copy) but outside `repositories/` and
//! `blobs/`, which the registry walks.
//!
//! Deletion goes through directory handles (`openat` + `unlinkat`), never follows a symlink
//! (a symlink in the trash is unlinked itself), and never crosses into another mount: a
//! directory that is a mount point (a bind mount of an outside directory has the same device
//! number, so the test is the mount itself, see [`DirFd::sub_same_mount`]) is left in place
//! and reported with its path.

use crate::error::{errno, Error, Result};
use crate::fsx::{DirFd, Kind};
use rayon::prelude::*;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Opens `rel` (components below `base`) without following symlinks.
fn open_rel(base: &DirFd, rel: &Path) -> Result<DirFd> {
    let mut d = base.sub(".")?;
    for c in rel.components() {
        d = d.sub(c.as_os_str())?;
    }
    Ok(d)
}

/// Counts from deleting trees.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Deleted {
    /// Files (and symlinks) unlinked.
    pub files: u64,
    /// Directories removed.
    pub dirs: u64,
    /// Bytes of the regular files unlinked, where measured (see [`Measure`]).
    pub bytes: u64,
    /// What could not be deleted, with its path and cause; the deletion went on past each.
    pub errors: Vec<String>,
}

impl Deleted {
    /// Adds another deletion's counts and errors to these.
    pub fn add(&mut self, o: Deleted) {
        self.files += o.files;
        self.dirs += o.dirs;
        self.bytes += o.bytes;
        self.errors.extend(o.errors);
    }
}

/// Whether to `stat` each file to count its bytes (one more system call per file: worth it for
/// uploads, which can be gigabytes; not for link files, which are 71 bytes each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    /// Count files only.
    Count,
    /// Count files and their bytes.
    Bytes,
}

/// A run's trash directory.
pub struct Trash {
    /// `<root>/.regclean/trash`.
    all: DirFd,
    /// `<root>/.regclean/trash/<run>`.
    run: DirFd,
    /// `<run>/sNN`: entries are spread over [`SHARDS`] directories (see [`SHARDS`]).
    shards: Vec<DirFd>,
    run_name: String,
    seq: AtomicU64,
    /// The path of `docker/registry/v2`, the parent of `repositories/` (every taken entry lies
    /// below it; see [`Trash::undo`]).
    base: PathBuf,
    /// What was taken, in order: (parent relative to `base`, name, trash entry name), while
    /// a rollback may still come (see [`Trash::commit`]).
    journal: Mutex<Journal>,
}

/// Whether [`Trash::take`] records what it takes, for [`Trash::undo`].
#[derive(Debug)]
enum Journal {
    /// A rollback may still come: every entry is recorded.
    Open(Vec<(PathBuf, OsString, String)>),
    /// Committed ([`Trash::commit`]): nothing is put back any more, so nothing is recorded
    /// (`n` entries were taken in all).
    Committed(usize),
}

impl Trash {
    /// Creates this run's trash under the state directory `state` (`<root>/.regclean`), and
    /// checks that it is on the same mount as `repositories` (else a rename would fail with
    /// EXDEV halfway through a plan, and a trash bind-mounted from elsewhere would have its
    /// outside contents deleted; better to refuse before the first change).
    pub fn create(state: &DirFd, same_fs_as: &DirFd) -> Result<Trash> {
        let all = state.ensure_sub("trash")?;
        if all.mount_key()? != same_fs_as.mount_key()? {
            return Err(Error::Unsafe(format!(
                "{} and {} are on different mounts: removal by atomic rename is impossible (is the trash or .regclean a mount point?)",
                all.path().display(),
                same_fs_as.path().display()
            )));
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let run_name = format!("{}-{}", now.as_secs(), std::process::id());
        let run = all.ensure_sub(&run_name)?;
        let shards = (0..SHARDS)
            .map(|k| run.ensure_sub(shard_name(k)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Trash {
            all,
            run,
            shards,
            run_name,
            seq: AtomicU64::new(0),
            base: same_fs_as
                .path()
                .parent()
                .unwrap_or(same_fs_as.path())
                .to_path_buf(),
            journal: Mutex::new(Journal::Open(Vec::new())),
        })
    }

    /// Moves `name` out of `dir` into the trash, atomically. `label` ends the trash entry's
    /// name (`uploads` entries are measured in bytes when deleted). `dir` must lie below
    /// `docker/registry/v2` (the parent of the directory given to [`Trash::create`]), so that
    /// [`Trash::undo`] can put the entry back.
    pub fn take(&self, dir: &DirFd, name: impl AsRef<OsStr>, label: &str) -> Result<()> {
        let name = name.as_ref();
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let k = (n % SHARDS as u64) as usize;
        dir.rename_to(name, &self.shards[k], format!("{n}.{label}"))?;
        let entry = format!("{}/{n}.{label}", shard_name(k));
        match &mut *self.journal.lock().expect("journal") {
            Journal::Open(j) => {
                let rel = dir.path().strip_prefix(&self.base).unwrap_or(Path::new(""));
                j.push((rel.to_path_buf(), name.to_os_string(), entry));
            }
            Journal::Committed(n) => *n += 1,
        }
        Ok(())
    }

    /// Records this run's pruning scope in its trash directory (see [`leftover_scopes`]):
    /// a new file (`O_CREAT|O_EXCL|O_NOFOLLOW`) in the directory this run just created.
    pub fn record_scope<'a>(&self, repos: impl IntoIterator<Item = &'a String>) -> Result<()> {
        use std::io::Write;
        let fd = nix::fcntl::openat(
            self.run.as_fd(),
            SCOPE_FILE,
            nix::fcntl::OFlag::O_WRONLY
                | nix::fcntl::OFlag::O_CREAT
                | nix::fcntl::OFlag::O_EXCL
                | nix::fcntl::OFlag::O_NOFOLLOW
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| Error::io("creating", self.run.child_path(SCOPE_FILE), errno(e)))?;
        let mut f = std::fs::File::from(fd);
        let text: String = repos.into_iter().map(|r| format!("{r}\n")).collect();
        f.write_all(text.as_bytes())
            .map_err(|e| Error::io("writing", self.run.child_path(SCOPE_FILE), e))
    }

    /// Declares that no rollback will follow: [`Trash::undo`] puts nothing back from now on,
    /// and what is taken afterwards is counted, not recorded. Why: the native collector takes
    /// one entry per swept blob and per layer link (100k on the medium benchmark store) once
    /// nothing can refuse any more; recording them (path, name, entry name: about 250 bytes
    /// each) was the largest part of a full clean's peak memory.
    pub fn commit(&self) {
        let mut j = self.journal.lock().expect("journal");
        if let Journal::Open(v) = &*j {
            *j = Journal::Committed(v.len());
        }
    }

    /// How many entries this run has taken.
    pub fn taken(&self) -> usize {
        match &*self.journal.lock().expect("journal") {
            Journal::Open(j) => j.len(),
            Journal::Committed(n) => *n,
        }
    }

    /// Puts everything this run took back where it was, newest first, and removes the run's
    /// trash directory. Why: a refusal that comes after removal (the registry's dry run lists a
    /// blob regclean considers reachable) must still mean "nothing was changed" (exit 3).
    /// Each entry goes back by one `renameat2(RENAME_NOREPLACE)`, so a name re-created
    /// meanwhile (a concurrent push of the same tag) is never overwritten: that entry stays in
    /// the trash and is reported. No directory is re-created: emptied repository directories
    /// are removed only once a run is committed, so every parent is still there, with its
    /// owner and mode. `v2` is the handle on `docker/registry/v2`. Returns what could not be
    /// put back.
    pub fn undo(self, repos: &DirFd) -> Vec<String> {
        let mut errors = Vec::new();
        let journal = match std::mem::replace(
            &mut *self.journal.lock().expect("journal"),
            Journal::Committed(0),
        ) {
            Journal::Open(j) => j,
            Journal::Committed(n) => {
                errors.push(format!(
                    "{n} entries taken after the commit point cannot be put back (they stay in {})",
                    self.run.path().display()
                ));
                return errors;
            }
        };
        for (rel, name, entry) in journal.into_iter().rev() {
            let r = open_rel(repos, &rel).and_then(|parent| {
                nix::fcntl::renameat2(
                    self.run.as_fd(),
                    entry.as_str(),
                    parent.as_fd(),
                    name.as_os_str(),
                    nix::fcntl::RenameFlags::RENAME_NOREPLACE,
                )
                .map_err(|e| Error::io("putting back", parent.child_path(&name), errno(e)))
            });
            if let Err(e) = r {
                errors.push(format!(
                    "{e} (it stays in {})",
                    self.run.child_path(&entry).display()
                ));
            }
        }
        if errors.is_empty() {
            let _ = self.run.unlink(SCOPE_FILE);
            for k in 0..SHARDS {
                let _ = self.run.rmdir_if_empty(shard_name(k));
            }
            let _ = self.all.rmdir_if_empty(&self.run_name);
        }
        errors
    }

    /// Deletes what interrupted runs left in the trash (this run's directory stays).
    pub fn empty_leftovers(&self) -> Deleted {
        empty_trash(&self.all, Some(&self.run_name))
    }

    /// Deletes everything in the trash, this run's directory included.
    pub fn finish(self) -> Deleted {
        empty_trash(&self.all, None)
    }
}

/// Deletes what interrupted runs left in `<root>/.regclean/trash` (all of it when
/// `keep` is `None`, else everything but the directory named `keep`, which is emptied).
/// Nothing on another mount than `all`'s is entered.
pub fn empty_trash(all: &DirFd, keep: Option<&str>) -> Deleted {
    let mut total = Deleted::default();
    let mut all = match all.reopen() {
        Ok(d) => d,
        Err(e) => {
            total.errors.push(e.to_string());
            return total;
        }
    };
    let runs = match all.entries() {
        Ok(e) => e,
        Err(e) => {
            total.errors.push(e.to_string());
            return total;
        }
    };
    for run in runs {
        let is_ours = keep.is_some_and(|k| run.name == k);
        if run.kind != Kind::Dir {
            if let Err(e) = all.unlink(&run.name) {
                total.errors.push(e.to_string());
            }
            total.files += 1;
            continue;
        }
        let mut rd = match all.sub_same_mount(&run.name) {
            Ok(d) => d,
            Err(e) => {
                total.errors.push(e.to_string());
                continue;
            }
        };
        let entries = match rd.entries() {
            Ok(e) => e,
            Err(e) => {
                total.errors.push(e.to_string());
                continue;
            }
        };
        // Summed as they finish: a run's trash can hold 100k entries (one per swept blob),
        // and a collected list of their counts would be one more allocation of that size.
        // Shard directories are emptied side by side, then removed; anything else (an older
        // run's flat layout) is an entry itself.
        let part = entries
            .par_iter()
            .map(|e| {
                if e.kind == Kind::Dir && is_shard(&e.name) {
                    let mut d = empty_entries(&rd, &e.name);
                    match rd.rmdir_if_empty(&e.name) {
                        Ok(true) => d.dirs += 1,
                        Ok(false) => {}
                        Err(x) => d.errors.push(x.to_string()),
                    }
                    d
                } else {
                    remove_entry(&rd, &e.name, e.kind, measure_of(&e.name))
                }
            })
            .reduce(Deleted::default, |mut a, b| {
                a.add(b);
                a
            });
        drop(entries);
        total.add(part);
        if !is_ours {
            match all.rmdir_if_empty(&run.name) {
                Ok(true) => total.dirs += 1,
                Ok(false) => {}
                Err(e) => total.errors.push(e.to_string()),
            }
        }
    }
    total
}

/// How many directories a run's trash spreads its entries over. Why: every rename into the
/// trash and every removal of a trash entry locks the parent directory; with one directory
/// for 100k entries (a native collection of the medium benchmark store) the threads deleting
/// the trash queue on that one lock, and the directory itself grows large. 64 parents let
/// them work side by side.
const SHARDS: usize = 64;

fn shard_name(k: usize) -> String {
    format!("s{k:02}")
}

/// Is `name` a shard directory of a run (`s00`…)?
fn is_shard(name: &OsStr) -> bool {
    let b = name.as_encoded_bytes();
    b.len() == 3 && b[0] == b's' && b[1].is_ascii_digit() && b[2].is_ascii_digit()
}

/// The file in a run's trash directory that records the run's pruning scope (repository
/// names, one per line), so that a rerun after a kill prunes where the killed run would have:
/// its pattern may no longer match there (the tags it removed are gone).
const SCOPE_FILE: &str = "prune-scope";

/// The pruning scopes recorded by interrupted runs whose trash is still there (read-only).
pub fn leftover_scopes(state: &DirFd) -> Vec<String> {
    let Ok(Some(mut all)) = state.sub_opt("trash") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for run in all.entries().unwrap_or_default() {
        if run.kind != Kind::Dir {
            continue;
        }
        let text = all
            .sub(&run.name)
            .and_then(|d| d.read_small(SCOPE_FILE, 64 << 20))
            .unwrap_or_default();
        out.extend(
            String::from_utf8_lossy(&text)
                .lines()
                .filter(|l| !l.is_empty())
                .map(str::to_string),
        );
    }
    out
}

/// Uploads are measured in bytes when deleted (they can be gigabytes); the rest is counted.
fn measure_of(name: &OsStr) -> Measure {
    if name.to_string_lossy().ends_with(".uploads") {
        Measure::Bytes
    } else {
        Measure::Count
    }
}

/// Deletes every entry of the shard directory `name` of `run` (not the shard itself).
fn empty_entries(run: &DirFd, name: &OsStr) -> Deleted {
    let mut shard = match run.sub_same_mount(name) {
        Ok(d) => d,
        Err(e) => {
            return Deleted {
                errors: vec![e.to_string()],
                ..Deleted::default()
            }
        }
    };
    let entries = match shard.entries() {
        Ok(e) => e,
        Err(e) => {
            return Deleted {
                errors: vec![e.to_string()],
                ..Deleted::default()
            }
        }
    };
    entries
        .par_iter()
        .map(|e| remove_entry(&shard, &e.name, e.kind, measure_of(&e.name)))
        .reduce(Deleted::default, |mut a, b| {
            a.add(b);
            a
        })
}

/// Counts what a trash holds from earlier (interrupted) runs, without deleting.
pub fn leftover_runs(state: &DirFd) -> Result<usize> {
    match state.sub_opt("trash")? {
        None => Ok(0),
        Some(mut t) => Ok(t.entries()?.len()),
    }
}

/// Removes the entry `name` of `parent`: a file or symlink is unlinked, a directory deleted
/// recursively. `kind` is what the listing said; it is rechecked by the no-follow open.
/// A directory on another mount than `parent`'s is neither entered nor removed: it stays,
/// with an error naming it (see [`DirFd::sub_same_mount`]; the open refuses the crossing, so
/// this costs no system call).
pub fn remove_entry(parent: &DirFd, name: &OsStr, kind: Kind, m: Measure) -> Deleted {
    let mut out = Deleted::default();
    if kind != Kind::Dir {
        unlink_counted(parent, name, kind, m, &mut out);
        return out;
    }
    let mut dir = match parent.sub_same_mount(name) {
        Ok(d) => d,
        Err(Error::Io { source, .. })
            if source.raw_os_error() == Some(nix::errno::Errno::ENOTDIR as i32)
                || source.raw_os_error() == Some(nix::errno::Errno::ELOOP as i32) =>
        {
            // Replaced by a file or a symlink since it was listed: unlink that, follow nothing.
            unlink_counted(parent, name, Kind::File, m, &mut out);
            return out;
        }
        Err(e) => {
            out.errors.push(e.to_string());
            return out;
        }
    };
    let entries = match dir.entries() {
        Ok(e) => e,
        Err(e) => {
            out.errors.push(e.to_string());
            return out;
        }
    };
    let (dirs, files): (Vec<_>, Vec<_>) = entries.into_iter().partition(|e| e.kind == Kind::Dir);
    for f in &files {
        unlink_counted(&dir, &f.name, f.kind, m, &mut out);
    }
    // Subdirectories in parallel: unlink is dominated by per-directory kernel work, so two
    // directories at once use both cores where one would wait.
    let sub: Vec<Deleted> = if dirs.len() > 1 {
        dirs.par_iter()
            .map(|d| remove_entry(&dir, &d.name, Kind::Dir, m))
            .collect()
    } else {
        dirs.iter()
            .map(|d| remove_entry(&dir, &d.name, Kind::Dir, m))
            .collect()
    };
    sub.into_iter().for_each(|s| out.add(s));
    drop(dir);
    match nix::unistd::unlinkat(parent.as_fd(), name, nix::unistd::UnlinkatFlags::RemoveDir) {
        Ok(()) => out.dirs += 1,
        Err(e) => out
            .errors
            .push(Error::io("removing directory", parent.child_path(name), errno(e)).to_string()),
    }
    out
}

fn unlink_counted(dir: &DirFd, name: &OsStr, kind: Kind, m: Measure, out: &mut Deleted) {
    if m == Measure::Bytes && kind == Kind::File {
        if let Ok(st) = dir.stat(name) {
            out.bytes += st.st_size as u64;
        }
    }
    match dir.unlink(name) {
        Ok(()) => out.files += 1,
        Err(e) => out.errors.push(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store root with `docker/registry/v2/repositories/{a,b}` and `.regclean`.
    fn store() -> (tempfile::TempDir, DirFd, DirFd) {
        let tmp = tempfile::tempdir().unwrap();
        let repos = tmp.path().join("docker/registry/v2/repositories");
        for d in ["a", "b"] {
            std::fs::create_dir_all(repos.join(d)).unwrap();
        }
        std::fs::create_dir(tmp.path().join(".regclean")).unwrap();
        let state = DirFd::open(&tmp.path().join(".regclean")).unwrap();
        let repos = DirFd::open(&repos).unwrap();
        (tmp, state, repos)
    }

    #[test]
    fn undo_puts_back_what_was_taken_before_any_commit() {
        let (tmp, state, repos) = store();
        let t = Trash::create(&state, &repos).unwrap();
        t.take(&repos, "a", "repo").unwrap();
        assert!(!tmp
            .path()
            .join("docker/registry/v2/repositories/a")
            .exists());
        assert_eq!(t.taken(), 1);
        let v2 = DirFd::open(&tmp.path().join("docker/registry/v2")).unwrap();
        assert!(t.undo(&v2).is_empty());
        assert!(tmp
            .path()
            .join("docker/registry/v2/repositories/a")
            .is_dir());
    }

    #[test]
    fn entries_taken_after_commit_are_counted_not_journaled() {
        let (tmp, state, repos) = store();
        let t = Trash::create(&state, &repos).unwrap();
        t.take(&repos, "a", "repo").unwrap();
        t.commit();
        t.take(&repos, "b", "blob").unwrap();
        assert_eq!(t.taken(), 2);
        match &*t.journal.lock().unwrap() {
            Journal::Committed(2) => {}
            other => panic!("journal after commit: {other:?}"),
        }
        let v2 = DirFd::open(&tmp.path().join("docker/registry/v2")).unwrap();
        assert_eq!(t.undo(&v2).len(), 1, "committed: nothing is put back");
        assert!(!tmp
            .path()
            .join("docker/registry/v2/repositories/a")
            .exists());
        assert!(!tmp
            .path()
            .join("docker/registry/v2/repositories/b")
            .exists());
    }
}
