//! Reachability, pure: what each repository still needs, which untagged manifests can be
//! pruned, and which blobs the registry's own garbage collector will mark.
//!
//! Two views, deliberately different:
//! - regclean's: from every tag's `current/link`, follow manifests recursively (indexes into
//!   children, nested indexes too) within the repository, plus untagged referrers whose OCI
//!   `subject` is kept. This decides pruning and is the set that must never be swept.
//! - the registry's (2.8 `garbage-collect` without `-m`): every revision link whose blob
//!   exists marks that manifest and what it references, one level deep. This predicts the
//!   swept set, which is compared with the registry's own dry run.

use crate::attach::{self, Attachments, Role};
use crate::digest::Digest;
use crate::manifest::{Db, Problem};
use crate::plan::{Removal, What};
use crate::scan::{Inventory, Repo};
use serde::Serialize;
use std::collections::{BTreeSet, HashSet};

/// Whether untagged referrers (signatures, SBOMs) of kept manifests are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Referrers {
    /// Keep them (default).
    Keep,
    /// Prune them like any untagged manifest (`--prune-referrers`).
    Prune,
}

/// The inventory as it will be after `removals` (tags and repositories gone).
pub fn after_removals(inv: &Inventory, removals: &[Removal]) -> Inventory {
    let mut gone_repos: HashSet<&str> = HashSet::new();
    let mut gone_tags: HashSet<(&str, &str)> = HashSet::new();
    for r in removals {
        match &r.what {
            What::Repository { .. } => {
                gone_repos.insert(&r.repo);
            }
            What::Tag { name, .. } => {
                gone_tags.insert((&r.repo, name));
            }
        }
    }
    let repos = inv
        .repos
        .iter()
        .filter(|r| !gone_repos.contains(r.name.as_str()))
        .map(|r| {
            let mut r = r.clone();
            r.tags
                .retain(|t| !gone_tags.contains(&(r.name.as_str(), t.name.as_str())));
            r
        })
        .collect();
    Inventory {
        repos,
        oddities: inv.oddities.clone(),
        empty_dirs: inv.empty_dirs.clone(),
    }
}

/// How pruning treats a repository's tags.
#[derive(Debug, Clone, Copy)]
pub struct Rules<'a> {
    /// Untagged referrers of kept manifests.
    pub referrers: Referrers,
    /// Attachment tags (see [`crate::attach`]).
    pub attachments: Attachments,
    /// Tags nothing removes (the policy file's `protect`), as (repository, tag).
    pub protected: &'a BTreeSet<(String, String)>,
    /// Untagged manifests kept as if tagged (`untagged: {keep_pulled_within}`), as
    /// (repository, digest).
    pub pinned: &'a BTreeSet<(String, Digest)>,
}

impl Rules<'_> {
    /// Every tag is a root: what the remaining tags need, whatever they are (the set that
    /// must never be swept).
    pub fn all_tags(referrers: Referrers) -> Rules<'static> {
        static NONE: BTreeSet<(String, String)> = BTreeSet::new();
        static NO_PINS: BTreeSet<(String, Digest)> = BTreeSet::new();
        Rules {
            referrers,
            attachments: Attachments::Plain,
            protected: &NONE,
            pinned: &NO_PINS,
        }
    }
}

