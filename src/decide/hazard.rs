//! Store hazards: states in which the registry's garbage collector deletes live blobs, fails,
//! or aborts. Checked before every collection (and by the integrity check); each comes with
//! what to do about it.

use crate::digest::{Digest, Link};
use crate::fsx::DirFd;
use crate::manifest::{Db, Problem};
use crate::scan::{Inventory, OddKind};
use rayon::prelude::*;
use serde::Serialize;

/// The kinds of hazard; names are stable (`--json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HazardKind {
    /// A repository with revisions but no `_layers`: invisible to 2.8's GC, so its blobs are swept.
    RepoWithoutLayers,
    /// An `_`-prefixed file under `repositories/`: 2.8's walk skips the later siblings.
    UnderscoreFile,
    /// A `.`-prefixed entry: GC aborts with "failed to parse repo name".
    DotEntry,
    /// A directory name the registry cannot parse as a repository name: GC aborts.
    InvalidName,
    /// An empty or malformed link file: the registry fails to read it.
    MalformedLink,
    /// A symlink inside the store.
    Symlink,
    /// An unreadable entry.
    Unreadable,
    /// A tag points at a manifest whose blob is missing: GC skips it and sweeps its layers.
    MissingManifestBlob,
    /// A manifest the registry cannot parse: GC fails on it.
    UnparsableManifest,
    /// A revision link whose content is not its directory's digest.
    LinkMismatch,
    /// A mount point inside the store: the registry's sweep (`RemoveAll`) would cross it and
    /// delete outside files.
    MountPoint,
    /// A FIFO, socket or device in the store: the registry's GC blocks reading a FIFO.
    SpecialFile,
    /// A blob directory that is not a well-formed blob: no `data`, a `data` that is a
    /// directory or a symlink, a name that is not a digest. Never swept blindly.
    BadBlob,
}

/// One hazard.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Hazard {
    /// What it is.
    pub kind: HazardKind,
    /// Where (path relative to `docker/registry/v2`, or `repo:tag`).
    pub at: String,
    /// What it means and what to do.
    pub detail: String,
}

/// Hazards in `inv` (already reduced to what will remain after removal and pruning).
pub fn check(inv: &Inventory, db: &Db) -> Vec<Hazard> {
    let mut out = Vec::new();
    for o in &inv.oddities {
        let kind = match o.kind {
            OddKind::UnderscoreFile => HazardKind::UnderscoreFile,
            OddKind::DotEntry => HazardKind::DotEntry,
            OddKind::InvalidName => HazardKind::InvalidName,
            OddKind::MalformedLink => HazardKind::MalformedLink,
            OddKind::Symlink => HazardKind::Symlink,
            OddKind::Unreadable => HazardKind::Unreadable,
            OddKind::MountPoint => HazardKind::MountPoint,
            OddKind::SpecialFile => HazardKind::SpecialFile,
            OddKind::MissingLink | OddKind::UnexpectedEntry => continue,
        };
        let detail = match kind {
            // Their details already say what to do.
            HazardKind::MountPoint | HazardKind::SpecialFile => o.detail.clone(),
            _ => format!("{}; remove or repair it", o.detail),
        };
        out.push(Hazard {
            kind,
            at: o.path.clone(),
            detail,
        });
    }
    for r in &inv.repos {
        if !r.has_layers && !r.revisions.is_empty() {
            out.push(Hazard {
                kind: HazardKind::RepoWithoutLayers,
                at: format!("repositories/{}", r.name),
                detail: "has manifests but no _layers: registry 2.8's GC does not see it and would sweep its blobs; create the directory _layers or remove the repository".into(),
            });
        }
        for t in &r.tags {
            if let Link::Ok(d) = t.current {
                if matches!(db.problem(&d), Some(Problem::MissingBlob)) {
                    out.push(Hazard {
                        kind: HazardKind::MissingManifestBlob,
                        at: format!("{}:{}", r.name, t.name),
                        detail: format!("points at {d} whose blob is missing: the tag is already broken and GC would sweep its layers; re-push it or remove the tag"),
                    });
                }
            }
        }
        for d in &r.revisions {
            if let Some(Problem::Unparsable(why)) = db.problem(d) {
                out.push(Hazard {
                    kind: HazardKind::UnparsableManifest,
                    at: format!("{}@{d}", r.name),
                    detail: format!("the registry's GC fails on it ({why}); remove the revision or repair the blob"),
                });
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Reads every revision link of `inv` and reports those whose content is not the digest of
/// their directory (the registry marks the content, regclean predicts by the name).
pub fn check_revision_links(repos_dir: &DirFd, inv: &Inventory) -> Vec<Hazard> {
    inv.repos
        .par_iter()
        .flat_map_iter(|r| {
            let mut out = Vec::new();
            let revs = crate::apply::open_repo(repos_dir, &r.name).and_then(|d| d.sub("_manifests")?.sub("revisions")?.sub("sha256"));
            let Ok(revs) = revs else { return out };
            for d in &r.revisions {
                let hex = d.hex();
                // `hex` was listed as a directory by the scan; the link itself is not followed.
                let content = revs.read_small(format!("{hex}/link"), crate::digest::LINK_LEN);
                let ok = matches!(content.as_deref().map(Link::from_content), Ok(Link::Ok(c)) if c == *d);
                if !ok {
                    out.push(Hazard {
                        kind: HazardKind::LinkMismatch,
                        at: format!("repositories/{}/_manifests/revisions/sha256/{hex}/link", r.name),
                        detail: "the link does not hold its directory's digest; remove or rewrite it".into(),
                    });
                }
            }
            out
        })
        .collect()
}

/// Hazards of the blob store: special files ([`special_blobs`]) and malformed blob
/// directories ([`crate::blobs::Blobs::malformed`]).
pub fn blob_store(blobs: &crate::blobs::Blobs) -> Vec<Hazard> {
    let mut out = special_blobs(blobs);
    out.extend(blobs.malformed.iter().map(|o| Hazard {
        kind: HazardKind::BadBlob,
        at: o.path.clone(),
        detail: o.detail.clone(),
    }));
    out
}

/// Blobs whose `data` is a FIFO, socket or device (see [`crate::blobs::Blobs::special`]):
/// collection is refused until they are removed.
pub fn special_blobs(blobs: &crate::blobs::Blobs) -> Vec<Hazard> {
    blobs
        .special
        .iter()
        .map(|o| Hazard {
            kind: HazardKind::SpecialFile,
            at: o.path.clone(),
            detail: o.detail.clone(),
        })
        .collect()
}

/// Drops oddities that lie inside what `removals` take away (they go with it).
pub fn without_removed(inv: &mut Inventory, removals: &[crate::plan::Removal]) {
    let prefixes: Vec<String> = removals
        .iter()
        .flat_map(|r| match &r.what {
            crate::plan::What::Repository { .. } => ["_manifests", "_layers", "_uploads"]
                .iter()
                .map(|p| format!("repositories/{}/{p}", r.repo))
                .collect::<Vec<_>>(),
            crate::plan::What::Tag { name, .. } => {
                vec![format!("repositories/{}/_manifests/tags/{name}", r.repo)]
            }
        })
        .collect();
    inv.oddities.retain(|o| {
        !prefixes
            .iter()
            .any(|p| o.path == *p || o.path.starts_with(&format!("{p}/")))
    });
}

/// Digest helper for callers that need the set of tag targets.
pub fn tag_targets(inv: &Inventory) -> impl Iterator<Item = Digest> + '_ {
    inv.repos
        .iter()
        .flat_map(|r| r.tags.iter().filter_map(|t| t.current.digest()))
}
