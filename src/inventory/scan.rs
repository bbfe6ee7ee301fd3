//! The inventory: a parallel, read-only walk of `repositories/`.
//!
//! It visits every directory the registry would (as `find` does) and reads only what the
//! later stages need: each tag's `current/link` (content and mtime = push time), the names of
//! revisions, layer links and tag history, and the size of every revision and layer link (a
//! cheap check that each is 71 bytes). Manifest blobs are read later, and only those that
//! reachability needs.
//!
//! Nothing odd stops the walk: a symlink, an `_`-prefixed file, a dot directory, an unreadable
//! directory each become an [`Oddity`] (with its path) and the walk goes on, as ripgrep records
//! per-entry failures. Later stages decide what each oddity means (the GC preflight refuses on
//! several of them; a removal does not care).

use crate::digest::{Digest, Link, LINK_LEN};
use crate::error::{Error, Result};
use crate::fsx::{mtime, DirFd, Entry, Kind};
use crate::names;
use rayon::prelude::*;
use serde::Serialize;
use std::sync::Mutex;
use std::time::SystemTime;

/// Everything found under `repositories/`.
#[derive(Debug, Default, Clone)]
pub struct Inventory {
    /// Repositories sorted by name. A directory is a repository when it holds `_manifests`,
    /// `_layers` or `_uploads` (2.8 itself needs `_layers`, v3 `_manifests`; regclean lists
    /// all three so that a half-removed repository is still visible to it).
    pub repos: Vec<Repo>,
    /// Everything that is not part of a well-formed store, sorted by path.
    pub oddities: Vec<Oddity>,
    /// Empty directories under `repositories/` (relative to it), sorted: what a removal
    /// killed before its commit leaves of a repository (its `_manifests`, `_layers` and
    /// `_uploads` went to the trash, the emptied directory is removed only at commit). The
    /// rerun removes them, so that it ends in the same store as an uninterrupted run.
    pub empty_dirs: Vec<String>,
}

/// One repository.
#[derive(Debug, Default, Clone)]
pub struct Repo {
    /// The full name, e.g. `team/app`.
    pub name: String,
    /// Has `_manifests/`.
    pub has_manifests: bool,
    /// Has `_manifests/tags/` (2.8's `-m` aborts on a repository with revisions but no tags dir).
    pub has_tags_dir: bool,
    /// Has `_layers/` (2.8 only sees repositories that do).
    pub has_layers: bool,
    /// Has `_uploads/`.
    pub has_uploads: bool,
    /// Tags sorted by name.
    pub tags: Vec<Tag>,
    /// Manifests with a revision link (`_manifests/revisions/sha256/<hex>/link`), sorted.
    pub revisions: Vec<Digest>,
    /// Blobs with a layer link (`_layers/sha256/<hex>/link`), sorted.
    pub layers: Vec<Digest>,
    /// Entries under `_uploads/` (uploads in progress or abandoned).
    pub uploads: usize,
}

impl Repo {
    /// Does `revisions` hold `d`? (`revisions` is sorted.)
    pub fn has_revision(&self, d: &Digest) -> bool {
        self.revisions.binary_search(d).is_ok()
    }

    /// Does `layers` hold `d`? (`layers` is sorted.)
    pub fn has_layer(&self, d: &Digest) -> bool {
        self.layers.binary_search(d).is_ok()
    }

    /// The tag named `name`.
    pub fn tag(&self, name: &str) -> Option<&Tag> {
        self.tags
            .binary_search_by(|t| t.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.tags[i])
    }
}

/// One tag.
#[derive(Debug, Clone)]
pub struct Tag {
    /// The tag name.
    pub name: String,
    /// What `current/link` holds.
    pub current: Link,
    /// The mtime of `current/link`: when the tag was last pushed. `None` if the link is missing.
    pub pushed: Option<SystemTime>,
    /// Digests under `index/sha256/` (the manifests this tag has pointed at), sorted.
    pub history: Vec<Digest>,
}

