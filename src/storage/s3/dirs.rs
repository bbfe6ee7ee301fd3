//! Directories, on object stores that have them.
//!
//! AWS S3 has none: a key is a name. Stores built on a filesystem or a filer (SeaweedFS, for
//! one) keep a directory after its last object goes, and list it: as a common prefix of its
//! parent, and as an object named `dir/` when the directory itself is listed with a
//! delimiter. Registry 2.x reads such a directory wrong in two places:
//!
//! - it lists a removed tag in `tags/list` and a removed repository in the catalog, because
//!   it lists those by directory;
//! - its upload purger (started at a random minute of each registry start, then every 24 h)
//!   walks `repositories/` and indexes the first byte of each name it meets: the `dir/`
//!   object of an empty directory has an empty name, and the registry **panics**
//!   (`getOutstandingUploads`, index out of range; distribution/distribution#4590, #4713).
//!   The registry leaves such directories itself (`_uploads/<id>/hashstates/sha256/` after
//!   every push, on SeaweedFS), and so would every removal that leaves a repository's
//!   directory empty.
//!
//! So regclean deletes the directories its removals empty ([`emptied`]), and, when the
//! registries are stopped, every empty directory the purger would walk into ([`hollow`]).
//! Deleting a directory key is safe where directories are real, because a directory that
//! holds anything is not deleted (SeaweedFS answers "deleted" and keeps it and all it holds),
//! and it is a no-op on stores without directories (a missing key; `object_store` names
//! `dir/` as `dir`, and the registry writes no object by a directory's name). Directories
//! that only take room and that the registry does not list by directory (an emptied
//! revision, layer link or blob directory) are left to the store: on a store without
//! directories each such delete would be a wasted key (a delete marker in a versioned bucket).

use super::bucket::Bucket;
use super::layout::V2;
use crate::error::Result;
use std::collections::{BTreeMap, BTreeSet};

/// Directories grouped by depth, deepest first: each group is deleted before the next, so a
/// parent is deleted after its children are gone.
pub type Levels = Vec<Vec<String>>;

fn by_depth(dirs: impl IntoIterator<Item = String>) -> Levels {
    let mut m: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
    for d in dirs {
        m.entry(d.matches('/').count()).or_default().insert(d);
    }
    m.into_values()
        .rev()
        .map(|s| s.into_iter().collect())
        .collect()
}

/// The parents of directory `dir` (a key ending in `/`) down to `repositories/` itself: an
/// emptied namespace is walked by the purger, and so is an emptied `repositories/`.
fn parents(dir: &str) -> impl Iterator<Item = String> + '_ {
    let root = format!("{V2}repositories/");
    let mut end = dir.len().saturating_sub(1);
    std::iter::from_fn(move || {
        let i = dir[..end].rfind('/')?;
        if i + 1 < root.len() {
            return None;
        }
        end = i;
        Some(dir[..=i].to_string())
    })
}

/// What a repository's removal covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gone {
    /// Its `_manifests` and `_uploads` go, `_layers` stays (registries may serve): its
    /// directory stays too.
    Parts,
    /// Every key of it goes: its directory and the parents it empties go with it.
    Whole,
}

/// The directories the deleted `keys` leave empty that the registry would list, deepest
/// first: a removed tag's directory and below, `_manifests/tags/` once empty; a removed
/// repository's (`repos`, each `…/repositories/<name>/`) `_manifests`, `_layers` and
/// `_uploads` and below, and with [`Gone::Whole`] its own directory and its parents down to
/// `repositories/`. Those still holding something (a nested repository, another tag, a tag
/// re-pushed meanwhile) stay: the store does not delete a directory that is not empty.
pub fn emptied(keys: &[String], repos: &[String], gone: Gone) -> Levels {
    const TAGS: &str = "/_manifests/tags/";
    let mut out = BTreeSet::new();
    for k in keys {
        // A removed repository's own parts (not a nested repository's, whose keys share the
        // prefix).
        let own = |r: &&String| {
            ["_manifests/", "_layers/", "_uploads/"]
                .iter()
                .any(|p| k.strip_prefix(r.as_str()).is_some_and(|x| x.starts_with(p)))
        };
        let (stop, repo) = match repos.iter().find(own) {
            Some(r) => (r.len(), Some(r)),
            None => match k.find(TAGS) {
                Some(i) => (i + "/_manifests/".len(), None),
                None => continue,
            },
        };
        let mut end = k.len();
        while let Some(i) = k[..end].rfind('/') {
            if i < stop {
                break;
            }
            out.insert(k[..=i].to_string());
            end = i;
        }
        if let (Some(r), Gone::Whole) = (repo, gone) {
            out.insert(r.clone());
            out.extend(parents(r));
        }
    }
    by_depth(out)
}

