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
//! So regclean deletes the directories its deletes leave empty ([`emptied`]), and, when the
//! registries are stopped, every empty directory the purger would walk into ([`hollow`]).
//! Deleting a directory key is safe where directories are real, because a directory that
//! holds anything is not deleted (SeaweedFS answers "deleted" and keeps it and all it holds),
//! and it is a no-op on stores without directories (a missing key).

use super::bucket::Bucket;
use super::layout::V2;
use crate::error::Result;
use std::collections::{BTreeMap, BTreeSet};

/// The roots below which directories are deleted when emptied; never the roots themselves.
const ROOTS: [&str; 2] = ["repositories/", "blobs/"];

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

/// The directories the deleted `keys` may leave empty: every ancestor of each key below
/// `repositories/` or `blobs/`, deepest first. Those still holding something (a parent of
/// what remains, a nested repository, a tag re-pushed meanwhile) stay: the store does not
/// delete a directory that is not empty.
pub fn emptied(keys: &[String]) -> Levels {
    let mut out = BTreeSet::new();
    for k in keys {
        let Some(root) = ROOTS
            .iter()
            .map(|r| format!("{V2}{r}"))
            .find(|r| k.starts_with(r.as_str()))
        else {
            continue;
        };
        let mut end = k.len();
        while let Some(i) = k[..end].rfind('/') {
            if i < root.len() {
                break;
            }
            out.insert(k[..=i].to_string());
            end = i;
        }
    }
    by_depth(out)
}

/// Deletes directory keys, one depth at a time; failures only leave an empty directory
/// behind, so they are logged, never fatal.
pub fn delete(bucket: &Bucket, dirs: Levels) {
    for level in dirs {
        for e in bucket.delete(level) {
            tracing::debug!("removing an emptied directory: {e}");
        }
    }
}

/// Does the registry's upload purger walk into `rel` (relative to `repositories/`, ending
/// in `/`)? It descends every directory except those whose name starts with `_`, other than
/// `_uploads` (and everything below `_uploads`).
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
/// directories below it, deepest first. `holding` is [`holding`] of a listing of the whole
/// of `repositories/`; what a run deleted since is covered by [`emptied`]. One delimiter
/// listing per directory the purger descends into, and per empty directory found.
///
/// Only for registries that are stopped: a directory a push is about to fill may be empty
/// for a moment.
pub fn hollow(bucket: &Bucket, holding: &BTreeSet<String>) -> Result<Levels> {
    let base = format!("{V2}repositories/");
    let walked: Vec<String> = std::iter::once(String::new())
        .chain(holding.iter().filter(|d| purger_descends(d)).cloned())
        .collect();
    let roots: Vec<String> = children_of(bucket, &base, walked)?
        .into_iter()
        .flat_map(|(_, c)| c)
        .filter(|c| !holding.contains(c.as_str()))
        .collect();
    // Below an empty directory every directory is empty: collect them all.
    let mut found = Vec::new();
    let mut level = roots;
    while !level.is_empty() {
        found.extend(level.iter().cloned());
        level = children_of(bucket, &base, level)?
            .into_iter()
            .flat_map(|(_, c)| c)
            .collect();
    }
    Ok(by_depth(found.into_iter().map(|d| format!("{base}{d}"))))
}

/// The child directories of each of `dirs` (relative to `base`), listed in parallel.
fn children_of(
    bucket: &Bucket,
    base: &str,
    dirs: Vec<String>,
) -> Result<Vec<(String, Vec<String>)>> {
    use rayon::prelude::*;
    dirs.into_par_iter()
        .map(|d| {
            let kids = bucket.children(&format!("{base}{d}"))?;
            let kids = kids
                .into_iter()
                .filter_map(|c| c.strip_prefix(base).map(str::to_string))
                .collect();
            Ok((d, kids))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(k: &str) -> String {
        format!("{V2}{k}")
    }

    #[test]
    fn emptied_directories_are_every_ancestor_below_the_roots_deepest_first() {
        let h = "a".repeat(64);
        let keys = vec![
            v2(&format!(
                "repositories/team/app/_manifests/tags/v1/index/sha256/{h}/link"
            )),
            v2("repositories/team/app/_manifests/tags/v1/current/link"),
            v2(&format!(
                "repositories/team/app/_manifests/revisions/sha256/{h}/link"
            )),
            v2(&format!("blobs/sha256/aa/{h}/data")),
            ".regclean/pending".to_string(),
        ];
        let levels = emptied(&keys);
        let dirs: Vec<String> = levels.iter().flatten().cloned().collect();
        for d in [
            "repositories/team/app/_manifests/tags/v1/index/sha256/",
            "repositories/team/app/_manifests/tags/v1/",
            "repositories/team/app/_manifests/tags/",
            &format!("repositories/team/app/_manifests/revisions/sha256/{h}/"),
            "repositories/team/app/",
            // The purger panics on an empty namespace directory as on a repository's.
            "repositories/team/",
            &format!("blobs/sha256/aa/{h}/"),
            "blobs/sha256/aa/",
        ] {
            assert!(dirs.contains(&v2(d)), "{d} missing: {dirs:?}");
        }
        for kept in ["repositories/", "blobs/", "", ".regclean/"] {
            assert!(!dirs.contains(&v2(kept)), "{kept} must stay: {dirs:?}");
            assert!(!dirs.contains(&kept.to_string()), "{kept} must stay");
        }
        let depths: Vec<usize> = levels.iter().map(|l| l[0].matches('/').count()).collect();
        assert!(depths.windows(2).all(|w| w[0] > w[1]), "{depths:?}");
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