/// What kind of oddity; the names are stable (they appear in `--json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OddKind {
    /// A symbolic link inside the store. Never followed.
    Symlink,
    /// A file whose name starts with `_` under `repositories/`: 2.8's walk stops at it and
    /// skips the directory's later siblings, whose blobs GC then sweeps.
    UnderscoreFile,
    /// An entry whose name starts with `.`: the registry walks it and GC aborts on it.
    DotEntry,
    /// A directory whose name is not a valid repository name component.
    InvalidName,
    /// A file or special file where the layout has none.
    UnexpectedEntry,
    /// A link file that is empty, has the wrong size or the wrong content.
    MalformedLink,
    /// A tag without `current/link`, or a revision directory without `link`.
    MissingLink,
    /// An entry that could not be read.
    Unreadable,
    /// A mount point inside the store (often a bind mount of an outside directory on the same
    /// file system): never crossed; removing what holds it, or collecting, would delete
    /// outside files.
    MountPoint,
    /// A FIFO, socket or device: never opened (reading a FIFO blocks forever).
    SpecialFile,
}

/// Something in the store that is not part of a well-formed layout.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Oddity {
    /// What it is.
    pub kind: OddKind,
    /// The path relative to `docker/registry/v2`.
    pub path: String,
    /// A short explanation.
    pub detail: String,
}

/// Collects results from the parallel walk.
#[derive(Default)]
struct Sink {
    repos: Mutex<Vec<Repo>>,
    odd: Mutex<Vec<Oddity>>,
    empty: Mutex<Vec<String>>,
}

impl Sink {
    fn odd(&self, kind: OddKind, path: String, detail: impl Into<String>) {
        let o = Oddity {
            kind,
            path,
            detail: detail.into(),
        };
        self.odd.lock().unwrap().push(o);
    }

    fn err(&self, path: String, e: Error) {
        self.odd(OddKind::Unreadable, path, e.to_string());
    }
}

/// Scans `repositories/` under the store's `docker/registry/v2` directory `v2`, and reports
/// every mount point below `v2` (`repositories/`, `blobs/`) from one read of the mount table.
/// A store without `repositories/` (nothing pushed yet) is an empty inventory.
pub fn scan(v2: &DirFd) -> Result<Inventory> {
    let sink = Sink::default();
    mount_points(v2, &sink);
    if let Some(repos) = v2.sub_opt("repositories")? {
        rayon::scope(|s| walk(s, repos, String::new(), &sink));
    }
    let mut repos = sink.repos.into_inner().unwrap();
    repos.sort_by(|a, b| a.name.cmp(&b.name));
    let mut oddities = sink.odd.into_inner().unwrap();
    oddities.sort();
    let mut empty_dirs = sink.empty.into_inner().unwrap();
    empty_dirs.sort();
    Ok(Inventory {
        repos,
        oddities,
        empty_dirs,
    })
}

/// Reports the mount points below `v2`; an unreadable mount table is itself an oddity (mount
/// points cannot be ruled out, so collection is refused).
fn mount_points(v2: &DirFd, sink: &Sink) {
    match v2.mount_points_below() {
        Ok(m) => m.into_iter().for_each(|p| {
            sink.odd(
                OddKind::MountPoint,
                p,
                "a mount point inside the store (never crossed): unmount it",
            )
        }),
        Err(e) => sink.odd(
            OddKind::Unreadable,
            "/proc/self/mountinfo".into(),
            format!("{e}: mount points inside the store cannot be ruled out"),
        ),
    }
}

/// Reports a FIFO, socket or device `name` of `dir` (listed as [`Kind::Other`]) without
/// opening it; the `fstatat` (rare) only names what it is.
fn special(dir: &DirFd, name: &std::ffi::OsStr, path: String, sink: &Sink) {
    let what = dir
        .stat(name)
        .map(|st| crate::fsx::special_name(st.st_mode))
        .unwrap_or("fifo, socket or device");
    sink.odd(
        OddKind::SpecialFile,
        path,
        format!("not a regular file ({what}): never opened; remove it"),
    );
}