/// The manifests repository `repo` needs, and the attachment tags that go (their subject is
/// not needed, or not in the repository): ordinary tags are roots, followed recursively
/// through indexes; then (with [`Referrers::Keep`]) untagged manifests whose `subject` is
/// needed, and attachment tags whose subject is needed, to a fixed point (a signature of a
/// signature stays with the first).
pub fn kept_manifests(repo: &Repo, db: &Db, rules: Rules) -> (HashSet<Digest>, Vec<String>) {
    let roles = attach::roles(repo, rules.attachments);
    let protected = |t: &str| {
        rules
            .protected
            .contains(&(repo.name.clone(), t.to_string()))
    };
    let mut pending: Vec<(usize, Digest)> = Vec::new();
    let mut stack: Vec<Digest> = Vec::new();
    for (i, (t, role)) in repo.tags.iter().zip(&roles).enumerate() {
        match role {
            Role::Attachment(s) | Role::Orphan(s) if !protected(&t.name) => pending.push((i, *s)),
            _ => stack.extend(t.current.digest()),
        }
    }
    stack.extend(
        rules
            .pinned
            .range((repo.name.clone(), Digest([0; 32]))..=(repo.name.clone(), Digest([255; 32])))
            .map(|(_, d)| *d),
    );
    let mut kept = HashSet::new();
    loop {
        while let Some(d) = stack.pop() {
            if kept.insert(d) {
                if let Some(m) = db.get(&d) {
                    stack.extend(m.children().iter().copied());
                }
            }
        }
        // Attachments of kept manifests.
        pending.retain(|(i, s)| {
            if kept.contains(s) {
                stack.extend(repo.tags[*i].current.digest());
                false
            } else {
                true
            }
        });
        // Referrers of kept manifests (and referrers of those, on the next round).
        if rules.referrers == Referrers::Keep {
            stack.extend(repo.revisions.iter().filter(|r| {
                !kept.contains(*r)
                    && db
                        .get(r)
                        .and_then(|m| m.subject)
                        .is_some_and(|s| kept.contains(&s))
            }));
        }
        if stack.is_empty() {
            break;
        }
    }
    let gone = pending
        .into_iter()
        .map(|(i, _)| repo.tags[i].name.clone())
        .collect();
    (kept, gone)
}

/// What pruning removes from one repository.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Prune {
    /// The repository.
    pub repo: String,
    /// Revision directories to remove (untagged manifests nothing kept needs).
    pub revisions: Vec<Digest>,
    /// Tag history entries (`tags/<tag>/index/sha256/<hex>`) naming pruned manifests.
    pub history: Vec<(String, Digest)>,
    /// Attachment tags whose subject goes or is not in the repository (see
    /// [`crate::attach`]); what they point to is pruned with them unless something else
    /// keeps it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<String>,
}

/// Plans pruning over the (post-removal) inventory.
pub fn prune_plan(inv: &Inventory, db: &Db, rules: Rules) -> Vec<Prune> {
    inv.repos
        .iter()
        .filter_map(|repo| {
            let (kept, attachments) = kept_manifests(repo, db, rules);
            let revisions: Vec<Digest> = repo
                .revisions
                .iter()
                .filter(|d| !kept.contains(*d))
                .copied()
                .collect();
            if revisions.is_empty() && attachments.is_empty() {
                return None;
            }
            let gone: HashSet<&Digest> = revisions.iter().collect();
            let history = repo
                .tags
                .iter()
                .filter(|t| !attachments.contains(&t.name))
                .flat_map(|t| {
                    t.history
                        .iter()
                        .filter(|d| gone.contains(d))
                        .map(|d| (t.name.clone(), *d))
                })
                .collect();
            Some(Prune {
                repo: repo.name.clone(),
                revisions,
                history,
                attachments,
            })
        })
        .collect()
}

/// Applies a prune plan to an inventory (simulation for prediction).
pub fn after_prune(mut inv: Inventory, prune: &[Prune]) -> Inventory {
    for p in prune {
        if let Ok(i) = inv.repos.binary_search_by(|r| r.name.as_str().cmp(&p.repo)) {
            let gone: HashSet<&Digest> = p.revisions.iter().collect();
            let r = &mut inv.repos[i];
            r.revisions.retain(|d| !gone.contains(d));
            r.tags.retain(|t| !p.attachments.contains(&t.name));
            for t in &mut r.tags {
                t.history.retain(|d| !gone.contains(d));
            }
        }
    }
    inv
}

