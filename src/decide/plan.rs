//! The plan: a pure function of the inventory, the request and `now`. All policy lives here so
//! that it is tested without a file system.

use crate::attach::{self, Attachments};
use crate::digest::Digest;
use crate::policy::{Policies, Source, Untagged};
use crate::retention::{self, Kept};
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
    /// With retention policies: the targets select the candidate tags (`REPO` = all its tags,
    /// `REPO:PATTERN` = the matching ones), and the policy that applies to each repository
    /// picks which of them go. Without, every target is removed as named.
    pub retention: Option<Policies>,
    /// Targets or everything.
    pub scope: Scope,
    /// Attachment tags follow their subject, or are plain tags (`--keep-attachments`).
    pub attachments: Attachments,
    /// `--gc-only --prune-in REPO...`: pruning limited to these repositories (the
    /// supervisor's cycle for a run with a narrower scope).
    pub prune_in: Option<BTreeSet<String>>,
    /// Pull activity recorded by the supervisor, for `pulled_within` rules (loaded by the
    /// app once the root is known).
    pub activity: Option<std::sync::Arc<crate::activity::Pulls>>,
    /// `--gc-only --keep-manifest REPO@DIGEST`: untagged manifests kept from pruning.
    pub keep_manifests: BTreeSet<(String, Digest)>,
    /// `--gc-only --protect-tag REPO:TAG`: tags pruning never removes.
    pub protect_tags: BTreeSet<(String, String)>,
}

/// A tag a retention policy keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeptTag {
    /// The repository.
    pub repo: String,
    /// The tag.
    pub tag: String,
    /// The manifest it points to, if its link is readable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest: Option<Digest>,
    /// The number (from 1) of the policy file's policy that kept it; absent for the command
    /// line's retention flags and for `protect`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<usize>,
    /// Why it stays.
    #[serde(flatten)]
    pub why: Kept,
}