/// Deletes directory keys, one depth at a time. A failure only leaves an empty directory
/// behind (which [`hollow`] finds on the next run with the registries stopped), so it is
/// logged, never fatal.
pub fn delete(bucket: &Bucket, dirs: Levels) {
    for level in dirs {
        for e in bucket.delete(level) {
            tracing::warn!("removing an emptied directory: {e}");
        }
    }
}

/// Does the registry's upload purger walk into `rel` (relative to `repositories/`, ending
/// in `/`)? It descends every directory except those whose name starts with `_`, other than
/// `_uploads`, and everything below `_uploads`.
fn purger_descends(rel: &str) -> bool {
    for part in rel.trim_end_matches('/').split('/') {
        if part == "_uploads" {
            return true;
        }
        if part.starts_with('_') {
            return false;
        }
    }
    true
}

/// From the listed keys: the directories below `repositories/` that hold keys, as far as
/// the upload purger walks (every directory it descends into, and each child of those that
/// holds keys). Small: a few per repository, plus the upload directories.
pub fn holding(keys: impl IntoIterator<Item = impl AsRef<str>>) -> BTreeSet<String> {
    let base = format!("{V2}repositories/");
    let mut out = BTreeSet::new();
    for k in keys {
        let Some(rest) = k.as_ref().strip_prefix(&base) else {
            continue;
        };
        let mut end = 0;
        while let Some(i) = rest[end..].find('/') {
            let dir = &rest[..end + i + 1];
            out.insert(dir.to_string());
            if !purger_descends(dir) {
                break;
            }
            end += i + 1;
        }
    }
    out
}

/// Every empty directory the registry's upload purger would walk into, with the empty
/// directories below it and the parents it leaves empty, deepest first.
///
/// `holding` is [`holding`] of the scan's listing; `removed` the repositories this run
/// removed whole (`…/repositories/<name>/`), whose directories, parents and nested
/// repositories it may have emptied since. Each child of a directory the purger descends
/// into that is not known to hold keys is listed (recursively) to make sure it holds none;
/// only then is it taken. One delimiter listing per directory the purger descends into, plus
/// one per candidate and per empty directory found.
///
/// Only for registries that are stopped: a directory a push is about to fill may be empty
/// for a moment.
pub fn hollow(bucket: &Bucket, holding: &BTreeSet<String>, removed: &[String]) -> Result<Hollow> {
    let base = format!("{V2}repositories/");
    // Known to hold keys still: what the scan saw, except around what this run removed.
    let rels: Vec<&str> = removed
        .iter()
        .filter_map(|r| r.strip_prefix(base.as_str()))
        .collect();
    let known: BTreeSet<&String> = holding
        .iter()
        .filter(|d| {
            !rels
                .iter()
                .any(|r| d.starts_with(r) || r.starts_with(d.as_str()))
        })
        .collect();
    let walked: Vec<String> = std::iter::once(base.clone())
        .chain(
            holding
                .iter()
                .filter(|d| purger_descends(d))
                .map(|d| format!("{base}{d}")),
        )
        .collect();
    let mut candidates: Vec<String> = bucket
        .children_many(walked)?
        .into_iter()
        .flat_map(|(_, c)| c)
        .filter(|c| {
            c.strip_prefix(&base)
                .is_some_and(|rel| !known.contains(&rel.to_string()))
        })
        .collect();
    if holding.is_empty() {
        // No keys at all: `repositories/` itself may be an empty directory.
        candidates.push(base.clone());
    }
    // Verified empty: nothing under it at all (recursive listings, all in flight at once).
    let listed = bucket.list(candidates.clone())?;
    let roots: Vec<String> = candidates
        .into_iter()
        .filter(|c| !listed.iter().any(|o| o.key.starts_with(c.as_str())))
        .collect();
    // Below an empty directory every directory is empty: collect them all.
    let parents: BTreeSet<String> = roots.iter().flat_map(|r| parents(r)).collect();
    let mut empty = Vec::new();
    let mut level = roots.clone();
    while !level.is_empty() {
        empty.extend(level.iter().cloned());
        level = bucket
            .children_many(level)?
            .into_iter()
            .flat_map(|(_, c)| c)
            .collect();
    }
    empty.sort();
    let delete = by_depth(empty.iter().cloned().chain(parents));
    Ok(Hollow {
        roots,
        empty,
        delete,
    })
}

/// What [`hollow`] found.
#[derive(Debug, Default)]
pub struct Hollow {
    /// The topmost empty directories, one per empty tree (keys ending in `/`).
    pub roots: Vec<String>,
    /// Every empty directory (keys ending in `/`), sorted.
    pub empty: Vec<String>,
    /// What to delete, deepest first: the empty directories and the parents they may leave
    /// empty (kept by the store if not).
    pub delete: Levels,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(k: &str) -> String {
        format!("{V2}{k}")
    }

