//! The registry's layout read from a key listing: the same `docker/registry/v2/...` keys as
//! the filesystem tree, turned into the same [`Inventory`] and [`Blobs`] the filesystem scan
//! gives, so everything after the scan is one code path. Pure: keys in, inventory out.
//!
//! An object store has no directories: a "directory" exists while a key lies below it, so
//! there are no empty directories, symlinks, FIFOs or mount points to meet here; what remains
//! odd is a key where the layout has none, a link of the wrong size, or an invalid name.

use super::bucket::Object;
use crate::blobs::Blobs;
use crate::digest::{Digest, Link, LINK_LEN};
use crate::names;
use crate::scan::{Inventory, OddKind, Oddity, Repo, Tag};
use std::collections::{BTreeMap, BTreeSet};

/// `docker/registry/v2/`, the registry's layout root below `rootdirectory`.
pub const V2: &str = "docker/registry/v2/";

/// A repository as listed, before its tags' `current/link` are read.
#[derive(Default)]
struct Listed {
    repo: Repo,
    tags: BTreeMap<String, (Option<std::time::SystemTime>, Vec<Digest>)>,
    uploads: BTreeSet<String>,
}

/// What a listing holds: the inventory without tag targets, and the `current/link` keys to read.
pub struct Listing {
    repos: BTreeMap<String, Listed>,
    oddities: Vec<Oddity>,
}

impl Listing {
    /// The `current/link` keys (relative to the prefix) of every tag.
    pub fn current_links(&self) -> Vec<String> {
        self.repos
            .iter()
            .flat_map(|(name, l)| {
                l.tags
                    .iter()
                    .filter(|(_, (pushed, _))| pushed.is_some())
                    .map(move |(t, _)| tag_current_key(name, t))
            })
            .collect()
    }

    /// The inventory, given what each `current/link` holds (`None`: could not be read).
    pub fn inventory(
        self,
        current: &std::collections::HashMap<String, Option<Vec<u8>>>,
    ) -> Inventory {
        let mut oddities = self.oddities;
        let repos = self
            .repos
            .into_iter()
            .map(|(name, mut l)| {
                l.repo.uploads = l.uploads.len();
                l.repo.tags = l
                    .tags
                    .into_iter()
                    .map(|(t, (pushed, mut history))| {
                        history.sort_unstable();
                        let key = tag_current_key(&name, &t);
                        let link = match (pushed, current.get(&key)) {
                            (None, _) => Link::Missing,
                            (Some(_), Some(Some(b))) => Link::from_content(b),
                            (Some(_), _) => Link::Missing,
                        };
                        let path = format!("repositories/{name}/_manifests/tags/{t}");
                        match link {
                            Link::Missing => oddities.push(Oddity {
                                kind: OddKind::MissingLink,
                                path,
                                detail: "tag without current/link".into(),
                            }),
                            Link::Ok(_) => {}
                            _ => oddities.push(Oddity {
                                kind: OddKind::MalformedLink,
                                path: path + "/current/link",
                                detail: "tag link is empty or malformed".into(),
                            }),
                        }
                        Tag {
                            name: t,
                            current: link,
                            pushed: if matches!(link, Link::Missing) {
                                None
                            } else {
                                pushed
                            },
                            history,
                        }
                    })
                    .collect();
                l.repo.revisions.sort_unstable();
                l.repo.layers.sort_unstable();
                l.repo
            })
            .collect();
        oddities.sort();
        Inventory {
            repos,
            oddities,
            empty_dirs: Vec::new(),
        }
    }
}

/// `docker/registry/v2/repositories/<repo>/_manifests/tags/<tag>/current/link`.
pub fn tag_current_key(repo: &str, tag: &str) -> String {
    format!("{V2}repositories/{repo}/_manifests/tags/{tag}/current/link")
}

