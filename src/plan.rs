//! The plan: a pure function of the inventory, the request and `now`. All policy lives here so
//! that it is tested without a file system.

use crate::digest::Digest;
use crate::retention::{self, Kept, Retention};
use crate::scan::Tag;
use crate::scan::{Inventory, Repo};
use crate::target::Target;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

/// Which repositories a retention policy applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope {
    /// The TARGETs (default).
    #[default]
    Targets,
    /// Every repository (`--all`).
    All,
}

/// What the user asked for, resolved (see `cli::Settings`).
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// The TARGET arguments, already validated.
    pub targets: Vec<Target>,
    /// With a retention policy: the targets select the candidate tags (`REPO` = all its tags,
    /// `REPO:PATTERN` = the matching ones), and the policy picks which of them go. Without
    /// one, every target is removed as named.
    pub retention: Option<Retention>,
    /// Targets or everything.
    pub scope: Scope,
}

/// A tag a retention policy keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeptTag {
    /// The repository.
    pub repo: String,
    /// The tag.
    pub tag: String,
    /// Why it stays.
    #[serde(flatten)]
    pub why: Kept,
}

/// What one removal takes away.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum What {
    /// `_manifests/tags/<name>` of the repository (never `tags/` itself).
    Tag {
        /// The tag.
        name: String,
        /// The manifest it pointed at, if its link was readable.
        #[serde(skip_serializing_if = "Option::is_none")]
        manifest: Option<Digest>,
    },
    /// The repository's own `_manifests`, `_layers` and `_uploads`; nested repositories stay.
    Repository {
        /// Tags it had.
        tags: usize,
    },
}

/// One planned removal.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Removal {
    /// The repository.
    pub repo: String,
    /// What goes.
    #[serde(flatten)]
    pub what: What,
    /// Why: the target (or policy) that selected it.
    pub reason: String,
}

/// A named target that does not exist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Missing {
    /// The target as written.
    pub target: String,
    /// Why it counts as missing.
    pub reason: String,
}

/// The plan.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Plan {
    /// Removals, sorted by repository; a repository's whole removal replaces its tag removals.
    pub removals: Vec<Removal>,
    /// Literal targets that do not exist (exit 1 unless `--ignore-missing`).
    pub missing: Vec<Missing>,
    /// Patterns that matched nothing (reported, not an error).
    pub unmatched: Vec<String>,
    /// Tags a retention policy keeps, with the reason.
    pub kept: Vec<KeptTag>,
    /// Where untagged manifests may be pruned.
    pub prune_scope: PruneScope,
}

/// The repositories a run's pruning may touch.
///
/// Why not the whole store: an untagged manifest elsewhere may be a digest-pinned deployment
/// (`app@sha256:…`) that is not the run's business. `regclean app:pr-1` prunes in `app` only;
/// store-wide pruning is asked for with `--all` or `--gc-only`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PruneScope {
    /// Every repository (`--all`, `--gc-only`).
    #[default]
    Store,
    /// The repositories the targets name or match.
    Repositories(BTreeSet<String>),
}

impl PruneScope {
    /// Does the scope include repository `name`?
    pub fn contains(&self, name: &str) -> bool {
        match self {
            PruneScope::Store => true,
            PruneScope::Repositories(s) => s.contains(name),
        }
    }
}

impl Plan {
    /// Number of tag removals and repository removals.
    pub fn counts(&self) -> (usize, usize) {
        let repos = self
            .removals
            .iter()
            .filter(|r| matches!(r.what, What::Repository { .. }))
            .count();
        (self.removals.len() - repos, repos)
    }
}

