//! The `gc` stage: decide whether collection may run, predict what it frees, prune untagged
//! manifests, run the registry's collector with a cross-check, and report.

use crate::apply::open_repo;
use crate::blobs::{self, Blobs};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::fsx::DirFd;
use crate::hazard::{self, Hazard};
use crate::live::{self, Serving};
use crate::manifest::Db;
use crate::plan::Removal;
use crate::reach::{self, Prune, Referrers};
use crate::scan::Inventory;
use crate::trash::Trash;
use serde::Serialize;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// What the user asked of the gc stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GcRequest {
    /// Remove, then prune and collect when that is safe (default).
    Auto,
    /// Remove only (`--no-gc`).
    Skip,
    /// Prune and collect only, no removal (`--gc-only`).
    Only,
}

/// Whether untagged manifests are pruned before collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pruning {
    /// Prune untagged manifests nothing kept needs (default).
    Untagged,
    /// Leave them (`--keep-untagged`); the registry then keeps their blobs too.
    Keep,
}

/// What to do about store hazards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HazardPolicy {
    /// Refuse to collect (exit 3), default.
    Refuse,
    /// Collect anyway (`--allow-hazards`).
    Allow,
}

/// What to do when a writable registry serves the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LivePolicy {
    /// Defer (default run) or refuse (explicit `--gc-only`).
    Guard,
    /// Collect anyway (`--gc-while-serving`): concurrent pushes can lose layers.
    Override,
}

/// The gc stage's settings.
#[derive(Debug, Clone)]
pub struct GcSettings {
    /// Requested mode.
    pub request: GcRequest,
    /// Pruning.
    pub pruning: Pruning,
    /// Referrers.
    pub referrers: Referrers,
    /// Hazards.
    pub hazards: HazardPolicy,
    /// Live registry.
    pub live: LivePolicy,
    /// `--registry-bin`.
    pub registry_bin: Option<PathBuf>,
}

/// How the gc stage ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GcStatus {
    /// Pruned and collected.
    Done,
    /// Not run: a writable registry serves the store.
    Deferred,
    /// Not run: `--no-gc`.
    Skipped,
    /// Dry run: predicted only.
    DryRun,
    /// Refused as unsafe (hazards, or the cross-check).
    Refused,
    /// The registry's collector failed (see the report's errors).
    Failed,
}

/// The gc part of the report.
#[derive(Debug, Clone, Serialize)]
pub struct GcReport {
    /// How it ended.
    pub status: GcStatus,
    /// Why (for deferred, skipped, refused), and what to do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Registries found serving this store.
    pub serving: Vec<Serving>,
    /// Untagged manifests pruned (or to prune), per repository.
    pub pruned: Vec<Prune>,
    /// Blobs the collection is predicted to free, and their bytes.
    pub predicted_blobs: usize,
    /// Bytes of `predicted_blobs`.
    pub predicted_bytes: u64,
    /// Blobs actually freed (gone from disk after the registry's run) and their bytes.
    pub freed_blobs: usize,
    /// Bytes of `freed_blobs`.
    pub freed_bytes: u64,
    /// Blobs the registry's own dry run listed (just before the real run).
    pub registry_dry_run_blobs: usize,
    /// Whether regclean's prediction equalled the registry's dry-run list exactly.
    pub prediction_exact: bool,
    /// The registry's summary line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registry_summary: Option<String>,
    /// Hazards found.
    pub hazards: Vec<Hazard>,
    /// Blobs the registry would have swept that regclean considers reachable.
    pub conflicts: Vec<Digest>,
    /// The serving registry must be restarted to drop its blob descriptor cache.
    pub restart_required: bool,
}

impl GcReport {
    fn new(status: GcStatus) -> GcReport {
        GcReport {
            status,
            reason: None,
            serving: Vec::new(),
            pruned: Vec::new(),
            predicted_blobs: 0,
            predicted_bytes: 0,
            freed_blobs: 0,
            freed_bytes: 0,
            registry_dry_run_blobs: 0,
            prediction_exact: false,
            registry_summary: None,
            hazards: Vec::new(),
            conflicts: Vec::new(),
            restart_required: false,
        }
    }
}

/// The decision taken before anything changes.
pub struct Prepared {
    /// The report so far.
    pub report: GcReport,
    /// Whether to prune and collect after removal.
    pub run: bool,
    /// The manifest cache (when predictions were made).
    pub db: Option<Db>,
    /// The registry binary, found before any change so that a missing one changes nothing.
    pub bin: Option<PathBuf>,
}

const DEFER_ADVICE: &str = "pruning and garbage collection are deferred because a writable registry serves this store (collecting now could lose layers of concurrent pushes). To free the disk: restart the container (the entrypoint hook collects before the registry serves), or run `regclean --gc-only` while the registry is stopped or read-only (storage.maintenance.readonly.enabled: true)";

