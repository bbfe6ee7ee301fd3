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
    run_name: String,
    seq: AtomicU64,
    /// The path of `repositories/` (every taken entry lies below it; see [`Trash::undo`]).
    base: PathBuf,
    /// What was taken, in order: (parent relative to `base`, name, trash entry name).
    journal: Mutex<Vec<(PathBuf, OsString, String)>>,
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
        Ok(Trash {
            all,
            run,
            run_name,
            seq: AtomicU64::new(0),
            base: same_fs_as.path().to_path_buf(),
            journal: Mutex::new(Vec::new()),
        })
    }

    /// Moves `name` out of `dir` into the trash, atomically. `label` ends the trash entry's
    /// name (`uploads` entries are measured in bytes when deleted). `dir` must lie below
    /// `repositories/` (the directory given to [`Trash::create`]), so that [`Trash::undo`] can
    /// put the entry back.
    pub fn take(&self, dir: &DirFd, name: impl AsRef<OsStr>, label: &str) -> Result<()> {
        let name = name.as_ref();
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let entry = format!("{n}.{label}");
        dir.rename_to(name, &self.run, &entry)?;
        let rel = dir.path().strip_prefix(&self.base).unwrap_or(Path::new(""));
        self.journal
            .lock()
            .expect("journal")
            .push((rel.to_path_buf(), name.to_os_string(), entry));
        Ok(())
    }

    /// How many entries this run has taken.
    pub fn taken(&self) -> usize {
        self.journal.lock().expect("journal").len()
    }

    /// Puts everything this run took back where it was, newest first, and removes the run's
    /// trash directory. Why: a refusal that comes after removal (the registry's dry run lists a
    /// blob regclean considers reachable) must still mean "nothing was changed" (exit 3).
    /// Each entry goes back by one `renameat2(RENAME_NOREPLACE)`, so a name re-created
    /// meanwhile (a concurrent push of the same tag) is never overwritten: that entry stays in
    /// the trash and is reported. No directory is re-created: emptied repository directories
    /// are removed only once a run is committed, so every parent is still there, with its
    /// owner and mode. `repos` is the handle on `repositories/`. Returns what could not be put
    /// back.
    pub fn undo(self, repos: &DirFd) -> Vec<String> {
        let mut errors = Vec::new();
        let journal = std::mem::take(&mut *self.journal.lock().expect("journal"));
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
        let parts: Vec<Deleted> = entries
            .par_iter()
            .map(|e| {
                let m = if e.name.to_string_lossy().ends_with(".uploads") {
                    Measure::Bytes
                } else {
                    Measure::Count
                };
                remove_entry(&rd, &e.name, e.kind, m)
            })
            .collect();
        parts.into_iter().for_each(|p| total.add(p));
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