/// Builds the plan. `now` is unused by explicit targets; retention measures ages from it.
pub fn plan(inv: &Inventory, req: &Request, now: SystemTime) -> Plan {
    let mut out = Plan::default();
    // (repo, tag or None for the whole repository) -> reason; a BTreeMap dedups and sorts.
    let mut chosen: BTreeMap<(String, Option<String>), String> = BTreeMap::new();
    let mut touched: BTreeSet<String> = BTreeSet::new();
    for t in &req.targets {
        let text = t.to_string();
        let repos: Vec<&Repo> = match t.repo.literal() {
            Some(name) => match inv.repos.binary_search_by(|r| r.name.as_str().cmp(name)) {
                Ok(i) => vec![&inv.repos[i]],
                Err(_) => {
                    out.missing.push(Missing {
                        target: text,
                        reason: missing_repo_reason(inv, name),
                    });
                    continue;
                }
            },
            None => inv
                .repos
                .iter()
                .filter(|r| t.repo.matches(&r.name))
                .collect(),
        };
        let mut matched = false;
        for repo in repos {
            if t.repo.literal().is_some() {
                touched.insert(repo.name.clone());
            }
            match &t.tag {
                None => {
                    matched = true;
                    chosen
                        .entry((repo.name.clone(), None))
                        .or_insert_with(|| text.clone());
                }
                Some(tm) => match tm.literal() {
                    Some(tag) => {
                        if repo.tag(tag).is_some() {
                            matched = true;
                            chosen
                                .entry((repo.name.clone(), Some(tag.to_string())))
                                .or_insert_with(|| text.clone());
                        } else if t.repo.literal().is_some() {
                            out.missing.push(Missing {
                                target: text.clone(),
                                reason: format!("repository '{}' has no tag '{tag}'", repo.name),
                            });
                            matched = true; // reported as missing, not as an unmatched pattern
                        }
                    }
                    None => {
                        for tag in repo.tags.iter().filter(|x| tm.matches(&x.name)) {
                            matched = true;
                            chosen
                                .entry((repo.name.clone(), Some(tag.name.clone())))
                                .or_insert_with(|| text.clone());
                        }
                    }
                },
            }
        }
        if !matched {
            out.unmatched.push(text);
        }
    }
    let store_wide = req.scope == Scope::All || req.targets.is_empty();
    if let Some(ret) = &req.retention {
        retain(inv, req.scope, ret, &chosen, now, &mut out);
        out.prune_scope = prune_scope(store_wide, touched, &out.removals);
        return out;
    }
    for ((repo_name, tag), reason) in &chosen {
        let repo = &inv.repos[inv
            .repos
            .binary_search_by(|r| r.name.as_str().cmp(repo_name))
            .expect("chosen from inventory")];
        let what = match tag {
            None => What::Repository {
                tags: repo.tags.len(),
            },
            Some(tag) => {
                if chosen.contains_key(&(repo_name.clone(), None)) {
                    continue; // the whole repository goes anyway
                }
                What::Tag {
                    name: tag.clone(),
                    manifest: repo.tag(tag).and_then(|t| t.current.digest()),
                }
            }
        };
        out.removals.push(Removal {
            repo: repo_name.clone(),
            what,
            reason: reason.clone(),
        });
    }
    out.removals.sort_by(|a, b| {
        (&a.repo, matches!(a.what, What::Tag { .. }), &a.what).cmp(&(
            &b.repo,
            matches!(b.what, What::Tag { .. }),
            &b.what,
        ))
    });
    out.prune_scope = prune_scope(store_wide, touched, &out.removals);
    out
}

/// The run's pruning scope: store-wide for `--all` and `--gc-only`; otherwise the repositories
/// a target names literally plus those where the run removes something. A pattern such as
/// `'*:pr-*'` thus prunes only where it removed a tag, not in every repository it matched.
fn prune_scope(store_wide: bool, mut named: BTreeSet<String>, removals: &[Removal]) -> PruneScope {
    if store_wide {
        return PruneScope::Store;
    }
    named.extend(removals.iter().map(|r| r.repo.clone()));
    PruneScope::Repositories(named)
}

/// Applies a retention policy to the tags `chosen` selects (or to every tag with `--all`).
fn retain(
    inv: &Inventory,
    scope: Scope,
    ret: &Retention,
    chosen: &BTreeMap<(String, Option<String>), String>,
    now: SystemTime,
    out: &mut Plan,
) {
    // repo -> None (all its tags) or the selected tag names.
    let mut sel: BTreeMap<&str, Option<BTreeSet<&str>>> = BTreeMap::new();
    match scope {
        Scope::All => sel.extend(inv.repos.iter().map(|r| (r.name.as_str(), None))),
        Scope::Targets => {
            for (repo, tag) in chosen.keys() {
                let e = sel
                    .entry(repo.as_str())
                    .or_insert_with(|| Some(BTreeSet::new()));
                match (tag, e) {
                    (None, e) => *e = None,
                    (Some(t), Some(set)) => {
                        set.insert(t.as_str());
                    }
                    (Some(_), None) => {}
                }
            }
        }
    }
    for (name, tags) in sel {
        let repo = &inv.repos[inv
            .repos
            .binary_search_by(|r| r.name.as_str().cmp(name))
            .expect("from inventory")];
        let cands: Vec<&Tag> = repo
            .tags
            .iter()
            .filter(|t| tags.as_ref().is_none_or(|s| s.contains(t.name.as_str())))
            .collect();
        let (remove, kept) = retention::decide(&cands, ret, now);
        for (t, why) in remove {
            out.removals.push(Removal {
                repo: repo.name.clone(),
                what: What::Tag {
                    name: t.name.clone(),
                    manifest: t.current.digest(),
                },
                reason: why,
            });
        }
        out.kept.extend(kept.into_iter().map(|(t, why)| KeptTag {
            repo: repo.name.clone(),
            tag: t.name.clone(),
            why,
        }));
    }
    out.removals.sort();
    out.kept
        .sort_by(|a, b| (&a.repo, &a.tag).cmp(&(&b.repo, &b.tag)));
}