fn rel(name: &str, rest: &str) -> String {
    if name.is_empty() {
        format!("repositories/{rest}")
    } else {
        format!("repositories/{name}/{rest}")
    }
}

/// Walks the directory of repository (or namespace) `name` ("" for `repositories/` itself).
fn walk<'s>(s: &rayon::Scope<'s>, mut dir: DirFd, name: String, sink: &'s Sink) {
    let entries = match dir.entries() {
        Ok(e) => e,
        Err(e) => return sink.err(rel(&name, ""), e),
    };
    let mut repo = Repo {
        name: name.clone(),
        ..Repo::default()
    };
    let mut is_repo = false;
    if entries.is_empty() && !name.is_empty() {
        sink.empty.lock().unwrap().push(name.clone());
    }
    for ent in entries {
        let Some(n) = ent.name_str().map(str::to_owned) else {
            sink.odd(
                OddKind::InvalidName,
                rel(&name, &ent.name.to_string_lossy()),
                "name is not UTF-8",
            );
            continue;
        };
        let path = rel(&name, &n);
        match (ent.kind, n.as_str()) {
            (Kind::Symlink, _) => sink.odd(OddKind::Symlink, path, "symbolic link (never followed)"),
            (Kind::Other, _) => special(&dir, &ent.name, path, sink),
            (Kind::Dir, "_manifests") => {
                is_repo = true;
                repo.has_manifests = true;
                match dir.sub(&n) {
                    Ok(m) => scan_manifests(m, &mut repo, sink),
                    Err(e) => sink.err(path, e),
                }
            }
            (Kind::Dir, "_layers") => {
                is_repo = true;
                repo.has_layers = true;
                repo.layers = scan_links(&dir, "_layers", &path, sink);
            }
            (Kind::Dir, "_uploads") => {
                is_repo = true;
                repo.has_uploads = true;
                match dir.sub(&n).and_then(|mut u| u.entries()) {
                    Ok(e) => repo.uploads = e.len(),
                    Err(e) => sink.err(path, e),
                }
            }
            (Kind::File, _) if n.starts_with('_') => sink.odd(
                OddKind::UnderscoreFile,
                path,
                "a '_' file here stops registry 2.8's walk: later sibling repositories become invisible to GC",
            ),
            (_, _) if n.starts_with('.') => sink.odd(
                OddKind::DotEntry,
                path,
                "the registry walks '.' entries and its GC aborts on them",
            ),
            (Kind::Dir, _) if n.starts_with('_') => {
                sink.odd(OddKind::UnexpectedEntry, path, "unknown '_' directory (the registry skips it)")
            }
            (Kind::Dir, _) => {
                let child = if name.is_empty() { n.clone() } else { format!("{name}/{n}") };
                // The top level may be a registry domain (`example.com`); names::check_repo
                // knows the grammar, so ask it about the whole name.
                let valid = names::is_path_component(&n)
                    || (name.is_empty() && names::check_repo(&format!("{n}/x")).is_ok());
                if !valid {
                    sink.odd(OddKind::InvalidName, path, "not a valid repository name component");
                    continue;
                }
                match dir.sub(&n) {
                    Ok(d) => s.spawn(move |s| walk(s, d, child, sink)),
                    Err(e) => sink.err(path, e),
                }
            }
            (_, _) => sink.odd(OddKind::UnexpectedEntry, path, "unexpected file"),
        }
    }
    if is_repo {
        sink.repos.lock().unwrap().push(repo);
    }
}