/// Loads every manifest the inventory names (revisions, tag targets, and children of
/// indexes, until none is new).
pub fn load_db(v2: &DirFd, inv: &Inventory) -> Db {
    let mut wanted: Vec<Digest> = inv
        .repos
        .iter()
        .flat_map(|r| r.revisions.iter().copied())
        .collect();
    wanted.extend(hazard::tag_targets(inv));
    let mut db = Db::load(v2, wanted);
    loop {
        let missing = db.unloaded_children();
        if missing.is_empty() {
            return db;
        }
        db.extend(v2, missing);
    }
}

/// Decides, predicts and checks hazards — before any change. `Err(Unsafe)` means refuse now.
pub fn prepare(
    s: &GcSettings,
    dry_run: bool,
    root: &Path,
    v2: &DirFd,
    repos_dir: Option<&DirFd>,
    inv: &Inventory,
    removals: &[Removal],
) -> Result<Prepared> {
    if s.request == GcRequest::Skip {
        let mut report = GcReport::new(GcStatus::Skipped);
        report.reason =
            Some("--no-gc: removal only; the disk is freed by a later collection".into());
        return Ok(Prepared {
            report,
            run: false,
            db: None,
            bin: None,
        });
    }
    let serving = live::serving(root);
    let writable: Vec<&Serving> = serving.iter().filter(|x| !x.readonly).collect();
    let mut report = GcReport::new(if dry_run {
        GcStatus::DryRun
    } else {
        GcStatus::Done
    });
    report.restart_required = !serving.is_empty();
    if !writable.is_empty() && s.live == LivePolicy::Guard {
        let who = writable
            .iter()
            .map(|w| format!("pid {} ({})", w.pid, w.cmdline))
            .collect::<Vec<_>>()
            .join(", ");
        if s.request == GcRequest::Only {
            return Err(Error::Unsafe(format!(
                "refusing to collect: a writable registry serves this store: {who}. Stop it or restart it read-only (storage.maintenance.readonly.enabled: true, or REGISTRY_STORAGE_MAINTENANCE_READONLY='{{\"enabled\":true}}'), then run again; --gc-while-serving overrides at the risk of losing layers of concurrent pushes"
            )));
        }
        report.status = GcStatus::Deferred;
        report.reason = Some(format!("{DEFER_ADVICE}. Serving: {who}"));
        report.serving = serving.clone();
        if !dry_run {
            return Ok(Prepared {
                report,
                run: false,
                db: None,
                bin: None,
            });
        }
    }
    report.serving = serving;

    let db = load_db(v2, inv);
    let mut after = reach::after_removals(inv, removals);
    hazard::without_removed(&mut after, removals);
    report.pruned = match s.pruning {
        Pruning::Untagged => reach::prune_plan(&after, &db, s.referrers),
        Pruning::Keep => Vec::new(),
    };
    let fin = reach::after_prune(after, &report.pruned);
    let mut hazards = hazard::check(&fin, &db);
    if let Some(r) = repos_dir {
        hazards.extend(hazard::check_revision_links(r, &fin));
    }
    let all: Blobs = blobs::list(v2)?;
    hazards.extend(hazard::special_blobs(&all));
    let marks = reach::registry_marks(&fin, &db);
    let predicted = reach::swept(all.sizes.keys().copied(), &marks);
    let reachable = reach::reachable_blobs(&fin, &db, s.referrers);
    report.conflicts = predicted
        .iter()
        .filter(|d| reachable.contains(*d) && all.sizes.contains_key(*d))
        .copied()
        .collect();
    report.predicted_blobs = predicted.len();
    report.predicted_bytes = all.bytes(&predicted);
    report.hazards = hazards;
    let refuse = (!report.hazards.is_empty() || !report.conflicts.is_empty())
        && s.hazards == HazardPolicy::Refuse;
    if refuse && report.status != GcStatus::Deferred {
        report.status = GcStatus::Refused;
        report.reason = Some(refusal_reason(&report));
        if !dry_run {
            return Err(Error::Unsafe(report.reason.clone().unwrap_or_default()));
        }
    }
    let bin = if dry_run {
        None
    } else {
        Some(crate::gc::find_binary(s.registry_bin.as_deref())?)
    };
    Ok(Prepared {
        run: !dry_run,
        report,
        db: Some(db),
        bin,
    })
}

