//! Changing a bucket: a lock object, then deletes in an order that keeps every moment valid.
//!
//! There is no atomic rename on object storage, so a removal is a sequence of deletes, and a
//! reader (a registry serving the bucket, or a killed run's successor) may see any prefix of
//! that sequence. The order makes every prefix a valid store:
//!
//! 1. tag history entries (`tags/<t>/index/...`): the registry resolves a tag by its
//!    `current/link` alone, so the tag still pulls;
//! 2. tag `current/link`s: the tag is gone in one delete, never half there;
//! 3. manifest revisions (and whatever else is left in a removed repository's `_manifests`):
//!    nothing tagged points at them any more;
//! 4. layer links and uploads: a manifest still present never lacks its layer links;
//! 5. blob data: only blobs nothing remaining references (the prediction), last.
//!
//! Each step finishes (every batch answered) before the next begins. A killed run leaves a
//! prefix of this sequence; the next run scans the bucket as it is, plans again, and deletes
//! the rest (deleting a missing key is not an error). The pruning scope of a run is written to
//! `.regclean/pending` before the first delete and removed after the last, so a rerun prunes
//! where the killed run would have.

use super::bucket::Bucket;
use super::layout::V2;
use crate::collect::{GcStatus, Prepared};
use crate::error::{Error, Result};
use crate::lock::WaitMode;
use crate::plan::{Plan, PruneScope, What};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The lock object, relative to the store's prefix (beside `docker/`, never inside the
/// registry's layout).
pub const LOCK_KEY: &str = ".regclean/lock";
/// The pending pruning scope of a run in progress.
pub const PENDING_KEY: &str = ".regclean/pending";
/// How often the holder rewrites the lock object.
const HEARTBEAT: Duration = Duration::from_secs(30);
/// A lock object not rewritten for this long belongs to a run that died (kill -9, lost host):
/// the next run takes it over.
pub const STALE: Duration = Duration::from_secs(300);

/// A held lock object: rewritten every [`HEARTBEAT`] by a thread, deleted on drop.
pub struct Lock {
    bucket: Arc<Bucket>,
    stop: Arc<AtomicBool>,
    beat: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Lock {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.beat.take() {
            t.thread().unpark();
            let _ = t.join();
        }
        let _ = self.bucket.delete(vec![LOCK_KEY.to_string()]);
    }
}

