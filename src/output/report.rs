//! The report: one summary of the run, printed as text or as one JSON object on stdout.

use crate::apply::Outcome;
use crate::cli::MissingPolicy;
use crate::collect::{GcReport, GcStatus};
use crate::config::RootSource;
use crate::digest::Digest;
use crate::exit::Exit;
use crate::plan::{KeptTag, Missing, What};
use crate::scan::Oddity;
use crate::trash::Deleted;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;

/// Per repository, its report lines.
type Lines<'a> = BTreeMap<&'a str, Vec<String>>;

/// Everything a run did or would do.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The storage root cleaned.
    pub root: String,
    /// Where the root came from.
    pub root_source: RootSource,
    /// The registry config read, if any.
    pub config: Option<String>,
    /// True for `--dry-run`: `removals` are planned, not done.
    pub dry_run: bool,
    /// Removals, planned or carried out (with `error` when one failed).
    pub removals: Vec<Outcome>,
    /// Named targets that do not exist.
    pub missing: Vec<Missing>,
    /// Patterns that matched nothing.
    pub unmatched: Vec<String>,
    /// Tags a retention policy keeps, and why.
    pub kept: Vec<KeptTag>,
    /// Repositories the run named that no policy matches (left untouched).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub no_policy: Vec<String>,
    /// Trash directories of interrupted runs found at start (emptied unless dry run).
    pub leftover_trash_runs: usize,
    /// What emptying the trash deleted.
    pub deleted: Deleted,
    /// Odd entries found in the store (symlinks, malformed links, ...); never touched.
    pub oddities: Vec<Oddity>,
    /// Pruning and garbage collection.
    pub gc: GcReport,
    /// Failures after the plan was made (pruning, the registry's collector).
    pub errors: Vec<String>,
    /// Milliseconds per phase.
    pub timings_ms: crate::timing::Timer,
    /// The exit code.
    pub exit_code: i32,
    /// Collection was refused after removal and everything was put back from the trash:
    /// nothing was changed (exit 3).
    pub rolled_back: bool,
    /// The online collection cycle a supervisor ran for this run (see
    /// [`crate::supervise`]), or its error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub supervisor: Option<serde_json::Value>,
    /// What pruning had to spare (protected tags, pinned untagged manifests): passed on to a
    /// supervisor's cycle, which prunes later in another process.
    #[serde(skip)]
    pub spare: Spare,
    /// Requests made to object storage (`s3` driver only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object_requests: Option<u64>,
    /// Where a supervisor's state would be, when not in `root` (a bucket's is local: see
    /// [`crate::supervise::control::object_state_root`]).
    #[serde(skip)]
    pub state_root: Option<std::path::PathBuf>,
}

/// What pruning must spare: protected tags (repository, tag) and pinned untagged manifests
/// (repository, digest).
#[derive(Debug, Default)]
pub struct Spare {
    /// Tags the policy file's `protect` covers.
    pub tags: BTreeSet<(String, String)>,
    /// Untagged manifests `keep_pulled_within` keeps.
    pub manifests: BTreeSet<(String, Digest)>,
}

impl Report {
    /// The exit code for this report under the missing-target policy.
    pub fn exit(&self, missing: MissingPolicy) -> Exit {
        let failed = self.removals.iter().any(|o| o.error.is_some())
            || !self.deleted.errors.is_empty()
            || !self.errors.is_empty();
        if self.gc.status == GcStatus::Refused {
            Exit::Unsafe
        } else if failed || (missing == MissingPolicy::Fail && !self.missing.is_empty()) {
            Exit::Failed
        } else {
            Exit::Done
        }
    }