/// Sorts the listed keys under `repositories/` into repositories.
pub fn list_repositories(objects: &[Object]) -> Listing {
    let mut repos: BTreeMap<String, Listed> = BTreeMap::new();
    let mut oddities = Vec::new();
    let mut odd = |kind, path: &str, detail: &str| {
        oddities.push(Oddity {
            kind,
            path: path.to_string(),
            detail: detail.to_string(),
        })
    };
    let prefix = format!("{V2}repositories/");
    for o in objects {
        let Some(rest) = o.key.strip_prefix(&prefix) else {
            continue;
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let rel = format!("repositories/{rest}");
        let Some(at) = parts.iter().position(|p| p.starts_with('_')) else {
            odd(
                OddKind::UnexpectedEntry,
                &rel,
                "a key outside any _manifests, _layers or _uploads",
            );
            continue;
        };
        let name = parts[..at].join("/");
        if name.is_empty() || names::check_repo(&name).is_err() {
            odd(
                OddKind::InvalidName,
                &rel,
                "not below a valid repository name",
            );
            continue;
        }
        let (part, tail) = (parts[at], &parts[at + 1..]);
        let link_digest = |tail: &[&str]| -> Option<Digest> {
            match tail {
                ["sha256", hex, "link"] => Digest::from_hex(hex.as_bytes()),
                _ => None,
            }
        };
        let entry = repos.entry(name.clone()).or_insert_with(|| Listed {
            repo: Repo {
                name: name.clone(),
                ..Repo::default()
            },
            ..Listed::default()
        });
        let r = &mut entry.repo;
        match (part, tail) {
            ("_manifests", ["revisions", t @ ..]) => {
                r.has_manifests = true;
                match (link_digest(t), o.size as usize == LINK_LEN) {
                    (Some(d), true) => r.revisions.push(d),
                    (Some(_), false) => odd(OddKind::MalformedLink, &rel, "link is not 71 bytes"),
                    (None, _) => odd(
                        OddKind::UnexpectedEntry,
                        &rel,
                        "unexpected key in revisions",
                    ),
                }
            }
            ("_manifests", ["tags", tag, t @ ..]) => {
                r.has_manifests = true;
                r.has_tags_dir = true;
                if names::check_tag(tag).is_err() {
                    odd(OddKind::InvalidName, &rel, "not a valid tag name");
                    continue;
                }
                let e = entry.tags.entry(tag.to_string()).or_default();
                match t {
                    ["current", "link"] => e.0 = Some(o.modified),
                    ["index", t @ ..] => match (link_digest(t), o.size as usize == LINK_LEN) {
                        (Some(d), true) => e.1.push(d),
                        (Some(_), false) => {
                            odd(OddKind::MalformedLink, &rel, "link is not 71 bytes")
                        }
                        (None, _) => odd(OddKind::UnexpectedEntry, &rel, "unexpected key in a tag"),
                    },
                    _ => odd(OddKind::UnexpectedEntry, &rel, "unexpected key in a tag"),
                }
            }
            ("_manifests", _) => {
                r.has_manifests = true;
                odd(
                    OddKind::UnexpectedEntry,
                    &rel,
                    "unexpected key in _manifests",
                );
            }
            ("_layers", t) => {
                r.has_layers = true;
                match (link_digest(t), o.size as usize == LINK_LEN) {
                    (Some(d), true) => r.layers.push(d),
                    (Some(_), false) => odd(OddKind::MalformedLink, &rel, "link is not 71 bytes"),
                    (None, _) => odd(OddKind::UnexpectedEntry, &rel, "unexpected key in _layers"),
                }
            }
            ("_uploads", [id, ..]) => {
                r.has_uploads = true;
                entry.uploads.insert(id.to_string());
            }
            _ => odd(
                OddKind::UnexpectedEntry,
                &rel,
                "unknown '_' key (the registry skips it)",
            ),
        }
    }
    Listing { repos, oddities }
}

/// The blobs listed under `blobs/sha256/`: `xx/<hex>/data` with its size; any other key is
/// malformed (never swept, reported).
pub fn list_blobs(objects: &[Object]) -> Blobs {
    let prefix = format!("{V2}blobs/sha256/");
    let mut b = Blobs::default();
    for o in objects {
        let Some(rest) = o.key.strip_prefix(&prefix) else {
            continue;
        };
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [fan, hex, "data"] if hex.starts_with(fan) && fan.len() == 2 => {
                if let Some(d) = Digest::from_hex(hex.as_bytes()) {
                    b.sizes.insert(d, o.size);
                    continue;
                }
            }
            _ => {}
        }
        b.malformed.push(Oddity {
            kind: OddKind::UnexpectedEntry,
            path: format!("blobs/sha256/{rest}"),
            detail: "not a blob's data key (blobs/sha256/xx/<hex>/data): never swept; remove it if no blob belongs there".into(),
        });
    }
    b.malformed.sort();
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn obj(key: &str, size: u64) -> Object {
        Object {
            key: format!("{V2}{key}"),
            size,
            modified: SystemTime::UNIX_EPOCH + Duration::from_secs(1000),
        }
    }

    fn hex(c: char) -> String {
        c.to_string().repeat(64)
    }

    #[test]
    fn keys_become_the_same_inventory_as_the_tree() {
        let a = hex('a');
        let b = hex('b');
        let objs = vec![
            obj(
                &format!("repositories/team/app/_manifests/revisions/sha256/{a}/link"),
                71,
            ),
            obj("repositories/team/app/_manifests/tags/v1/current/link", 71),
            obj(
                &format!("repositories/team/app/_manifests/tags/v1/index/sha256/{a}/link"),
                71,
            ),
            obj(
                &format!("repositories/team/app/_layers/sha256/{b}/link"),
                71,
            ),
            obj("repositories/team/app/_uploads/u1/startedat", 20),
            obj("repositories/team/app/_uploads/u1/data", 5),
            // A nested repository is its own.
            obj(
                &format!("repositories/team/app/child/_layers/sha256/{b}/link"),
                71,
            ),
            // Odd keys.
            obj(
                &format!("repositories/team/app/_manifests/revisions/sha256/{b}/link"),
                3,
            ),
            obj("repositories/team/app/_manifests/tags/v2/index/x", 1),
            obj("repositories/stray", 1),
        ];
        let l = list_repositories(&objs);
        assert_eq!(l.current_links(), vec![tag_current_key("team/app", "v1")]);
        let mut cur = std::collections::HashMap::new();
        cur.insert(
            tag_current_key("team/app", "v1"),
            Some(format!("sha256:{a}").into_bytes()),
        );
        let inv = l.inventory(&cur);
        let names: Vec<&str> = inv.repos.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["team/app", "team/app/child"]);
        let app = &inv.repos[0];
        assert_eq!(app.revisions.len(), 1);
        assert_eq!(app.layers.len(), 1);
        assert_eq!(app.uploads, 1);
        let v1 = app.tag("v1").unwrap();
        assert_eq!(v1.current.digest().map(|d| d.hex()), Some(a.clone()));
        assert_eq!(v1.history.len(), 1);
        assert!(v1.pushed.is_some());
        // v2 has no current link: listed, and reported.
        assert_eq!(app.tag("v2").unwrap().current, Link::Missing);
        let kinds: Vec<OddKind> = inv.oddities.iter().map(|o| o.kind).collect();
        assert!(kinds.contains(&OddKind::MalformedLink), "{kinds:?}");
        assert!(kinds.contains(&OddKind::MissingLink), "{kinds:?}");
        assert!(kinds.contains(&OddKind::UnexpectedEntry), "{kinds:?}");
        assert!(!inv.repos[1].has_manifests && inv.repos[1].has_layers);
    }

    #[test]
    fn only_data_keys_are_blobs() {
        let a = hex('a');
        let b = list_blobs(&[
            obj(&format!("blobs/sha256/aa/{a}/data"), 42),
            obj(&format!("blobs/sha256/bb/{a}/data"), 1),
            obj(&format!("blobs/sha256/aa/{a}/extra"), 1),
        ]);
        assert_eq!(b.sizes.len(), 1);
        assert_eq!(b.sizes.values().next(), Some(&42));
        assert_eq!(b.malformed.len(), 2);
    }
}
