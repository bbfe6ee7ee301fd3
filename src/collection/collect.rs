//! The `gc` stage: decide whether collection may run, predict what it frees, prune untagged
//! manifests, run the registry's collector with a cross-check, and report.

use crate::apply::{open_repo, Layers};
use crate::blobs::{self, Blobs};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::fsx::DirFd;
use crate::hazard::{self, Hazard};
use crate::live::Serving;
use crate::manifest::Db;
use crate::plan::{Plan, PruneScope, What};
use crate::reach::{self, Prune, Referrers};
use crate::scan::Inventory;
use crate::storage::Storage;
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
    /// `--collector`.
    pub collector: CollectorChoice,
    /// `--registry-bin`.
    pub registry_bin: Option<PathBuf>,
}

/// `--collector`: which collector frees the blobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CollectorChoice {
    /// The registry's when its binary is found (as in the image), else native (default).
    Auto,
    /// regclean's own.
    Native,
    /// The registry's `garbage-collect`.
    Registry,
}

/// The collector a run uses (reported).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Collector {
    /// regclean's own: every unreferenced blob directory goes by one rename into the trash.
    Native,
    /// The registry's `garbage-collect`, cross-checked by its own dry run.
    Registry,
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
    /// Which collector runs (or would run).
    pub collector: Collector,
    /// `_layers` links of swept blobs (or of blobs already gone) removed by the native
    /// collector.
    pub layer_links: usize,
    /// Uploads older than `storage.maintenance.uploadpurging.age` purged by the native
    /// collector, and their bytes.
    pub uploads_purged: usize,
    /// Bytes of `uploads_purged`.
    pub uploads_bytes: u64,
    /// Where pruning applied: the whole store, or the repositories the run touched.
    pub prune_scope: PruneScope,
    /// Repositories removed next to a writable registry whose `_layers` were left for the
    /// next offline collection (see [`crate::apply::Layers`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub layers_left: Vec<String>,
    /// Repositories without manifests whose leftover `_layers` this collection removes (left
    /// by an earlier removal next to a serving registry).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub layers_removed: Vec<String>,
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
            collector: Collector::Native,
            layer_links: 0,
            uploads_purged: 0,
            uploads_bytes: 0,
            prune_scope: PruneScope::Store,
            layers_left: Vec::new(),
            layers_removed: Vec::new(),
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
    /// Whether repository removals take `_layers` (not next to a writable registry).
    pub layers: Layers,
    /// What the native collector takes (empty for the registry's).
    pub sweep: Sweep,
}

/// What the native collector takes, all decided before the first change.
#[derive(Debug, Default)]
pub struct Sweep {
    /// Blobs nothing marks, with their sizes (the predicted set).
    pub blobs: Vec<(Digest, u64)>,
    /// `_layers` links to remove: per repository, the digests of swept (or absent, unmarked)
    /// blobs.
    pub links: Vec<(String, Vec<Digest>)>,
    /// Uploads to purge: repository, upload directory name, bytes of its data.
    pub uploads: Vec<(String, std::ffi::OsString, u64)>,
}

/// What the gc stage decides from.
pub struct Inputs<'a> {
    /// `--dry-run`.
    pub dry_run: bool,
    /// The store, read through its storage (filesystem or object store).
    pub store: &'a dyn Storage,
    /// `repositories/`, if the store has one.
    pub repos_dir: Option<&'a DirFd>,
    /// The inventory before any change.
    pub inv: &'a Inventory,
    /// The plan (its removals and its pruning scope).
    pub plan: &'a Plan,
    /// Registries serving this store ([`crate::live::serving`]).
    pub serving: Vec<Serving>,
    /// A supervisor (`regclean supervise`) fronts the registry and collects in its read-only
    /// cycle: an explicit `--gc-only` next to it is deferred to that cycle, not refused.
    pub supervised: bool,
    /// The registry's config (upload purging settings).
    pub config: Option<&'a crate::config::RegistryConfig>,
    /// Now (upload ages).
    pub now: std::time::SystemTime,
}

const DEFER_ADVICE: &str = "pruning and garbage collection are deferred because a writable registry serves this store (collecting now could lose layers of concurrent pushes). To free the disk: restart the container (the entrypoint hook collects before the registry serves), or run `regclean --gc-only` while the registry is stopped or read-only (storage.maintenance.readonly.enabled: true)";