    /// The JSON form.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("report serializes")
    }

    /// The human form.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let verb = if self.dry_run {
            "would remove"
        } else {
            "removed"
        };
        let done = if self.dry_run {
            "to remove"
        } else if self.rolled_back {
            "removed, then put back"
        } else {
            "removed"
        };
        let (repos, nested) = self.repo_lines(verb);
        for (repo, ls) in repos {
            let _ = writeln!(s, "{repo}");
            for l in ls {
                let _ = writeln!(s, "{l}");
            }
        }
        for m in &self.missing {
            let _ = writeln!(s, "missing: {}: {}", m.target, m.reason);
        }
        for r in &self.no_policy {
            let _ = writeln!(s, "no policy matches {r}: left untouched");
        }
        for u in &self.unmatched {
            let _ = writeln!(s, "pattern '{u}' matched nothing");
        }
        if self.leftover_trash_runs > 0 {
            let what = if self.dry_run {
                "would be emptied by the next run"
            } else {
                "emptied"
            };
            let _ = writeln!(
                s,
                "trash left by {} interrupted run(s): {what}",
                self.leftover_trash_runs
            );
        }
        for e in &self.deleted.errors {
            let _ = writeln!(s, "error: {e}");
        }
        let tags = self
            .removals
            .iter()
            .filter(|o| o.error.is_none() && matches!(o.removal.what, What::Tag { .. }))
            .count();
        let repos = self
            .removals
            .iter()
            .filter(|o| o.error.is_none() && matches!(o.removal.what, What::Repository { .. }))
            .count();
        let failed = self.removals.iter().filter(|o| o.error.is_some()).count();
        let _ = write!(
            s,
            "{}: {tags} tag(s) and {repos} repositor{} {done}",
            if self.dry_run {
                "Dry run"
            } else if self.rolled_back {
                "Refused"
            } else {
                "Done"
            },
            if repos == 1 { "y" } else { "ies" }
        );
        if failed > 0 {
            let _ = write!(s, ", {failed} failed");
        }
        if !self.dry_run {
            let _ = write!(s, "; {} files deleted", self.deleted.files);
            if self.deleted.bytes > 0 {
                let _ = write!(s, " ({} in uploads)", human_bytes(self.deleted.bytes));
            }
        }
        let _ = writeln!(
            s,
            " in {} ({}).",
            self.root,
            root_source_text(self.root_source)
        );
        self.gc_text(&mut s, &nested);
        if let Some(c) = &self.supervisor {
            let error = c
                .get("error")
                .or_else(|| c["report"].get("error"))
                .and_then(|e| e.as_str());
            match error {
                Some(e) => {
                    let _ = writeln!(s, "Supervisor: the online collection cycle failed: {e}");
                }
                None => {
                    let g = &c["report"]["gc"];
                    let _ = writeln!(
                        s,
                        "Supervisor: collected online (read-only for {} ms, cycle {} ms): {} untagged manifest(s) pruned; freed {} blob(s), {}; exit {}.",
                        c["readonly_ms"],
                        c["cycle_ms"],
                        g["pruned"]
                            .as_array()
                            .map(|p| p
                                .iter()
                                .map(|x| x["revisions"].as_array().map_or(0, |r| r.len()))
                                .sum::<usize>())
                            .unwrap_or(0),
                        g["freed_blobs"],
                        human_bytes(g["freed_bytes"].as_u64().unwrap_or(0)),
                        c["exit_code"]
                    );
                }
            }
        }
        if self.rolled_back {
            let _ = writeln!(s, "Nothing was changed: every removal and pruning of this run was put back from the trash.");
        }
        for e in &self.errors {
            let _ = writeln!(s, "error: {e}");
        }
        if !self.oddities.is_empty() {
            let _ = writeln!(
                s,
                "note: {} odd entries in the store were left untouched (-v lists them)",
                self.oddities.len()
            );
        }
        s
    }
}

