//! Carries out a plan's removals through the trash (see [`crate::trash`] for why a rename).
//!
//! Order within a repository removal: `_manifests` first (its tags vanish at once: nothing can
//! be pulled any more), then `_uploads`, then `_layers` (2.8's marker). Interrupted between
//! these steps, the repository has `_layers` but no `_manifests`: the registry's GC skips it
//! cleanly and the next `regclean REPO` finishes the job. The reverse order would leave
//! `_manifests` without `_layers`: a repository invisible to 2.8's GC whose blobs get swept.
//! The three are renamed one by one — never the repository directory itself — because a child
//! repository (`team/app/api` under `team/app`) may be created between a check and a rename;
//! the directory goes afterwards ([`remove_emptied`], once the run can no longer roll back)
//! only through `rmdir`, which the kernel refuses when not empty.

use crate::error::{Error, Result};
use crate::fsx::DirFd;
use crate::plan::{Removal, What};
use crate::trash::Trash;

/// What happened to one removal.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    /// The planned removal.
    #[serde(flatten)]
    pub removal: Removal,
    /// `None` when done; the error otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The parts of a repository that a repository removal takes, in this order.
pub const REPO_PARTS: [&str; 3] = ["_manifests", "_uploads", "_layers"];

/// Whether a repository removal takes `_layers` too.
///
/// Why not always: a serving registry keeps a per-repository blob descriptor cache
/// (`storage.cache.blobdescriptor: inmemory`, the `registry:2` default). If `_layers` goes
/// while it serves, a re-push of the same image finds the layers in that cache, skips the
/// uploads, and no layer link is ever re-created: the push "succeeds", and after the next
/// restart the image no longer pulls. So next to a writable registry `_layers` stays (the
/// repository keeps no tags and no manifests; 2.8 still lists it in its catalog) until the
/// next offline collection removes the layer links of repositories without manifests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layers {
    /// Take `_layers` with the rest (no writable registry serves the store).
    Remove,
    /// Leave `_layers` for the next offline collection (a writable registry may serve).
    Keep,
}

/// Opens `repositories/<name>` one component at a time, never following a symlink.
pub fn open_repo(repos: &DirFd, name: &str) -> Result<DirFd> {
    let mut parts = name.split('/');
    let first = parts.next().unwrap_or_default();
    let mut d = repos.sub(first)?;
    for p in parts {
        d = d.sub(p)?;
    }
    Ok(d)
}

/// Carries out every removal (in plan order); each failure is recorded and the rest go on.
pub fn apply(repos: &DirFd, trash: &Trash, removals: &[Removal], layers: Layers) -> Vec<Outcome> {
    let mounts = mounts_in(repos);
    removals
        .iter()
        .map(|r| Outcome {
            removal: r.clone(),
            error: no_mount_inside(&mounts, r)
                .and_then(|()| apply_one(repos, trash, r, layers))
                .err()
                .map(|e| e.to_string()),
        })
        .collect()
}

/// The mount points under `repositories/` (relative to it), read once per run. Unreadable
/// (no `/proc`): none known; the trash deletion still never crosses a mount.
fn mounts_in(repos: &DirFd) -> Vec<String> {
    repos.mount_points_below().unwrap_or_else(|e| {
        tracing::warn!("cannot check for mount points inside the store: {e}");
        Vec::new()
    })
}

/// Refuses a removal whose directories contain a mount point: the rename would carry the
/// mount into the trash (a bind mount of an outside directory on the same file system looks
/// like any directory), so the removal is not carried out at all and the mount stays.
fn no_mount_inside(mounts: &[String], r: &Removal) -> Result<()> {
    let (label, dirs): (String, Vec<String>) = match &r.what {
        What::Tag { name, .. } => (
            format!("tag {}:{name}", r.repo),
            vec![format!("{}/_manifests/tags/{name}", r.repo)],
        ),
        What::Repository { .. } => (
            format!("repository {}", r.repo),
            REPO_PARTS
                .iter()
                .map(|p| format!("{}/{p}", r.repo))
                .collect(),
        ),
    };
    let inside = mounts.iter().find(|m| {
        dirs.iter().any(|d| {
            *m == d
                || m.strip_prefix(d.as_str())
                    .is_some_and(|x| x.starts_with('/'))
        })
    });
    match inside {
        Some(m) => Err(Error::Failed(format!(
            "not removing {label}: repositories/{m} inside it is a mount point (regclean never crosses a mount point: unmount it, then run again)"
        ))),
        None => Ok(()),
    }
}

fn apply_one(repos: &DirFd, trash: &Trash, r: &Removal, layers: Layers) -> Result<()> {
    let repo = open_repo(repos, &r.repo)?;
    match &r.what {
        What::Tag { name, .. } => {
            let tags = repo.sub("_manifests")?.sub("tags")?;
            trash.take(&tags, name, "tag")?;
            tracing::info!("removed tag {}:{name}", r.repo);
        }
        What::Repository { .. } => {
            for part in REPO_PARTS {
                if part == "_layers" && layers == Layers::Keep {
                    tracing::info!(
                        "left {}/_layers for the next offline collection (a writable registry serves this store)",
                        r.repo
                    );
                    continue;
                }
                match trash.take(&repo, part, &part[1..]) {
                    Ok(()) => {}
                    Err(Error::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            tracing::info!("removed repository {}", r.repo);
        }
    }
    Ok(())
}

/// Removes the directories of `names` (repositories whose parts went to the trash) and then
/// their parents while they are empty. Called only once the run is committed (no rollback can
/// follow): a rollback then finds every directory where it was, with its owner and mode.
/// Returns the failures.
pub fn remove_emptied<'a>(repos: &DirFd, names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    names
        .into_iter()
        .filter_map(|n| remove_empty_dirs(repos, n).err().map(|e| e.to_string()))
        .collect()
}

/// Removes `repositories/<name>` and then its parents while they are empty. `rmdir` is atomic
/// and refuses a non-empty directory, so a nested repository is never at risk.
fn remove_empty_dirs(repos: &DirFd, name: &str) -> Result<()> {
    let mut name = name;
    loop {
        let (parent, last) = match name.rsplit_once('/') {
            Some((p, l)) => (Some(p), l),
            None => (None, name),
        };
        let removed = match parent {
            Some(p) => open_repo(repos, p)?.rmdir_if_empty(last)?,
            None => repos.rmdir_if_empty(last)?,
        };
        match (removed, parent) {
            (true, Some(p)) => name = p,
            _ => return Ok(()),
        }
    }
}