fn refusal_reason(r: &GcReport) -> String {
    let mut parts = Vec::new();
    if !r.hazards.is_empty() {
        let first: Vec<String> = r
            .hazards
            .iter()
            .take(5)
            .map(|h| format!("{:?} at {}: {}", h.kind, h.at, h.detail))
            .collect();
        parts.push(format!(
            "{} store hazard(s) make the registry's GC unsafe: {}",
            r.hazards.len(),
            first.join("; ")
        ));
    }
    if !r.conflicts.is_empty() {
        let first: Vec<String> = r.conflicts.iter().take(5).map(|d| d.to_string()).collect();
        parts.push(format!(
            "the registry's GC would delete {} blob(s) that remaining tags need (e.g. an index child without a revision link): {}",
            r.conflicts.len(),
            first.join(", ")
        ));
    }
    format!("refusing to collect, nothing was changed: {}; fix the store (regclean --check lists problems) or pass --allow-hazards to collect anyway", parts.join("; "))
}

/// Removes the pruned revisions and history entries through the trash.
pub fn apply_prune(repos_dir: &DirFd, trash: &Trash, prune: &[Prune]) -> Vec<String> {
    let mut errors = Vec::new();
    for p in prune {
        let r = (|| -> Result<()> {
            let repo = open_repo(repos_dir, &p.repo)?;
            let manifests = repo.sub("_manifests")?;
            // History first: an interrupted run leaves at worst an unpruned revision, never a
            // tag history entry naming a pruned one... either state is valid for the registry.
            if !p.history.is_empty() {
                let tags = manifests.sub("tags")?;
                for (tag, d) in &p.history {
                    let idx = tags.sub(tag).and_then(|t| t.sub("index")?.sub("sha256"));
                    match idx.and_then(|i| trash.take(&i, d.hex(), "history")) {
                        Ok(()) => {}
                        Err(e) => errors.push(e.to_string()),
                    }
                }
            }
            let revs = manifests.sub("revisions")?.sub("sha256")?;
            for d in &p.revisions {
                if let Err(e) = trash.take(&revs, d.hex(), "revision") {
                    errors.push(e.to_string());
                }
            }
            Ok(())
        })();
        if let Err(e) = r {
            errors.push(e.to_string());
        }
    }
    errors
}

/// Runs the registry's collector: a dry run first, cross-checked against what regclean
/// considers reachable on the store as it now is, then the real run.
pub fn collect(
    s: &GcSettings,
    prep: &mut Prepared,
    bin: &Path,
    config: &Path,
    root: &Path,
    v2: &DirFd,
    timer: &mut crate::timing::Timer,
) -> Result<()> {
    let inv = crate::scan::scan(v2)?;
    let db = prep.db.take().unwrap_or_default();
    let db = db.completed(v2, &inv);
    let reachable = reach::reachable_blobs(&inv, &db, s.referrers);
    let sizes = blobs::list(v2)?;
    timer.lap("gc_rescan");
    let dry = crate::gc::run(bin, config, root, true)?;
    timer.lap("gc_registry_dry_run");
    let conflicts: Vec<Digest> = dry
        .swept
        .iter()
        .filter(|d| reachable.contains(*d))
        .copied()
        .collect();
    if !conflicts.is_empty() && s.hazards == HazardPolicy::Refuse {
        prep.report.status = GcStatus::Refused;
        prep.report.conflicts = conflicts;
        prep.report.reason = Some(format!(
            "the registry's dry run would delete {} blob(s) regclean considers reachable (first: {}); nothing was collected",
            prep.report.conflicts.len(),
            prep.report.conflicts[0]
        ));
        return Ok(());
    }
    let marks = reach::registry_marks(&inv, &db);
    let predicted: BTreeSet<Digest> = reach::swept(sizes.sizes.keys().copied(), &marks);
    prep.report.registry_dry_run_blobs = dry.swept.len();
    prep.report.prediction_exact = predicted == dry.swept;
    if predicted != dry.swept {
        tracing::warn!(
            "regclean predicted {} swept blobs, the registry's dry run lists {} (differences: {})",
            predicted.len(),
            dry.swept.len(),
            predicted.symmetric_difference(&dry.swept).count()
        );
    }
    let real = crate::gc::run(bin, config, root, false)?;
    timer.lap("gc_registry_run");
    let freed: Vec<&Digest> = real
        .swept
        .iter()
        .filter(|d| !blobs::exists(v2, d))
        .collect();
    prep.report.freed_blobs = freed.len();
    prep.report.freed_bytes = sizes.bytes(freed);
    prep.report.registry_summary = Some(real.summary);
    prep.report.status = GcStatus::Done;
    Ok(())
}

/// The config file to hand to `garbage-collect`: the registry's own, or (when there is none)
/// a minimal one written to regclean's state directory.
pub fn gc_config(existing: Option<&Path>, state: &DirFd, root: &Path) -> Result<PathBuf> {
    if let Some(p) = existing {
        return Ok(p.to_path_buf());
    }
    let p = state.path().join("gc-config.yml");
    let text = format!(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\n",
        root.display()
    );
    std::fs::write(&p, text).map_err(|e| Error::io("writing", &p, e))?;
    Ok(p)
}