impl Report {
    /// Per repository: what goes, then (with retention) what stays and why; attachments are
    /// listed under the tag of their subject (those that go with it under its removal).
    /// Also returns the attachments listed so (the GC section lists the others).
    fn repo_lines(&self, verb: &str) -> (Lines<'_>, HashSet<(&str, &str)>) {
        use crate::attach::subject_of;
        let prune = if self.dry_run || self.gc.status != GcStatus::Done {
            "to prune"
        } else {
            "pruned"
        };
        // (repo, subject) -> attachment tags going with the pruning / staying.
        let mut going: HashMap<(&str, Digest), Vec<&str>> = HashMap::new();
        for p in &self.gc.pruned {
            for t in &p.attachments {
                if let Some(d) = subject_of(t) {
                    going.entry((p.repo.as_str(), d)).or_default().push(t);
                }
            }
        }
        let going_set: HashSet<(&str, &str)> = going
            .iter()
            .flat_map(|((r, _), ts)| ts.iter().map(move |t| (*r, *t)))
            .collect();
        let mut staying: HashMap<(&str, Digest), Vec<&str>> = HashMap::new();
        for k in &self.kept {
            if let (crate::retention::Kept::Attachment { .. }, Some(d)) =
                (&k.why, subject_of(&k.tag))
            {
                if !going_set.contains(&(k.repo.as_str(), k.tag.as_str())) {
                    staying
                        .entry((k.repo.as_str(), d))
                        .or_default()
                        .push(&k.tag);
                }
            }
        }
        let mut nested: HashSet<(&str, &str)> = HashSet::new();
        let mut lines: Lines = BTreeMap::new();
        for o in &self.removals {
            let r = &o.removal;
            let (what, manifest) = match &r.what {
                What::Tag { name, manifest } => (
                    match manifest {
                        Some(d) => format!("tag {name} ({})", short(&d.to_string())),
                        None => format!("tag {name}"),
                    },
                    *manifest,
                ),
                What::Repository { tags } => (
                    format!("repository ({tags} tags; nested repositories kept)"),
                    None,
                ),
            };
            let why = if r.reason.is_empty() || !self.dry_run {
                String::new()
            } else {
                format!(" [{}]", r.reason)
            };
            let out = lines.entry(r.repo.as_str()).or_default();
            out.push(match &o.error {
                None => format!("  {verb} {what}{why}"),
                Some(e) => format!("  FAILED to remove {what}: {e}"),
            });
            if let Some(ts) = manifest.and_then(|d| going.remove(&(r.repo.as_str(), d))) {
                for t in ts {
                    out.push(format!("    attachment {t} {prune} with it"));
                    nested.insert((r.repo.as_str(), t));
                }
            }
        }
        for k in &self.kept {
            if matches!(k.why, crate::retention::Kept::Attachment { .. }) {
                continue;
            }
            let out = lines.entry(k.repo.as_str()).or_default();
            out.push(format!("  keep tag {} [{k}]", k.tag));
            if let Some(ts) = k
                .manifest
                .and_then(|d| staying.remove(&(k.repo.as_str(), d)))
            {
                for t in ts {
                    out.push(format!("    attachment {t} stays with it"));
                }
            }
        }
        // Attachments whose subject has no tag line here (an index child, untagged).
        for k in &self.kept {
            if let Some(d) = subject_of(&k.tag) {
                if staying
                    .get(&(k.repo.as_str(), d))
                    .is_some_and(|ts| ts.contains(&k.tag.as_str()))
                {
                    lines
                        .entry(k.repo.as_str())
                        .or_default()
                        .push(format!("  keep tag {} [{k}]", k.tag));
                }
            }
        }
        (lines, nested)
    }