/// Loads every manifest the inventory names (revisions, tag targets, and children of
/// indexes, until none is new).
pub fn load_db(store: &dyn Storage, inv: &Inventory) -> Db {
    let mut wanted: Vec<Digest> = inv
        .repos
        .iter()
        .flat_map(|r| r.revisions.iter().copied())
        .collect();
    wanted.extend(hazard::tag_targets(inv));
    let mut db = Db::load(store, wanted);
    loop {
        let missing = db.unloaded_children();
        if missing.is_empty() {
            return db;
        }
        db.extend(store, missing);
    }
}

/// Decides, predicts and checks hazards — before any change. `Err(Unsafe)` means refuse now.
pub fn prepare(s: &GcSettings, i: Inputs<'_>) -> Result<Prepared> {
    let Inputs {
        dry_run,
        store,
        repos_dir,
        inv,
        plan,
        serving,
        supervised,
        config,
        now,
    } = i;
    let removals = &plan.removals;
    let writable: Vec<&Serving> = serving.iter().filter(|x| !x.readonly).collect();
    // Decided even with --no-gc: a repository removal must never take `_layers` next to a
    // writable registry, whatever the gc stage does.
    let layers = if writable.is_empty() {
        Layers::Remove
    } else {
        Layers::Keep
    };
    let layers_left: Vec<String> = match layers {
        Layers::Remove => Vec::new(),
        Layers::Keep => removals
            .iter()
            .filter(|r| matches!(r.what, What::Repository { .. }))
            .map(|r| r.repo.clone())
            .collect(),
    };
    if s.request == GcRequest::Skip {
        let mut report = GcReport::new(GcStatus::Skipped);
        report.reason =
            Some("--no-gc: removal only; the disk is freed by a later collection".into());
        report.layers_left = layers_left;
        report.serving = serving;
        return Ok(Prepared {
            report,
            run: false,
            db: None,
            bin: None,
            layers,
            sweep: Sweep::default(),
        });
    }
    let mut report = GcReport::new(if dry_run {
        GcStatus::DryRun
    } else {
        GcStatus::Done
    });
    report.restart_required = !serving.is_empty();
    report.prune_scope = plan.prune_scope.clone();
    report.layers_left = layers_left;
    if !writable.is_empty() && s.live == LivePolicy::Guard {
        let who = writable
            .iter()
            .map(|w| format!("pid {} ({}: {})", w.pid, w.cmdline, w.reason))
            .collect::<Vec<_>>()
            .join(", ");
        if s.request == GcRequest::Only && !supervised {
            return Err(Error::Unsafe(format!(
                "refusing to collect: a writable registry serves this store: {who}. Stop it or restart it read-only (storage.maintenance.readonly.enabled: true, or REGISTRY_STORAGE_MAINTENANCE_READONLY='{{\"enabled\":true}}'), then run again; --gc-while-serving overrides at the risk of losing layers of concurrent pushes"
            )));
        }
        report.status = GcStatus::Deferred;
        let left = if report.layers_left.is_empty() {
            String::new()
        } else {
            format!(
                ". The _layers of {} removed repositor{} stay until then (a re-push while the registry caches blob descriptors would otherwise lose its layer links)",
                report.layers_left.len(),
                if report.layers_left.len() == 1 { "y" } else { "ies" }
            )
        };
        report.reason = Some(format!("{DEFER_ADVICE}{left}. Serving: {who}"));
        report.serving = serving.clone();
        if !dry_run {
            return Ok(Prepared {
                report,
                run: false,
                db: None,
                bin: None,
                layers,
                sweep: Sweep::default(),
            });
        }
    }
    report.serving = serving;

    let db = load_db(store, inv);
    let mut after = reach::after_removals(inv, removals);
    hazard::without_removed(&mut after, removals);
    report.pruned = match s.pruning {
        Pruning::Untagged => reach::prune_plan(
            &after,
            &db,
            reach::Rules {
                referrers: s.referrers,
                attachments: plan.attachments,
                protected: &plan.protected,
                pinned: &plan.pinned,
            },
        )
        .into_iter()
        .filter(|p| plan.prune_scope.contains(&p.repo))
        .collect(),
        Pruning::Keep => Vec::new(),
    };
    if layers == Layers::Remove {
        // A repository-level removal: in the run's pruning scope only (a policy run leaves
        // the repositories no policy matches untouched).
        report.layers_removed = orphan_layers(&after)
            .into_iter()
            .filter(|r| plan.prune_scope.contains(r))
            .collect();
    }
    let fin = reach::after_prune(after, &report.pruned);
    let mut hazards = hazard::check(&fin, &db);
    if let Some(r) = repos_dir {
        hazards.extend(hazard::check_revision_links(r, &fin));
    }
    let all: Blobs = store.blobs()?;
    hazards.extend(hazard::blob_store(&all));
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
    let (collector, bin) = choose_collector(s, dry_run)?;
    report.collector = collector;
    let mut sweep = Sweep::default();
    if collector == Collector::Native {
        sweep.blobs = predicted
            .iter()
            .map(|d| (*d, all.sizes.get(d).copied().unwrap_or(0)))
            .collect();
        if layers == Layers::Remove {
            sweep.links = stale_links(&fin, &marks);
        }
        if let (Some(r), Some(age)) = (repos_dir, upload_purge_age(config)?) {
            sweep.uploads = old_uploads(r, &fin, now, age);
        }
        report.layer_links = sweep.links.iter().map(|(_, d)| d.len()).sum();
        report.uploads_purged = sweep.uploads.len();
        report.uploads_bytes = sweep.uploads.iter().map(|u| u.2).sum();
    }
    Ok(Prepared {
        run: !dry_run,
        report,
        db: Some(db),
        bin,
        layers,
        sweep,
    })
}