/// Every blob regclean considers reachable: the manifests each repository keeps and what they
/// reference (configs, layers, children).
/// Every tag counts, attachments too: this is what the remaining tags need.
pub fn reachable_blobs(inv: &Inventory, db: &Db, referrers: Referrers) -> HashSet<Digest> {
    let mut out = HashSet::new();
    for repo in &inv.repos {
        for d in kept_manifests(repo, db, Rules::all_tags(referrers)).0 {
            out.insert(d);
            if let Some(m) = db.get(&d) {
                out.extend(m.refs.iter().copied());
            }
        }
    }
    out
}

/// The blobs registry 2.8's `garbage-collect` (without `-m`) marks on this inventory: for each
/// repository the registry sees (it needs `_layers`), each revision whose blob exists, that
/// manifest and its references.
pub fn registry_marks(inv: &Inventory, db: &Db) -> HashSet<Digest> {
    let mut out = HashSet::new();
    for repo in inv.repos.iter().filter(|r| r.has_layers) {
        for d in &repo.revisions {
            if matches!(db.problem(d), Some(Problem::MissingBlob)) {
                continue;
            }
            out.insert(*d);
            if let Some(m) = db.get(d) {
                out.extend(m.refs.iter().copied());
            }
        }
    }
    out
}

/// Blobs that are in `all` but not in `marked`, sorted: what a collection sweeps.
pub fn swept(all: impl IntoIterator<Item = Digest>, marked: &HashSet<Digest>) -> BTreeSet<Digest> {
    all.into_iter().filter(|d| !marked.contains(d)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Link;
    use crate::manifest::{Kind, Manifest};
    use crate::scan::Tag;
    use std::collections::HashMap;

    fn d(n: u8) -> Digest {
        Digest([n; 32])
    }

    fn img(cfg: u8, layers: &[u8]) -> Result<Manifest, Problem> {
        let mut refs = vec![d(cfg)];
        refs.extend(layers.iter().map(|l| d(*l)));
        Ok(Manifest {
            kind: Kind::Image,
            refs,
            subject: None,
        })
    }

    fn idx(children: &[u8]) -> Result<Manifest, Problem> {
        Ok(Manifest {
            kind: Kind::Index,
            refs: children.iter().map(|c| d(*c)).collect(),
            subject: None,
        })
    }

    fn referrer(cfg: u8, subject: u8) -> Result<Manifest, Problem> {
        Ok(Manifest {
            kind: Kind::Image,
            refs: vec![d(cfg)],
            subject: Some(d(subject)),
        })
    }

    fn tag(name: &str, m: u8, history: &[u8]) -> Tag {
        Tag {
            name: name.into(),
            current: Link::Ok(d(m)),
            pushed: None,
            history: history.iter().map(|h| d(*h)).collect(),
        }
    }

    fn repo(name: &str, tags: Vec<Tag>, revisions: &[u8]) -> Repo {
        let mut revisions: Vec<Digest> = revisions.iter().map(|r| d(*r)).collect();
        revisions.sort();
        Repo {
            name: name.into(),
            has_layers: true,
            has_manifests: true,
            has_tags_dir: true,
            tags,
            revisions,
            ..Repo::default()
        }
    }

    /// 10: index of 11, 12; 11, 12: images; 13: untagged old image; 14: referrer of 10;
    /// 15: referrer of 14; 16: referrer of the untagged 13; 20: nested index of index 21 of 22.
    fn db() -> Db {
        let mut m = HashMap::new();
        m.insert(d(10), idx(&[11, 12]));
        m.insert(d(11), img(100, &[101, 200]));
        m.insert(d(12), img(102, &[103, 200]));
        m.insert(d(13), img(104, &[105, 200]));
        m.insert(d(14), referrer(106, 10));
        m.insert(d(15), referrer(107, 14));
        m.insert(d(16), referrer(108, 13));
        m.insert(d(20), idx(&[21]));
        m.insert(d(21), idx(&[22]));
        m.insert(d(22), img(109, &[110]));
        m.insert(d(30), Err(Problem::MissingBlob));
        Db::from_map(m)
    }

    #[test]
    fn index_children_are_kept_and_untagged_history_pruned() {
        let inv = Inventory {
            empty_dirs: Vec::new(),
            repos: vec![repo(
                "multi",
                vec![tag("v1", 10, &[13, 10])],
                &[10, 11, 12, 13],
            )],
            oddities: vec![],
        };
        let p = prune_plan(&inv, &db(), Rules::all_tags(Referrers::Keep));
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].revisions, [d(13)]);
        assert_eq!(p[0].history, [("v1".to_string(), d(13))]);
    }

    #[test]
    fn nested_indexes_are_followed() {
        let inv = Inventory {
            empty_dirs: Vec::new(),
            repos: vec![repo("n", vec![tag("v1", 20, &[])], &[20, 21, 22])],
            oddities: vec![],
        };
        assert!(prune_plan(&inv, &db(), Rules::all_tags(Referrers::Keep)).is_empty());
        let r = reachable_blobs(&inv, &db(), Referrers::Keep);
        assert!(r.contains(&d(110)), "layer of the grandchild");
    }

    #[test]
    fn referrers_of_kept_manifests_are_kept_transitively_unless_asked() {
        let inv = Inventory {
            empty_dirs: Vec::new(),
            repos: vec![repo(
                "s",
                vec![tag("v1", 10, &[])],
                &[10, 11, 12, 13, 14, 15, 16],
            )],
            oddities: vec![],
        };
        let p = prune_plan(&inv, &db(), Rules::all_tags(Referrers::Keep));
        assert_eq!(
            p[0].revisions,
            [d(13), d(16)],
            "referrer of an untagged manifest goes with it"
        );
        let p = prune_plan(&inv, &db(), Rules::all_tags(Referrers::Prune));
        assert_eq!(p[0].revisions, [d(13), d(14), d(15), d(16)]);
    }

    #[test]
    fn a_child_that_is_also_tagged_stays_when_its_index_tag_goes() {
        let inv = Inventory {
            empty_dirs: Vec::new(),
            repos: vec![repo(
                "m",
                vec![tag("v1", 10, &[]), tag("amd64", 11, &[])],
                &[10, 11, 12],
            )],
            oddities: vec![],
        };
        let removals = vec![Removal {
            repo: "m".into(),
            what: What::Tag {
                name: "v1".into(),
                manifest: Some(d(10)),
            },
            reason: "m:v1".into(),
        }];
        let after = after_removals(&inv, &removals);
        let p = prune_plan(&after, &db(), Rules::all_tags(Referrers::Keep));
        assert_eq!(p[0].revisions, [d(10), d(12)]);
        let after = after_prune(after, &p);
        let marks = registry_marks(&after, &db());
        assert!(marks.contains(&d(11)) && marks.contains(&d(101)) && marks.contains(&d(200)));
        assert!(
            !marks.contains(&d(103)),
            "the pruned sibling's own layer is swept"
        );
    }

    #[test]
    fn shared_manifest_stays_while_any_tag_keeps_it() {
        let inv = Inventory {
            empty_dirs: Vec::new(),
            repos: vec![repo(
                "a",
                vec![tag("old", 11, &[]), tag("keep", 11, &[])],
                &[11],
            )],
            oddities: vec![],
        };
        let removals = vec![Removal {
            repo: "a".into(),
            what: What::Tag {
                name: "old".into(),
                manifest: Some(d(11)),
            },
            reason: String::new(),
        }];
        let after = after_removals(&inv, &removals);
        assert!(prune_plan(&after, &db(), Rules::all_tags(Referrers::Keep)).is_empty());
    }

    #[test]
    fn registry_marks_skip_missing_blobs_and_repositories_without_layers() {
        let mut hidden = repo("hidden", vec![tag("v1", 12, &[])], &[12]);
        hidden.has_layers = false;
        let inv = Inventory {
            empty_dirs: Vec::new(),
            repos: vec![hidden, repo("x", vec![], &[30, 13])],
            oddities: vec![],
        };
        let marks = registry_marks(&inv, &db());
        assert!(!marks.contains(&d(30)));
        assert!(marks.contains(&d(13)) && marks.contains(&d(105)));
        assert!(
            !marks.contains(&d(103)),
            "2.8 GC does not see a repository without _layers"
        );
        let all = [d(12), d(13), d(103), d(105)];
        let s = swept(all, &marks);
        assert_eq!(s.into_iter().collect::<Vec<_>>(), [d(12), d(103)]);
    }

    #[test]
    fn removed_repositories_keep_nothing_but_other_repositories_still_mark_shared_layers() {
        let inv = Inventory {
            empty_dirs: Vec::new(),
            repos: vec![
                repo("a", vec![tag("v1", 11, &[])], &[11]),
                repo("b", vec![tag("v1", 12, &[])], &[12]),
            ],
            oddities: vec![],
        };
        let removals = vec![Removal {
            repo: "a".into(),
            what: What::Repository { tags: 1 },
            reason: String::new(),
        }];
        let after = after_removals(&inv, &removals);
        let marks = registry_marks(&after, &db());
        assert!(marks.contains(&d(200)), "layer shared with b stays");
        assert!(!marks.contains(&d(101)));
    }

    fn follow(protected: &BTreeSet<(String, String)>) -> Rules<'_> {
        static NO_PINS: BTreeSet<(String, Digest)> = BTreeSet::new();
        Rules {
            referrers: Referrers::Keep,
            attachments: Attachments::Follow,
            protected,
            pinned: &NO_PINS,
        }
    }

    /// 41 is an image with a signature 43 (`sha256-<41>.sig`), 42 a second image signed by
    /// 44, and 44's own signature is 46 (`sha256-<44>.sig`); `sha256-<99>.sig` -> 45 is an
    /// orphan. (None of them in `db()`: plain leaves.)
    fn signed() -> Repo {
        let sig = |subject: u8, m: u8| tag(&format!("sha256-{}.sig", d(subject).hex()), m, &[]);
        let mut tags = vec![
            tag("v1", 41, &[]),
            tag("v2", 42, &[]),
            sig(41, 43),
            sig(42, 44),
            sig(44, 46),
            sig(99, 45),
        ];
        tags.sort_by(|a, b| a.name.cmp(&b.name));
        repo("s", tags, &[41, 42, 43, 44, 45, 46])
    }

    #[test]
    fn attachments_stay_with_their_subject_and_go_with_it() {
        let none = BTreeSet::new();
        let inv = Inventory {
            empty_dirs: Vec::new(),
            repos: vec![signed()],
            oddities: vec![],
        };
        // Everything tagged: only the orphan and what it points to go.
        let p = prune_plan(&inv, &db(), follow(&none));
        assert_eq!(p[0].attachments, [format!("sha256-{}.sig", d(99).hex())]);
        assert_eq!(p[0].revisions, [d(45)]);
        // v2 goes: its signature, the signature's signature, and the manifests behind them.
        let removals = vec![Removal {
            repo: "s".into(),
            what: What::Tag {
                name: "v2".into(),
                manifest: Some(d(42)),
            },
            reason: String::new(),
        }];
        let after = after_removals(&inv, &removals);
        let p = prune_plan(&after, &db(), follow(&none));
        let mut gone = p[0].attachments.clone();
        gone.sort();
        let mut want = vec![
            format!("sha256-{}.sig", d(42).hex()),
            format!("sha256-{}.sig", d(44).hex()),
            format!("sha256-{}.sig", d(99).hex()),
        ];
        want.sort();
        assert_eq!(gone, want);
        assert_eq!(p[0].revisions, [d(42), d(44), d(45), d(46)]);
        // Plain tags: everything tagged stays.
        let plain = Rules {
            attachments: Attachments::Plain,
            ..follow(&none)
        };
        assert_eq!(prune_plan(&after, &db(), plain)[0].revisions, [d(42)]);
        // A protected orphan stays, and so does what it points to.
        let protected: BTreeSet<(String, String)> =
            [("s".to_string(), format!("sha256-{}.sig", d(99).hex()))].into();
        let p = prune_plan(&inv, &db(), follow(&protected));
        assert!(p.is_empty(), "{p:?}");
    }
}