    fn gc_text(&self, s: &mut String, nested: &HashSet<(&str, &str)>) {
        let g = &self.gc;
        let manifests: usize = g.pruned.iter().map(|p| p.revisions.len()).sum();
        let attachments: usize = g.pruned.iter().map(|p| p.attachments.len()).sum();
        let manifests = if attachments == 0 {
            manifests.to_string()
        } else {
            format!("{manifests} (and {attachments} attachment tag(s))")
        };
        let prune = if self.dry_run || g.status != GcStatus::Done {
            "to prune"
        } else {
            "pruned"
        };
        match g.status {
            GcStatus::Skipped => {
                let _ = writeln!(s, "GC: skipped (--no-gc).");
            }
            GcStatus::Deferred => {
                let _ = writeln!(s, "GC: deferred: {}", g.reason.as_deref().unwrap_or(""));
            }
            GcStatus::DryRun => {
                let _ = writeln!(
                    s,
                    "GC (dry run, {} collector): {manifests} untagged manifest(s) {prune} in {} repositor{}; would free {} blob(s), {}.",
                    match g.collector {
                        crate::collect::Collector::Native => "native",
                        crate::collect::Collector::Registry => "registry's",
                    },
                    g.pruned.len(),
                    if g.pruned.len() == 1 { "y" } else { "ies" },
                    g.predicted_blobs,
                    human_bytes(g.predicted_bytes)
                );
                if g.collector == crate::collect::Collector::Native
                    && (g.layer_links > 0 || g.uploads_purged > 0)
                {
                    let _ = writeln!(
                        s,
                        "  and remove {} layer link(s) and {} old upload(s), {}.",
                        g.layer_links,
                        g.uploads_purged,
                        human_bytes(g.uploads_bytes)
                    );
                }
            }
            GcStatus::Done if g.collector == crate::collect::Collector::Native => {
                let _ = writeln!(
                    s,
                    "GC (native collector): {manifests} untagged manifest(s) pruned; freed {} blob(s), {} (predicted {}, {}); {} layer link(s) removed; {} old upload(s) purged, {}.",
                    g.freed_blobs,
                    human_bytes(g.freed_bytes),
                    g.predicted_blobs,
                    human_bytes(g.predicted_bytes),
                    g.layer_links,
                    g.uploads_purged,
                    human_bytes(g.uploads_bytes)
                );
            }
            GcStatus::Done if g.registry_summary.is_none() => {
                let _ = writeln!(
                    s,
                    "GC: {}.",
                    g.reason.as_deref().unwrap_or("nothing to collect")
                );
            }
            GcStatus::Done => {
                let _ = writeln!(
                    s,
                    "GC: {manifests} untagged manifest(s) pruned; freed {} blob(s), {} (predicted {}, {}). Registry: {}",
                    g.freed_blobs,
                    human_bytes(g.freed_bytes),
                    g.predicted_blobs,
                    human_bytes(g.predicted_bytes),
                    g.registry_summary.as_deref().unwrap_or("-")
                );
            }
            GcStatus::Failed => {
                let _ = writeln!(
                    s,
                    "GC: FAILED (untagged manifests pruned: {manifests}); nothing was collected."
                );
            }
            GcStatus::Refused => {
                let _ = writeln!(s, "GC: REFUSED: {}", g.reason.as_deref().unwrap_or(""));
            }
        }
        for p in &g.pruned {
            for tag in &p.attachments {
                if nested.contains(&(p.repo.as_str(), tag.as_str())) {
                    continue;
                }
                let subject = crate::attach::subject_of(tag)
                    .map(|d| d.to_string())
                    .unwrap_or_default();
                let _ = writeln!(
                    s,
                    "  attachment {}:{tag} {prune} with its subject {} (pruned, or not in the repository)",
                    p.repo,
                    short(&subject)
                );
            }
        }
        for h in &g.hazards {
            let _ = writeln!(s, "  hazard {:?} at {}: {}", h.kind, h.at, h.detail);
        }
        if !g.layers_left.is_empty() {
            let _ = writeln!(
                s,
                "  _layers left for the next offline collection (a writable registry serves): {}",
                g.layers_left.join(", ")
            );
        }
        if !g.layers_removed.is_empty() {
            let _ = writeln!(
                s,
                "  {} leftover _layers of repositories without manifests: {}",
                if self.dry_run || g.status != GcStatus::Done {
                    "to remove"
                } else {
                    "removed"
                },
                g.layers_removed.join(", ")
            );
        }
        if let crate::plan::PruneScope::Repositories(r) = &g.prune_scope {
            if matches!(g.status, GcStatus::Done | GcStatus::DryRun) {
                let _ = writeln!(
                    s,
                    "  pruning limited to the {} repositor{} in this run's scope",
                    r.len(),
                    if r.len() == 1 { "y" } else { "ies" }
                );
            }
        }
        if g.restart_required && g.status == GcStatus::Done {
            let _ = writeln!(s, "Restart the registry now: its blob descriptor cache still lists the deleted blobs, and clients would skip uploading them.");
        }
    }
}

fn root_source_text(s: RootSource) -> &'static str {
    match s {
        RootSource::Explicit => "--root or REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY",
        RootSource::Config => "registry config",
        RootSource::Default => "default root",
    }
}

fn short(d: &str) -> &str {
    &d[..d.len().min(19)]
}

/// 1536 → "1.5 KiB".
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn human_bytes_reads_well() {
        assert_eq!(super::human_bytes(0), "0 B");
        assert_eq!(super::human_bytes(1536), "1.5 KiB");
        assert_eq!(super::human_bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }
}