/// Resolves `--collector`: `auto` is the registry's when its binary is found, else native.
/// A named registry collector whose binary is missing is an error now, before any change.
fn choose_collector(s: &GcSettings, dry_run: bool) -> Result<(Collector, Option<PathBuf>)> {
    match s.collector {
        CollectorChoice::Native => Ok((Collector::Native, None)),
        CollectorChoice::Registry if dry_run => Ok((Collector::Registry, None)),
        CollectorChoice::Registry => Ok((
            Collector::Registry,
            Some(crate::gc::find_binary(s.registry_bin.as_deref())?),
        )),
        CollectorChoice::Auto => match crate::gc::find_binary(s.registry_bin.as_deref()) {
            Ok(b) => Ok((Collector::Registry, (!dry_run).then_some(b))),
            // An explicitly named binary that is missing is a mistake, not a fallback.
            Err(e) if s.registry_bin.is_some() => Err(e),
            Err(_) => Ok((Collector::Native, None)),
        },
    }
}

/// `_layers` links whose blob nothing marks: those of blobs the sweep takes, and those whose
/// blob is already gone (a killed collection removed the blob last; v3's collector removes
/// unmarked links too). Per repository, sorted.
fn stale_links(
    inv: &Inventory,
    marks: &std::collections::HashSet<Digest>,
) -> Vec<(String, Vec<Digest>)> {
    inv.repos
        .iter()
        .filter_map(|r| {
            let ds: Vec<Digest> = r
                .layers
                .iter()
                .filter(|d| !marks.contains(*d))
                .copied()
                .collect();
            (!ds.is_empty()).then(|| (r.name.clone(), ds))
        })
        .collect()
}

/// `storage.maintenance.uploadpurging`: `None` when disabled, else the age (default 168h, as
/// the registry's). An unparsable age is invalid input (exit 2), found before any change.
pub fn upload_purge_age(
    config: Option<&crate::config::RegistryConfig>,
) -> Result<Option<std::time::Duration>> {
    const DEFAULT: std::time::Duration = std::time::Duration::from_secs(168 * 3600);
    let Some(c) = config else {
        return Ok(Some(DEFAULT));
    };
    let Some(p) = crate::config::get(&c.yaml, &["storage", "maintenance", "uploadpurging"]) else {
        return Ok(Some(DEFAULT));
    };
    if crate::config::get(p, &["enabled"]).and_then(|e| e.as_bool()) == Some(false) {
        return Ok(None);
    }
    match crate::config::get(p, &["age"]) {
        None => Ok(Some(DEFAULT)),
        Some(serde_yaml_ng::Value::String(a)) => humantime::parse_duration(a)
            .map(Some)
            .map_err(|e| {
                Error::Usage(format!(
                    "registry config {}: storage.maintenance.uploadpurging.age '{a}': {e}",
                    c.path.display()
                ))
            }),
        Some(other) => Err(Error::Usage(format!(
            "registry config {}: storage.maintenance.uploadpurging.age must be a duration such as 168h, not {other:?}",
            c.path.display()
        ))),
    }
}