/// Takes the store's lock object with a conditional create (`If-None-Match: *`), so two runs,
/// even on different hosts, cannot both hold it. One that holds it is refused with its owner
/// named (exit 3), or waited for with `--wait`. A lock object older than [`STALE`] is taken
/// over (its run died: the heartbeat stopped).
///
/// Where the service ignores `If-None-Match` (older S3-compatible stores), the create always
/// "succeeds": two runs started at the same moment could then both proceed. The read-back
/// below catches the one whose token was overwritten, which narrows that window to the
/// seconds between their first requests; say so to operators of such stores (README).
pub fn acquire(bucket: Arc<Bucket>, wait: WaitMode) -> Result<Lock> {
    let token = format!(
        "{}-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
        hostname()
    );
    let body = serde_json::json!({
        "token": token,
        "host": hostname(),
        "pid": std::process::id(),
        "started": humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
    })
    .to_string()
    .into_bytes();
    loop {
        if bucket.create(LOCK_KEY, body.clone())? {
            // Read back: a service that ignored the precondition shows another run's token.
            match bucket.get_with_time(LOCK_KEY)? {
                Some((b, _)) if b == body => break,
                _ => {
                    return Err(Error::Unsafe(format!(
                        "another regclean run overwrote {}/{LOCK_KEY} as this one took it (the service may ignore If-None-Match): nothing was changed; run again",
                        bucket.url
                    )))
                }
            }
        }
        let held = bucket.get_with_time(LOCK_KEY)?;
        let Some((owner, modified)) = held else {
            continue; // released meanwhile
        };
        let age = SystemTime::now()
            .duration_since(modified)
            .unwrap_or_default();
        if age > STALE {
            tracing::warn!(
                "taking over the lock object {}/{LOCK_KEY}: not renewed for {}s (its run died): {}",
                bucket.url,
                age.as_secs(),
                String::from_utf8_lossy(&owner)
            );
            bucket.delete(vec![LOCK_KEY.to_string()]);
            continue;
        }
        if wait == WaitMode::NoWait {
            return Err(Error::Unsafe(format!(
                "another regclean run holds {}/{LOCK_KEY} ({}, renewed {}s ago); nothing was changed. Use --wait to wait for it; a lock of a run that died is taken over once not renewed for {}s",
                bucket.url,
                String::from_utf8_lossy(&owner),
                age.as_secs(),
                STALE.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (b, s) = (bucket.clone(), stop.clone());
    let beat = std::thread::spawn(move || loop {
        std::thread::park_timeout(HEARTBEAT);
        if s.load(Ordering::Relaxed) {
            return;
        }
        if let Err(e) = b.put(LOCK_KEY, body.clone()) {
            tracing::warn!("renewing the lock object: {e}");
        }
    });
    Ok(Lock {
        bucket,
        stop,
        beat: Some(beat),
    })
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// The pruning scope a killed run recorded (to be merged into this run's scope).
pub fn pending_scope(bucket: &Bucket) -> Result<Vec<String>> {
    Ok(match bucket.get_with_time(PENDING_KEY)? {
        Some((b, _)) => serde_json::from_slice(&b).unwrap_or_default(),
        None => Vec::new(),
    })
}

/// What the deletes did.
#[derive(Default)]
pub struct Done {
    /// Keys deleted (or already gone).
    pub keys: u64,
    /// What failed, with the key's store.
    pub errors: Vec<String>,
}

/// The ordered delete phases (see the module documentation).
#[derive(Default)]
struct Phases {
    history: Vec<String>,
    current: Vec<String>,
    manifests: Vec<String>,
    links: Vec<String>,
    blobs: Vec<String>,
}

impl Phases {
    /// Sorts the keys of a removed tag or repository into their phases.
    fn add_listed(&mut self, key: String) {
        if key.contains("/_manifests/tags/") {
            if key.ends_with("/current/link") {
                self.current.push(key);
            } else {
                self.history.push(key);
            }
        } else if key.contains("/_manifests/") {
            self.manifests.push(key);
        } else {
            self.links.push(key);
        }
    }
}

/// Applies the plan and the prepared collection to the bucket, in the safe order. Every
/// refusal happened before this is called; from here on, errors are recorded and the phases go
/// on only while none failed (a later phase must never run past a failed earlier one: a
/// revision whose tag could not be deleted must stay).
pub fn apply(
    bucket: &Bucket,
    plan: &Plan,
    prep: &mut Prepared,
) -> (Vec<crate::apply::Outcome>, Done) {
    let mut done = Done::default();
    let repo_key = |repo: &str, rest: &str| format!("{V2}repositories/{repo}/{rest}");
    if let PruneScope::Repositories(scope) = &plan.prune_scope {
        if prep.run {
            let body = serde_json::to_vec(scope).unwrap_or_default();
            if let Err(e) = bucket.put(PENDING_KEY, body) {
                done.errors.push(e.to_string());
                return (outcomes(plan, &done), done);
            }
        }
    }
    // What the removals name: listed afresh (a repository's own three prefixes, never a
    // nested repository's; a tag's own directory).
    let mut prefixes = Vec::new();
    for r in &plan.removals {
        match &r.what {
            What::Tag { name, .. } => {
                prefixes.push(repo_key(&r.repo, &format!("_manifests/tags/{name}/")))
            }
            What::Repository { .. } => {
                prefixes.push(repo_key(&r.repo, "_manifests/"));
                prefixes.push(repo_key(&r.repo, "_uploads/"));
                if prep.layers == crate::apply::Layers::Remove {
                    prefixes.push(repo_key(&r.repo, "_layers/"));
                }
            }
        }
    }
    if prep.run {
        for repo in &prep.report.layers_removed {
            prefixes.push(repo_key(repo, "_layers/"));
        }
        // An attachment tag goes with its subject, like any tag: history, then current.
        for p in &prep.report.pruned {
            for t in &p.attachments {
                prefixes.push(repo_key(&p.repo, &format!("_manifests/tags/{t}/")));
            }
        }
    }
    let mut phases = Phases::default();
    match bucket.list(prefixes) {
        Ok(objs) => objs.into_iter().for_each(|o| phases.add_listed(o.key)),
        Err(e) => {
            done.errors.push(e.to_string());
            return (outcomes(plan, &done), done);
        }
    }
    if prep.run {
        for p in &prep.report.pruned {
            for (t, d) in &p.history {
                phases.history.push(repo_key(
                    &p.repo,
                    &format!("_manifests/tags/{t}/index/sha256/{}/link", d.hex()),
                ));
            }
            for d in &p.revisions {
                phases.manifests.push(repo_key(
                    &p.repo,
                    &format!("_manifests/revisions/sha256/{}/link", d.hex()),
                ));
            }
        }
        let sweep = std::mem::take(&mut prep.sweep);
        for (repo, ds) in &sweep.links {
            for d in ds {
                phases
                    .links
                    .push(repo_key(repo, &format!("_layers/sha256/{}/link", d.hex())));
            }
        }
        phases.blobs = sweep
            .blobs
            .iter()
            .map(|(d, _)| format!("{V2}{}", d.blob_rel_path()))
            .collect();
        prep.sweep.blobs = sweep.blobs;
    }
    let steps = [
        ("tag history entries", std::mem::take(&mut phases.history)),
        ("tag links", std::mem::take(&mut phases.current)),
        ("manifest revisions", std::mem::take(&mut phases.manifests)),
        ("layer links and uploads", std::mem::take(&mut phases.links)),
    ];
    // Repositories whose own parts go (the catalog of 2.8 lists a repository while its
    // `_layers` directory exists, even empty).
    let removed_repos: Vec<String> = plan
        .removals
        .iter()
        .filter(|r| matches!(r.what, What::Repository { .. }))
        .map(|r| repo_key(&r.repo, ""))
        .chain(
            prep.report
                .layers_removed
                .iter()
                .filter(|_| prep.run)
                .map(|r| repo_key(r, "")),
        )
        .collect();
    for (what, mut keys) in steps {
        keys.sort();
        keys.dedup();
        tracing::info!("deleting {} {what}", keys.len());
        let n = keys.len() as u64;
        let dirs = emptied_dirs(&keys, &removed_repos);
        let errs = bucket.delete(keys);
        done.keys += n - errs.len() as u64;
        if !errs.is_empty() {
            done.errors.extend(errs);
            break;
        }
        delete_dirs(bucket, dirs);
    }
    if prep.run {
        sweep_blobs(bucket, prep, &mut done);
        if done.errors.is_empty() {
            if let Err(e) = bucket
                .delete(vec![PENDING_KEY.to_string()])
                .pop()
                .map_or(Ok(()), Err)
            {
                done.errors.push(e);
            }
        }
    }
    (outcomes(plan, &done), done)
}

/// The "directories" the deleted `keys` leave empty, deepest first, one group per depth.
///
/// Object stores with real directories (SeaweedFS's filer, for one) keep a directory after its
/// last object goes, and list it as a common prefix: the registry would then list a removed tag
/// in `tags/list` (it lists `_manifests/tags/` with a delimiter). Deleting the directory key
/// (`…/v1/`) removes it there, and is a no-op where directories do not exist (AWS S3). Only
/// what the registry lists by directory is named: a removed tag's directory and below, and
/// `_manifests/tags/` (deleted only if empty), and a removed repository's `_manifests`, `_layers`, `_uploads`
/// and below (never the repository's own directory, which may hold nested repositories; the
/// catalog finds repositories by their `_manifests`). Everything else the registry reads by
/// walking files (revisions, layer links, blobs), where an empty directory is nothing: those
/// are left to the store's own cleanup, which spares a request per swept blob. A store that
/// holds something new there keeps the directory (a non-empty directory is not deleted).
fn emptied_dirs(keys: &[String], removed_repos: &[String]) -> Vec<Vec<String>> {
    // A removed tag's directory, and `tags/` itself once empty: SeaweedFS lists an empty
    // `tags/` as an object named "", which the registry would list as a tag.
    const TAGS: &str = "/_manifests/tags/";
    let mut by_depth: std::collections::BTreeMap<usize, std::collections::BTreeSet<String>> =
        Default::default();
    for k in keys {
        // A removed repository's own parts (not a nested repository's, whose keys share the
        // prefix).
        let own = |r: &String| {
            ["_manifests/", "_layers/", "_uploads/"].iter().any(|p| {
                k.strip_prefix(r.as_str())
                    .is_some_and(|rest| rest.starts_with(p))
            })
        };
        let stop = match removed_repos.iter().find(|r| own(r)) {
            Some(r) => r.len(),
            None => match k.find(TAGS) {
                Some(i) => i + "/_manifests/".len(),
                None => continue,
            },
        };
        let mut end = k.len();
        while let Some(i) = k[..end].rfind('/') {
            if i < stop {
                break;
            }
            let dir = &k[..=i];
            by_depth
                .entry(dir.matches('/').count())
                .or_default()
                .insert(dir.to_string());
            end = i;
        }
    }
    by_depth
        .into_iter()
        .rev()
        .map(|(_, d)| d.into_iter().collect())
        .collect()
}

/// Deletes directory keys, one depth at a time (see [`emptied_dirs`]); failures only leave an
/// empty directory behind, so they are logged, never fatal.
fn delete_dirs(bucket: &Bucket, dirs: Vec<Vec<String>>) {
    for level in dirs {
        for e in bucket.delete(level) {
            tracing::debug!("removing an emptied directory: {e}");
        }
    }
}

/// Step 5: the blobs nothing references, only when every earlier step succeeded (otherwise
/// the store is not what the prediction was made on).
fn sweep_blobs(bucket: &Bucket, prep: &mut Prepared, done: &mut Done) {
    if !done.errors.is_empty() {
        prep.report.status = GcStatus::Failed;
        prep.report.reason = Some(
            "a removal or pruning failed, so the store is not what collection was predicted on: nothing was collected; fix the errors and run again".into(),
        );
        return;
    }
    let blobs = std::mem::take(&mut prep.sweep.blobs);
    tracing::info!("deleting {} unreferenced blob(s)", blobs.len());
    let keys: Vec<String> = blobs
        .iter()
        .map(|(d, _)| format!("{V2}{}", d.blob_rel_path()))
        .collect();
    let errs = bucket.delete(keys);
    if errs.is_empty() {
        prep.report.freed_blobs = blobs.len();
        prep.report.freed_bytes = blobs.iter().map(|(_, s)| s).sum();
        done.keys += blobs.len() as u64;
        prep.report.status = GcStatus::Done;
    } else {
        prep.report.status = GcStatus::Failed;
        done.errors.extend(errs);
    }
    prep.report.prediction_exact = prep.report.freed_blobs == prep.report.predicted_blobs;
}

/// Per-removal outcomes: on object storage a failed batch fails the run as a whole (the
/// failed keys are listed in the errors), so each removal carries the first error, if any.
fn outcomes(plan: &Plan, done: &Done) -> Vec<crate::apply::Outcome> {
    plan.removals
        .iter()
        .map(|r| crate::apply::Outcome {
            removal: r.clone(),
            error: done.errors.first().cloned(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(k: &str) -> String {
        format!("{V2}{k}")
    }

    fn flat(levels: Vec<Vec<String>>) -> Vec<String> {
        levels.into_iter().flatten().collect()
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
        let dirs = flat(emptied_dirs(&keys, &[]));
        assert!(dirs.contains(&v2("repositories/app/_manifests/tags/v1/")));
        assert!(dirs.contains(&v2("repositories/app/_manifests/tags/v1/index/sha256/")));
        assert!(dirs.contains(&v2("repositories/app/_manifests/tags/")));
        assert!(!dirs.contains(&v2("repositories/app/_manifests/")));
        for kept in [
            format!("repositories/app/_manifests/revisions/sha256/{h}/"),
            format!("blobs/sha256/aa/{h}/"),
            "blobs/sha256/aa/".to_string(),
            "repositories/app/".to_string(),
        ] {
            assert!(!dirs.contains(&v2(&kept)), "{kept} must stay: {dirs:?}");
        }
        let depths: Vec<usize> = emptied_dirs(&keys, &[])
            .iter()
            .map(|l| l[0].matches('/').count())
            .collect();
        assert!(depths.windows(2).all(|w| w[0] > w[1]), "{depths:?}");
    }

    #[test]
    fn a_removed_repository_loses_its_own_parts_never_its_directory() {
        let h = "b".repeat(64);
        let keys = vec![
            v2(&format!("repositories/team/app/_layers/sha256/{h}/link")),
            v2("repositories/team/app/_manifests/tags/v1/current/link"),
            v2(&format!(
                "repositories/team/app/api/_layers/sha256/{h}/link"
            )),
        ];
        let dirs = flat(emptied_dirs(&keys, &[v2("repositories/team/app/")]));
        assert!(dirs.contains(&v2("repositories/team/app/_layers/")));
        assert!(dirs.contains(&v2("repositories/team/app/_manifests/")));
        for kept in [
            "repositories/team/app/",
            "repositories/team/",
            "repositories/team/app/api/",
            "repositories/team/app/api/_layers/",
        ] {
            assert!(!dirs.contains(&v2(kept)), "{kept} must stay: {dirs:?}");
        }
    }
}