impl std::fmt::Display for KeptTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.policy {
            Some(n) => write!(f, "policy {n}: {}", self.why),
            None => write!(f, "{}", self.why),
        }
    }
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
    /// Repositories the run selected that no policy of the policy file matches (untouched).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub no_policy: Vec<String>,
    /// Set when the policy file's `limits` refuse the run (exit 3, before any change).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub over_limit: Option<String>,
    /// How pruning treats attachment tags (from the request).
    #[serde(skip)]
    pub attachments: Attachments,
    /// Tags the policy file's `protect` keeps from everything, pruning included.
    #[serde(skip)]
    pub protected: BTreeSet<(String, String)>,
    /// Untagged manifests a policy's `untagged: {keep_pulled_within}` keeps from pruning
    /// (pulled by digest recently), as (repository, digest).
    #[serde(skip)]
    pub pinned: BTreeSet<(String, Digest)>,
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
    out.attachments = req.attachments;
    if let Some(pol) = &req.retention {
        let prune_repos = retain(inv, req, pol, &chosen, now, &mut out);
        out.prune_scope = match pol.source {
            Source::Flags => prune_scope(store_wide, touched, &out.removals),
            // Repositories no policy matches are untouched, pruning included.
            Source::File => PruneScope::Repositories(prune_repos),
        };
        return out;
    }
    if req.targets.is_empty() && req.retention.is_none() {
        // --gc-only, maybe for a supervisor's cycle: what the triggering run decided.
        out.pinned = req.keep_manifests.clone();
        out.protected = req.protect_tags.clone();
        if let Some(repos) = &req.prune_in {
            out.prune_scope = PruneScope::Repositories(repos.clone());
            return out;
        }
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

/// Applies the retention policies to the tags `chosen` selects (or to every tag with
/// `--all`): per repository, the first policy that matches it, if any. Protected tags and
/// attachments are set apart first (never counted). Returns the repositories whose policy
/// prunes untagged manifests; sets `out.over_limit` when the policy file's limits refuse.
fn retain(
    inv: &Inventory,
    req: &Request,
    pol: &Policies,
    chosen: &BTreeMap<(String, Option<String>), String>,
    now: SystemTime,
    out: &mut Plan,
) -> BTreeSet<String> {
    // repo -> None (all its tags) or the selected tag names.
    let mut sel: BTreeMap<&str, Option<BTreeSet<&str>>> = BTreeMap::new();
    match req.scope {
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
    // What `protect` covers is safe from pruning too, wherever it is.
    if !pol.protect.is_empty() {
        for r in &inv.repos {
            for t in &r.tags {
                if pol.protector(&r.name, &t.name).is_some() {
                    out.protected.insert((r.name.clone(), t.name.clone()));
                }
            }
        }
    }
    let file = pol.source == Source::File;
    let mut prune_repos = BTreeSet::new();
    let mut in_scope = 0usize;
    for (name, tags) in sel {
        let repo = &inv.repos[inv
            .repos
            .binary_search_by(|r| r.name.as_str().cmp(name))
            .expect("from inventory")];
        let Some((number, policy)) = pol.for_repo(name) else {
            // No policy matches: untouched. Said when the user named it.
            if req.scope == Scope::Targets {
                out.no_policy.push(name.to_string());
            }
            continue;
        };
        match policy.untagged {
            Untagged::Delete => {
                prune_repos.insert(name.to_string());
            }
            Untagged::Keep => {}
            Untagged::KeepPulledWithin(d) => {
                prune_repos.insert(name.to_string());
                let cutoff = now.checked_sub(d).unwrap_or(SystemTime::UNIX_EPOCH);
                if let Some(a) = &req.activity {
                    for r in &repo.revisions {
                        if a.digest(name, r).is_some_and(|t| t >= cutoff) {
                            out.pinned.insert((name.to_string(), *r));
                        }
                    }
                }
            }
        }
        let number = file.then_some(number);
        let keep = |t: &Tag, why: Kept, policy: Option<usize>| KeptTag {
            repo: repo.name.clone(),
            tag: t.name.clone(),
            manifest: t.current.digest(),
            policy,
            why,
        };
        let roles = attach::roles(repo, req.attachments);
        let mut cands: Vec<&Tag> = Vec::new();
        for (t, role) in repo.tags.iter().zip(roles) {
            if !tags.as_ref().is_none_or(|s| s.contains(t.name.as_str())) {
                continue;
            }
            if let Some(p) = pol.protector(&repo.name, &t.name) {
                out.kept.push(keep(
                    t,
                    Kept::Protected {
                        pattern: p.to_string(),
                    },
                    None,
                ));
                in_scope += 1;
                continue;
            }
            match role {
                attach::Role::Ordinary => cands.push(t),
                // An orphan goes with the pruning, if its repository is pruned.
                attach::Role::Orphan(_) => {}
                attach::Role::Attachment(s) | attach::Role::External(s) => out.kept.push(keep(
                    t,
                    Kept::Attachment {
                        subject: s.to_string(),
                    },
                    None,
                )),
            }
        }
        in_scope += cands.len();
        let pulled = |t: &Tag| {
            req.activity
                .as_ref()
                .and_then(|a| a.tag(name, &t.name, t.current.digest()))
        };
        let (remove, kept) = retention::decide(&cands, &policy.keep, now, &pulled);
        for (t, why) in remove {
            out.removals.push(Removal {
                repo: repo.name.clone(),
                what: What::Tag {
                    name: t.name.clone(),
                    manifest: t.current.digest(),
                },
                reason: match number {
                    Some(n) => format!("policy {n}: {why}"),
                    None => why,
                },
            });
        }
        out.kept
            .extend(kept.into_iter().map(|(t, why)| keep(t, why, number)));
    }
    out.removals.sort();
    out.kept
        .sort_by(|a, b| (&a.repo, &a.tag).cmp(&(&b.repo, &b.tag)));
    out.over_limit = over_limit(&pol.limits, out.removals.len(), in_scope);
    prune_repos
}

/// The refusal, if removing `removed` of the `in_scope` tags (protected ones included,
/// attachments not) exceeds the policy file's limits.
fn over_limit(l: &crate::policy::Limits, removed: usize, in_scope: usize) -> Option<String> {
    if let Some(max) = l.max_delete_count {
        if removed > max {
            return Some(format!(
                "the policies would remove {removed} tags, more than limits.max_delete_count ({max}); nothing was changed"
            ));
        }
    }
    if let Some(max) = l.max_delete_percent {
        let share = if in_scope == 0 {
            0.0
        } else {
            removed as f64 * 100.0 / in_scope as f64
        };
        if share > max {
            return Some(format!(
                "the policies would remove {removed} of the {in_scope} tags in scope ({share:.1}%), more than limits.max_delete_percent ({max}%); nothing was changed"
            ));
        }
    }
    None
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
                retention: Some(Policies::from_flags(vec![])),
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
        let retention = Some(Policies::from_flags(vec![crate::retention::Rule::Last {
            n: keep_last,
            order: crate::retention::Order::Pushed,
        }]));
        plan(
            &inv,
            &Request {
                targets,
                retention,
                scope,
                attachments: Attachments::Follow,
                prune_in: None,
                activity: None,
                keep_manifests: BTreeSet::new(),
                protect_tags: BTreeSet::new(),
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

    /// `app` holds v1..v4 (pushed on days 1, 3, 5, 7), each signed right after its push
    /// (`sha256-<digest>.sig`, days 2, 4, 6, 8), plus a referrers fallback tag for v4.
    fn signed_inv() -> Inventory {
        let day =
            |n: u64| Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(86_400 * n));
        let mut tags = Vec::new();
        let mut revisions = Vec::new();
        for i in 1..=4u8 {
            let t = |name: String, m: u8, pushed| Tag {
                name,
                current: Link::Ok(d(m)),
                pushed,
                history: vec![d(m)],
            };
            tags.push(t(format!("v{i}"), i, day(2 * i as u64 - 1)));
            tags.push(t(
                format!("sha256-{}.sig", d(i).hex()),
                10 + i,
                day(2 * i as u64),
            ));
            revisions.extend([d(i), d(10 + i)]);
        }
        tags.push(Tag {
            name: format!("sha256-{}", d(4).hex()),
            current: Link::Ok(d(20)),
            pushed: day(9),
            history: vec![d(20)],
        });
        revisions.push(d(20));
        tags.sort_by(|a, b| a.name.cmp(&b.name));
        revisions.sort();
        let mut other = repo("other", &[("old", 30), ("new", 31)]);
        for (i, t) in other.tags.iter_mut().enumerate() {
            t.pushed = day(i as u64 + 1);
        }
        Inventory {
            repos: vec![
                Repo {
                    tags,
                    revisions,
                    ..repo("app", &[])
                },
                other,
            ],
            oddities: vec![],
            empty_dirs: vec![],
        }
    }

    fn policy_plan(inv: &Inventory, pol: Policies, attachments: Attachments) -> Plan {
        plan(
            inv,
            &Request {
                targets: vec![],
                retention: Some(pol),
                scope: Scope::All,
                attachments,
                prune_in: None,
                activity: None,
                keep_manifests: BTreeSet::new(),
                protect_tags: BTreeSet::new(),
            },
            SystemTime::UNIX_EPOCH,
        )
    }

    fn last(n: usize) -> Policies {
        Policies::from_flags(vec![crate::retention::Rule::Last {
            n,
            order: crate::retention::Order::Pushed,
        }])
    }

    #[test]
    fn signatures_never_count_toward_keep_last_so_signed_images_stay() {
        let p = policy_plan(&signed_inv(), last(2), Attachments::Follow);
        assert_eq!(summary(&p), ["app:v1", "app:v2"]);
        let attachments: Vec<&str> = p
            .kept
            .iter()
            .filter(|k| matches!(k.why, Kept::Attachment { .. }))
            .map(|k| k.tag.as_str())
            .collect();
        assert_eq!(attachments.len(), 5, "{:?}", p.kept);
        // Plain tag semantics: the four newest tags are signatures and the fallback tag.
        let p = policy_plan(&signed_inv(), last(2), Attachments::Plain);
        assert!(
            summary(&p).contains(&"app:v4".to_string()),
            "{:?}",
            summary(&p)
        );
    }

    #[test]
    fn policy_file_protect_first_match_exclude_untagged_and_limits() {
        let mut inv = inv();
        for r in &mut inv.repos {
            for (i, t) in r.tags.iter_mut().enumerate() {
                t.pushed = Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(i as u64));
            }
        }
        let pol = |yaml: &str| Policies::parse(yaml).unwrap();
        let p = policy_plan(
            &inv,
            pol(r#"
version: 1
protect: ["**:v1"]
policies:
  - repositories: ["team/**"]
    exclude: ["team/web"]
    keep: [{tags: '^latest$'}]
    untagged: keep
  - repositories: ["app"]
    keep: [{last: 1, order: name}]
"#),
            Attachments::Follow,
        );
        // team/app: v1 protected, latest kept by regex; team/app/api: v1 protected;
        // team/web and other/x/deep: no policy, untouched; app: pr-2 kept by name order.
        assert_eq!(summary(&p), ["app:pr-1"]);
        let why = |repo: &str, tag: &str| {
            p.kept
                .iter()
                .find(|k| k.repo == repo && k.tag == tag)
                .map(|k| k.to_string())
                .unwrap_or_default()
        };
        assert_eq!(why("team/app", "v1"), "protected by '**:v1'");
        assert_eq!(why("team/app", "latest"), "policy 1: matches '^latest$'");
        assert_eq!(why("app", "pr-2"), "policy 2: #1 by name");
        assert_eq!(why("team/web", "v1"), "", "no policy matches team/web");
        assert_eq!(p.removals[0].reason, "policy 2: beyond the first 1 by name");
        // Pruning only where a policy says untagged: delete.
        assert_eq!(scope(&p), ["app"]);
        assert!(p
            .protected
            .contains(&("team/web".to_string(), "v1".to_string())));
        let limited = |l: &str| {
            policy_plan(
                &inv,
                pol(&format!(
                    "version: 1\nlimits: {{{l}}}\npolicies: [{{repositories: ['**'], keep: [{{last: 1}}]}}]\n"
                )),
                Attachments::Follow,
            )
            .over_limit
        };
        // 8 tags, 3 removed (app: 2, team/app: 1) = 37.5%.
        assert!(limited("max_delete_count: 3").is_none());
        assert!(limited("max_delete_count: 2").unwrap().contains("3 tags"));
        assert!(limited("max_delete_percent: 40").is_none());
        let e = limited("max_delete_percent: 30").unwrap();
        assert!(e.contains("3 of the 8 tags") && e.contains("37.5%"), "{e}");
    }
}