/// Lists `<sub>/sha256/<hex>/link` below `dir` (revisions and layers share this shape) and
/// returns the digests whose link is a 71-byte regular file, sorted. One `fstatat` per entry.
/// `label` is the path of `dir/sub` relative to `v2`, for messages.
fn scan_links(dir: &DirFd, sub: &str, label: &str, sink: &Sink) -> Vec<Digest> {
    let base = format!("{label}/sha256");
    let mut sha = match dir.sub(sub).and_then(|d| d.sub_opt("sha256")) {
        Ok(Some(d)) => d,
        Ok(None) => return Vec::new(),
        Err(e) => {
            sink.err(base, e);
            return Vec::new();
        }
    };
    let entries = match sha.entries() {
        Ok(e) => e,
        Err(e) => {
            sink.err(base, e);
            return Vec::new();
        }
    };
    let check = |ent: &Entry| -> Option<Digest> {
        let n = ent.name_str().unwrap_or("");
        let path = || format!("{base}/{}", ent.name.to_string_lossy());
        match ent.kind {
            Kind::Dir => {}
            Kind::Symlink => {
                sink.odd(OddKind::Symlink, path(), "symbolic link (never followed)");
                return None;
            }
            Kind::Other => {
                special(&sha, &ent.name, path(), sink);
                return None;
            }
            Kind::File => {
                sink.odd(
                    OddKind::UnexpectedEntry,
                    path(),
                    "expected a digest directory",
                );
                return None;
            }
        }
        let Some(d) = Digest::from_hex(n.as_bytes()) else {
            sink.odd(OddKind::InvalidName, path(), "not a sha256 hex digest");
            return None;
        };
        // `n` was listed as a directory; the `link` itself is never followed if it is a symlink.
        match sha.stat(format!("{n}/link")) {
            Ok(st) => {
                let kind = crate::fsx::kind_of_mode(st.st_mode);
                if kind == Kind::Symlink {
                    sink.odd(
                        OddKind::Symlink,
                        path() + "/link",
                        "symbolic link (never followed)",
                    );
                    None
                } else if kind == Kind::Other {
                    let what = crate::fsx::special_name(st.st_mode);
                    sink.odd(
                        OddKind::SpecialFile,
                        path() + "/link",
                        format!("not a regular file ({what}): never opened; remove it"),
                    );
                    None
                } else if kind != Kind::File || st.st_size as usize != LINK_LEN {
                    let what = if st.st_size == 0 {
                        "empty link file"
                    } else {
                        "link file is not 71 bytes"
                    };
                    sink.odd(OddKind::MalformedLink, path() + "/link", what);
                    None
                } else {
                    Some(d)
                }
            }
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                sink.odd(
                    OddKind::MissingLink,
                    path(),
                    "digest directory without a link file",
                );
                None
            }
            Err(e) => {
                sink.err(path(), e);
                None
            }
        }
    };
    let mut out: Vec<Digest> = if entries.len() > 256 {
        entries.par_iter().filter_map(check).collect()
    } else {
        entries.iter().filter_map(check).collect()
    };
    out.sort_unstable();
    out
}

fn scan_manifests(mut m: DirFd, repo: &mut Repo, sink: &Sink) {
    let name = repo.name.clone();
    let entries = match m.entries() {
        Ok(e) => e,
        Err(e) => return sink.err(rel(&name, "_manifests"), e),
    };
    for ent in entries {
        let n = ent.name.to_string_lossy().into_owned();
        let path = rel(&name, &format!("_manifests/{n}"));
        match (ent.kind, n.as_str()) {
            (Kind::Dir, "revisions") => repo.revisions = scan_links(&m, "revisions", &path, sink),
            (Kind::Dir, "tags") => {
                repo.has_tags_dir = true;
                match m.sub("tags") {
                    Ok(t) => repo.tags = scan_tags(t, &name, sink),
                    Err(e) => sink.err(path, e),
                }
            }
            (Kind::Symlink, _) => {
                sink.odd(OddKind::Symlink, path, "symbolic link (never followed)")
            }
            (Kind::Other, _) => special(&m, &ent.name, path, sink),
            _ => sink.odd(
                OddKind::UnexpectedEntry,
                path,
                "unexpected entry in _manifests",
            ),
        }
    }
}