fn missing_repo_reason(inv: &Inventory, name: &str) -> String {
    let prefix = format!("{name}/");
    let nested = inv
        .repos
        .iter()
        .filter(|r| r.name.starts_with(&prefix))
        .count();
    if nested > 0 {
        format!(
            "'{name}' is not a repository, only the parent of {nested} nested repositories (to remove those, name '{name}/**')"
        )
    } else {
        format!("no repository '{name}'")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Link;

    fn d(n: u8) -> Digest {
        Digest([n; 32])
    }

    fn repo(name: &str, tags: &[(&str, u8)]) -> Repo {
        Repo {
            name: name.into(),
            has_manifests: true,
            has_layers: true,
            has_tags_dir: true,
            tags: tags
                .iter()
                .map(|(t, m)| Tag {
                    name: t.to_string(),
                    current: Link::Ok(d(*m)),
                    pushed: None,
                    history: vec![d(*m)],
                })
                .collect(),
            ..Repo::default()
        }
    }

    fn inv() -> Inventory {
        let mut repos = vec![
            repo("app", &[("pr-1", 1), ("pr-2", 2), ("v1", 3)]),
            repo("team/app", &[("latest", 4), ("v1", 4)]),
            repo("team/app/api", &[("v1", 5)]),
            repo("team/web", &[("v1", 6)]),
            repo("other/x/deep", &[("v1", 7)]),
        ];
        repos.sort_by(|a, b| a.name.cmp(&b.name));
        Inventory {
            repos,
            oddities: vec![],
            empty_dirs: vec![],
        }
    }

    fn run(targets: &[&str]) -> Plan {
        let targets = targets.iter().map(|t| Target::parse(t).unwrap()).collect();
        plan(
            &inv(),
            &Request {
                targets,
                ..Request::default()
            },
            SystemTime::UNIX_EPOCH,
        )
    }

    fn summary(p: &Plan) -> Vec<String> {
        p.removals
            .iter()
            .map(|r| match &r.what {
                What::Tag { name, .. } => format!("{}:{name}", r.repo),
                What::Repository { .. } => r.repo.clone(),
            })
            .collect()
    }

    fn scope(p: &Plan) -> Vec<String> {
        match &p.prune_scope {
            PruneScope::Store => vec!["<store>".into()],
            PruneScope::Repositories(r) => r.iter().cloned().collect(),
        }
    }

    #[test]
    fn pruning_scope_is_the_named_repositories_and_those_a_pattern_removed_from() {
        // Named literally: pruned there even if the tag is missing.
        assert_eq!(scope(&run(&["app:pr-1"])), ["app"]);
        assert_eq!(scope(&run(&["team/web:nosuch"])), ["team/web"]);
        // A pattern matching many repositories prunes only where it removed something.
        assert_eq!(scope(&run(&["**:pr-*"])), ["app"]);
        assert_eq!(scope(&run(&["team/*"])), ["team/app", "team/web"]);
        // --gc-only (no targets) and --all are store-wide.
        assert_eq!(scope(&run(&[])), ["<store>"]);
        let all = plan(
            &inv(),
            &Request {
                scope: Scope::All,
                retention: Some(Retention::default()),
                ..Request::default()
            },
            SystemTime::UNIX_EPOCH,
        );
        assert_eq!(scope(&all), ["<store>"]);
    }

    #[test]
    fn literal_tag_removes_only_that_tag() {
        let p = run(&["app:pr-1"]);
        assert_eq!(summary(&p), ["app:pr-1"]);
        assert!(p.missing.is_empty() && p.unmatched.is_empty());
        assert_eq!(
            p.removals[0].what,
            What::Tag {
                name: "pr-1".into(),
                manifest: Some(d(1))
            }
        );
    }

    #[test]
    fn last_tag_is_never_upgraded_to_repository() {
        let p = run(&["team/web:v1"]);
        assert_eq!(summary(&p), ["team/web:v1"]);
        let p = run(&["app:*"]);
        assert_eq!(summary(&p), ["app:pr-1", "app:pr-2", "app:v1"]);
    }

    #[test]
    fn repository_removal_does_not_select_nested_repositories() {
        let p = run(&["team/app"]);
        assert_eq!(summary(&p), ["team/app"]);
    }

    #[test]
    fn namespace_only_is_missing_with_a_hint() {
        let p = run(&["team"]);
        assert!(p.removals.is_empty());
        assert_eq!(p.missing.len(), 1);
        assert!(
            p.missing[0].reason.contains("team/**"),
            "{}",
            p.missing[0].reason
        );
    }

    #[test]
    fn patterns_select_by_depth() {
        assert_eq!(summary(&run(&["team/*"])), ["team/app", "team/web"]);
        assert_eq!(
            summary(&run(&["team/**"])),
            ["team/app", "team/app/api", "team/web"]
        );
        assert_eq!(
            summary(&run(&["team/**:v1"])),
            ["team/app:v1", "team/app/api:v1", "team/web:v1"]
        );
        assert_eq!(summary(&run(&["app:pr-*"])), ["app:pr-1", "app:pr-2"]);
    }

    #[test]
    fn missing_and_unmatched_are_reported_and_others_still_planned() {
        let p = run(&["nosuch", "app:nosuch", "app:pr-1", "zzz/*", "app:zz*"]);
        assert_eq!(summary(&p), ["app:pr-1"]);
        let m: Vec<_> = p.missing.iter().map(|m| m.target.as_str()).collect();
        assert_eq!(m, ["nosuch", "app:nosuch"]);
        assert_eq!(p.unmatched, ["zzz/*", "app:zz*"]);
    }

    #[test]
    fn whole_repository_subsumes_its_tags_and_duplicates_collapse() {
        let p = run(&["app:pr-1", "app", "app", "app:*"]);
        assert_eq!(summary(&p), ["app"]);
        assert_eq!(p.counts(), (0, 1));
        let p = run(&["app:pr-1", "app:pr-*"]);
        assert_eq!(summary(&p), ["app:pr-1", "app:pr-2"]);
        assert_eq!(p.removals[0].reason, "app:pr-1");
    }

    fn retention_plan(targets: &[&str], scope: Scope, keep_last: usize) -> Plan {
        // app: pr-1 oldest ... v1 newest (pushed 1, 2, 3 days after the epoch).
        let mut inv = inv();
        for r in &mut inv.repos {
            for (i, t) in r.tags.iter_mut().enumerate() {
                t.pushed = Some(
                    SystemTime::UNIX_EPOCH
                        + std::time::Duration::from_secs(86_400 * (i as u64 + 1)),
                );
            }
        }
        let targets = targets.iter().map(|t| Target::parse(t).unwrap()).collect();
        let retention = Some(Retention {
            keep_last: Some(keep_last),
            ..Retention::default()
        });
        plan(
            &inv,
            &Request {
                targets,
                retention,
                scope,
            },
            SystemTime::UNIX_EPOCH,
        )
    }

    #[test]
    fn retention_on_a_repository_target_removes_tags_never_the_repository() {
        let p = retention_plan(&["app"], Scope::Targets, 1);
        assert_eq!(summary(&p), ["app:pr-1", "app:pr-2"]);
        assert_eq!(p.kept.len(), 1);
        assert_eq!(p.kept[0].tag, "v1");
        assert!(p.removals[0].reason.contains("beyond the 1 newest"));
    }

    #[test]
    fn retention_on_a_tag_pattern_only_considers_matching_tags() {
        let p = retention_plan(&["app:pr-*"], Scope::Targets, 1);
        assert_eq!(summary(&p), ["app:pr-1"]);
        assert_eq!(
            p.kept.iter().map(|k| k.tag.as_str()).collect::<Vec<_>>(),
            ["pr-2"]
        );
    }

    #[test]
    fn retention_scope_is_the_targets_or_everything() {
        let p = retention_plan(&["team/app"], Scope::Targets, 1);
        assert_eq!(
            summary(&p),
            ["team/app:latest"],
            "nested team/app/api is not in scope"
        );
        let p = retention_plan(&[], Scope::All, 1);
        assert_eq!(summary(&p), ["app:pr-1", "app:pr-2", "team/app:latest"]);
        let p = retention_plan(&["team/**"], Scope::Targets, 5);
        assert!(p.removals.is_empty());
    }

    #[test]
    fn literal_tag_in_pattern_repos_is_not_missing() {
        // `*:v1` finds v1 wherever it exists; repositories without it are not "missing".
        let p = run(&["team/*:v1"]);
        assert_eq!(summary(&p), ["team/app:v1", "team/web:v1"]);
        assert!(p.missing.is_empty());
    }
}