/// Uploads whose `startedat` (RFC 3339, written by the registry) is more than `age` before
/// `now`, with the bytes of their `data`. An upload without a readable `startedat` is left,
/// as the registry's own purge leaves it.
fn old_uploads(
    repos: &DirFd,
    inv: &Inventory,
    now: std::time::SystemTime,
    age: std::time::Duration,
) -> Vec<(String, std::ffi::OsString, u64)> {
    use rayon::prelude::*;
    inv.repos
        .par_iter()
        .filter(|r| r.has_uploads && r.uploads > 0)
        .flat_map_iter(|r| {
            let mut out = Vec::new();
            let Ok(mut up) = open_repo(repos, &r.name).and_then(|d| d.sub("_uploads")) else {
                return out;
            };
            for e in up.entries().unwrap_or_default() {
                if e.kind != crate::fsx::Kind::Dir {
                    continue;
                }
                let Ok(u) = up.sub(&e.name) else { continue };
                let started = u
                    .read_small("startedat", 64)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .and_then(|t| humantime::parse_rfc3339_weak(t.trim()).ok());
                if started.is_some_and(|t| t + age < now) {
                    let bytes = u.stat("data").map(|st| st.st_size as u64).unwrap_or(0);
                    out.push((r.name.clone(), e.name.clone(), bytes));
                }
            }
            out
        })
        .collect()
}

/// Repositories whose `_layers` is all that is left (no `_manifests`, no `_uploads`): left by
/// a removal next to a serving registry. Their layer links hold nothing for any collector;
/// an offline collection removes them (as v3's collector removes unmarked layer links).
pub fn orphan_layers(inv: &Inventory) -> Vec<String> {
    inv.repos
        .iter()
        .filter(|r| r.has_layers && !r.has_manifests && !r.has_uploads)
        .map(|r| r.name.clone())
        .collect()
}