    fn flat(levels: &Levels) -> Vec<String> {
        levels.iter().flatten().cloned().collect()
    }

    #[test]
    fn emptied_directories_are_a_removed_tags_own_deepest_first() {
        let h = "a".repeat(64);
        let keys = vec![
            v2(&format!(
                "repositories/app/_manifests/tags/v1/index/sha256/{h}/link"
            )),
            v2("repositories/app/_manifests/tags/v1/current/link"),
            v2(&format!(
                "repositories/app/_manifests/revisions/sha256/{h}/link"
            )),
            v2(&format!("blobs/sha256/aa/{h}/data")),
        ];
        let levels = emptied(&keys, &[], Gone::Whole);
        let dirs = flat(&levels);
        assert!(dirs.contains(&v2("repositories/app/_manifests/tags/v1/")));
        assert!(dirs.contains(&v2("repositories/app/_manifests/tags/v1/index/sha256/")));
        assert!(dirs.contains(&v2("repositories/app/_manifests/tags/")));
        for kept in [
            "repositories/app/_manifests/".to_string(),
            format!("repositories/app/_manifests/revisions/sha256/{h}/"),
            format!("blobs/sha256/aa/{h}/"),
            "blobs/sha256/aa/".to_string(),
            "repositories/app/".to_string(),
            "repositories/".to_string(),
        ] {
            assert!(!dirs.contains(&v2(&kept)), "{kept} must stay: {dirs:?}");
        }
        let depths: Vec<usize> = levels.iter().map(|l| l[0].matches('/').count()).collect();
        assert!(depths.windows(2).all(|w| w[0] > w[1]), "{depths:?}");
    }

    #[test]
    fn a_removed_repository_goes_with_its_directory_and_the_parents_it_empties() {
        let h = "b".repeat(64);
        let keys = vec![
            v2(&format!("repositories/team/app/_layers/sha256/{h}/link")),
            v2("repositories/team/app/_manifests/tags/v1/current/link"),
            v2(&format!(
                "repositories/team/app/api/_layers/sha256/{h}/link"
            )),
        ];
        let repos = [v2("repositories/team/app/")];
        let whole = flat(&emptied(&keys, &repos, Gone::Whole));
        for d in [
            "repositories/team/app/_layers/",
            "repositories/team/app/_manifests/",
            // The purger panics on an empty repository, namespace or `repositories/`; the
            // store keeps each that still holds something (here `api`).
            "repositories/team/app/",
            "repositories/team/",
            "repositories/",
        ] {
            assert!(whole.contains(&v2(d)), "{d} missing: {whole:?}");
        }
        for kept in [
            "repositories/team/app/api/",
            "repositories/team/app/api/_layers/",
            "",
        ] {
            assert!(!whole.contains(&v2(kept)), "{kept} must stay: {whole:?}");
        }
        // While registries serve, its `_layers` stay, and so does its directory.
        let parts = flat(&emptied(&keys, &repos, Gone::Parts));
        assert!(parts.contains(&v2("repositories/team/app/_manifests/")));
        assert!(!parts.contains(&v2("repositories/team/app/")), "{parts:?}");
        assert!(!parts.contains(&v2("repositories/team/")), "{parts:?}");
    }

    #[test]
    fn parents_stop_at_repositories() {
        let got: Vec<String> = parents(&v2("repositories/a/b/_uploads/")).collect();
        assert_eq!(
            got,
            [
                v2("repositories/a/b/"),
                v2("repositories/a/"),
                v2("repositories/")
            ]
        );
    }

    #[test]
    fn the_purger_walks_names_and_uploads_never_manifests_or_layers() {
        assert!(purger_descends("team/app/"));
        assert!(purger_descends("team/app/_uploads/"));
        assert!(purger_descends("team/app/_uploads/x/hashstates/sha256/"));
        assert!(!purger_descends("team/app/_manifests/"));
        assert!(!purger_descends("team/app/_layers/sha256/"));
    }

    #[test]
    fn holding_directories_stop_below_manifests_and_layers() {
        let h = "c".repeat(64);
        let keys = [
            v2(&format!("repositories/team/app/_layers/sha256/{h}/link")),
            v2("repositories/team/app/_uploads/u1/hashstates/sha256/0"),
            v2("repositories/solo/_manifests/tags/v1/current/link"),
            v2(&format!("blobs/sha256/cc/{h}/data")),
        ];
        let got: Vec<String> = holding(&keys).into_iter().collect();
        assert_eq!(
            got,
            [
                "solo/",
                "solo/_manifests/",
                "team/",
                "team/app/",
                "team/app/_layers/",
                "team/app/_uploads/",
                "team/app/_uploads/u1/",
                "team/app/_uploads/u1/hashstates/",
                "team/app/_uploads/u1/hashstates/sha256/",
            ]
        );
    }
}