fn scan_tags(mut tags: DirFd, name: &str, sink: &Sink) -> Vec<Tag> {
    let entries = match tags.entries() {
        Ok(e) => e,
        Err(e) => {
            sink.err(rel(name, "_manifests/tags"), e);
            return Vec::new();
        }
    };
    let read = |ent: &Entry| -> Option<Tag> {
        let n = ent.name.to_string_lossy().into_owned();
        let path = rel(name, &format!("_manifests/tags/{n}"));
        match ent.kind {
            Kind::Dir => {}
            Kind::Symlink => {
                sink.odd(OddKind::Symlink, path, "symbolic link (never followed)");
                return None;
            }
            Kind::Other => {
                special(&tags, &ent.name, path, sink);
                return None;
            }
            Kind::File => {
                sink.odd(OddKind::UnexpectedEntry, path, "expected a tag directory");
                return None;
            }
        }
        if names::check_tag(&n).is_err() {
            sink.odd(OddKind::InvalidName, path, "not a valid tag name");
            return None;
        }
        match read_tag(&tags, &n, &path, sink) {
            Ok(t) => Some(t),
            Err(e) => {
                sink.err(path, e);
                None
            }
        }
    };
    let mut out: Vec<Tag> = if entries.len() > 64 {
        entries.par_iter().filter_map(read).collect()
    } else {
        entries.iter().filter_map(read).collect()
    };
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn read_tag(tags: &DirFd, n: &str, path: &str, sink: &Sink) -> Result<Tag> {
    let mut tag = Tag {
        name: n.to_string(),
        current: Link::Missing,
        pushed: None,
        history: Vec::new(),
    };
    let mut dir = tags.sub(n)?;
    for ent in dir.entries()? {
        let en = ent.name.to_string_lossy().into_owned();
        let epath = format!("{path}/{en}");
        match (ent.kind, en.as_str()) {
            (Kind::Dir, "current") => {
                let cur = dir.sub("current")?;
                read_current(&cur, &mut tag, &epath, sink)?;
            }
            (Kind::Dir, "index") => {
                tag.history = scan_links(&dir, "index", &epath, sink);
            }
            (Kind::Symlink, _) => {
                sink.odd(OddKind::Symlink, epath, "symbolic link (never followed)")
            }
            (Kind::Other, _) => special(&dir, &ent.name, epath, sink),
            _ => sink.odd(OddKind::UnexpectedEntry, epath, "unexpected entry in a tag"),
        }
    }
    if tag.current == Link::Missing {
        sink.odd(
            OddKind::MissingLink,
            path.to_string(),
            "tag without current/link",
        );
    }
    Ok(tag)
}

/// Reads `current/link` into `tag`: one non-blocking, no-follow open whose `fstat` gives the
/// push time (it replaces the `fstatat` a separate check would cost). A symlink (`ELOOP`) or
/// a FIFO, socket or device is reported and never read; the tag's link is then malformed.
fn read_current(cur: &DirFd, tag: &mut Tag, epath: &str, sink: &Sink) -> Result<()> {
    let link = format!("{epath}/link");
    match cur.read_small_stat("link", LINK_LEN) {
        Ok((bytes, st)) => {
            tag.pushed = Some(mtime(&st));
            tag.current = Link::from_content(&bytes);
            if tag.current.digest().is_none() {
                sink.odd(
                    OddKind::MalformedLink,
                    link,
                    "tag link is empty or malformed",
                );
            }
        }
        Err(e) if crate::fsx::not_regular(&e).is_some() => {
            let what = crate::fsx::not_regular(&e).unwrap_or_default();
            sink.odd(
                OddKind::SpecialFile,
                link,
                format!("not a regular file ({what}): never read; remove it"),
            );
            tag.current = Link::Malformed;
        }
        Err(Error::Io { source, .. })
            if source.raw_os_error() == Some(nix::errno::Errno::ELOOP as i32) =>
        {
            sink.odd(OddKind::Symlink, link, "symbolic link (never followed)");
            tag.current = Link::Malformed;
        }
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(())
}