/// Takes the `_layers` of `repos` (see [`orphan_layers`]) through the trash (their emptied
/// directories go with [`crate::apply::remove_emptied`] once the run is committed).
pub fn apply_orphan_layers(repos_dir: &DirFd, trash: &Trash, repos: &[String]) -> Vec<String> {
    let mut errors = Vec::new();
    for name in repos {
        let r = open_repo(repos_dir, name).and_then(|repo| {
            // Re-checked on the handle: a manifest pushed since the scan keeps its links.
            if repo.sub_opt("_manifests")?.is_some() || repo.sub_opt("_uploads")?.is_some() {
                return Ok(());
            }
            trash.take(&repo, "_layers", "layers")
        });
        if let Err(e) = r {
            errors.push(e.to_string());
        }
    }
    errors
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
            // Attachment tags first: a killed run leaves their manifests untagged, and the
            // rerun (in the recorded scope) prunes them.
            if !p.attachments.is_empty() {
                let tags = manifests.sub("tags")?;
                for tag in &p.attachments {
                    if let Err(e) = trash.take(&tags, tag, "attachment") {
                        errors.push(e.to_string());
                    }
                }
            }
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

/// The native collector: takes what [`prepare`] decided — the `_layers` links of unmarked
/// blobs, old uploads, then the unmarked blob directories — each by one `rename` into the
/// trash (a killed run never leaves half a blob visible; the next run, predicting again from
/// the store as it is, takes what is left, so it ends in the same store). Links go before
/// their blobs: a killed run may leave a blob without links (swept next time), never a link
/// to a blob it deleted. No walk of the store: the prediction's inventory says where
/// everything is. `store_changed_unexpectedly` (a removal or pruning failed) means the store
/// is not what was predicted: nothing is swept.
pub fn sweep_native(
    prep: &mut Prepared,
    v2: &DirFd,
    repos: Option<&DirFd>,
    trash: &Trash,
    store_changed_unexpectedly: bool,
) -> Vec<String> {
    use rayon::prelude::*;
    if store_changed_unexpectedly {
        prep.report.status = GcStatus::Failed;
        prep.report.reason = Some(
            "a removal or pruning failed, so the store is not what collection was predicted on: nothing was collected; fix the errors and run again".into(),
        );
        return Vec::new();
    }
    // Past the last refusal point: nothing this run took is put back any more.
    trash.commit();
    let sweep = std::mem::take(&mut prep.sweep);
    let mut errors = Vec::new();
    if let Some(repos) = repos {
        crate::progress::phase("removing layer links of unreferenced blobs");
        for (repo, digests) in &sweep.links {
            match open_repo(repos, repo).and_then(|r| r.sub("_layers")?.sub("sha256")) {
                Ok(dir) => {
                    for d in digests {
                        if let Err(e) = trash.take(&dir, d.hex(), "link") {
                            errors.push(e.to_string());
                        }
                    }
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        for (repo, upload, _) in &sweep.uploads {
            let r = open_repo(repos, repo)
                .and_then(|r| r.sub("_uploads"))
                .and_then(|u| trash.take(&u, upload, "uploads"));
            if let Err(e) = r {
                errors.push(e.to_string());
            }
        }
    }
    crate::progress::phase(format_args!(
        "collecting {} unreferenced blob(s)",
        sweep.blobs.len()
    ));
    // One fan-out directory per task: its handle is opened once, its renames go in a row.
    let mut by_fan: std::collections::BTreeMap<String, Vec<(Digest, u64)>> = Default::default();
    for (d, size) in sweep.blobs {
        by_fan
            .entry(d.hex()[..2].to_string())
            .or_default()
            .push((d, size));
    }
    let sha = v2.sub("blobs").and_then(|b| b.sub("sha256"));
    let results: Vec<(usize, u64, Vec<String>)> = match &sha {
        Err(e) => vec![(0, 0, vec![e.to_string()])],
        Ok(sha) => by_fan
            .into_par_iter()
            .map(|(fan, blobs)| {
                let mut freed = (0, 0, Vec::new());
                let dir = match sha.sub(&fan) {
                    Ok(d) => d,
                    Err(e) => return (0, 0, vec![e.to_string()]),
                };
                for (d, size) in blobs {
                    match trash.take(&dir, d.hex(), "blob") {
                        Ok(()) => {
                            freed.0 += 1;
                            freed.1 += size;
                        }
                        Err(e) => freed.2.push(e.to_string()),
                    }
                }
                freed
            })
            .collect(),
    };
    for (n, bytes, errs) in results {
        prep.report.freed_blobs += n;
        prep.report.freed_bytes += bytes;
        errors.extend(errs);
    }
    prep.report.prediction_exact = prep.report.freed_blobs == prep.report.predicted_blobs;
    prep.report.status = if errors.is_empty() {
        GcStatus::Done
    } else {
        GcStatus::Failed
    };
    errors
}

/// Runs the registry's collector: a dry run first, cross-checked against what regclean
/// considers reachable on the store as it now is, then the real run.
pub fn collect(
    s: &GcSettings,
    prep: &mut Prepared,
    bin: &Path,
    config: &crate::gc::GcConfig,
    root: &Path,
    v2: &DirFd,
    timer: &mut crate::timing::Timer,
) -> Result<()> {
    let inv = crate::scan::scan(v2)?;
    let db = prep.db.take().unwrap_or_default();
    let db = db.completed(&crate::storage::Filesystem { v2 }, &inv);
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

/// The config to hand to `garbage-collect`: the registry's own file, or (when there is none)
/// a minimal one generated with the YAML library and passed on the collector's standard input,
/// so that no file is written (a planted link could redirect such a write) and any root path
/// (`a: b`, `[x`, `x #y`) is quoted correctly.
///
/// Called before the first change: a root the collector cannot be given (not UTF-8: YAML
/// cannot name it) is refused while nothing has been changed.
pub fn gc_config(existing: Option<&Path>, root: &Path) -> Result<crate::gc::GcConfig> {
    let root = root.to_str().ok_or_else(|| {
        Error::Usage(format!(
            "storage root {} is not valid UTF-8: the registry's collector cannot be given it (its config is YAML); nothing was changed",
            root.display()
        ))
    })?;
    if let Some(p) = existing {
        return Ok(crate::gc::GcConfig::File(p.to_path_buf()));
    }
    let text = minimal_config(root);
    Ok(crate::gc::GcConfig::Generated(text))
}

/// A minimal registry config for the filesystem store at `root`.
pub fn minimal_config(root: &str) -> String {
    use serde_yaml_ng::{Mapping, Value};
    let mut fs = Mapping::new();
    fs.insert("rootdirectory".into(), Value::String(root.to_string()));
    let mut storage = Mapping::new();
    storage.insert("filesystem".into(), Value::Mapping(fs));
    let mut top = Mapping::new();
    top.insert("version".into(), Value::String("0.1".into()));
    top.insert("storage".into(), Value::Mapping(storage));
    serde_yaml_ng::to_string(&Value::Mapping(top)).expect("YAML serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_gc_config_quotes_hostile_roots() {
        for root in [
            "/data/a: b",
            "/data/[x",
            "/data/x #y",
            "/d/'q\"",
            "/d/\n-x",
            "/d/123",
        ] {
            let text = minimal_config(root);
            let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
            let got = crate::config::get(&v, &["storage", "filesystem", "rootdirectory"])
                .and_then(|x| x.as_str());
            assert_eq!(got, Some(root), "{text}");
            assert_eq!(
                crate::config::get(&v, &["version"]).and_then(|x| x.as_str()),
                Some("0.1")
            );
        }
    }
}
