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
use super::dirs;
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

/// How far the store's clock is from this host's (store minus local), as measured once.
#[derive(Debug, Clone, Copy)]
struct Skew {
    ahead: Duration,
    behind: Duration,
}

impl Skew {
    fn measure(bucket: &Bucket, token: &str) -> Result<Skew> {
        let before = SystemTime::now();
        let store = store_now(bucket, token)?;
        // The probe was stamped somewhere between `before` and now; S3 stamps whole seconds.
        Ok(match store.duration_since(before) {
            Ok(d) => Skew {
                ahead: d,
                behind: Duration::ZERO,
            },
            Err(e) => Skew {
                ahead: Duration::ZERO,
                behind: e.duration(),
            },
        })
    }

    /// `local` on the store's clock.
    fn store_time(&self, local: SystemTime) -> SystemTime {
        local + self.ahead - self.behind
    }
}

/// The object store's own clock: the modification time it gives a probe object written now
/// (`.regclean/clock-<token>`, deleted at once).
fn store_now(bucket: &Bucket, token: &str) -> Result<SystemTime> {
    let key = format!(".regclean/clock-{token}");
    bucket.put(&key, token.as_bytes().to_vec())?;
    let got = bucket.get_meta(&key);
    if let Err(e) = bucket.delete_one(&key) {
        tracing::warn!("deleting the clock probe: {e}");
    }
    got?.map(|(_, t, _)| t).ok_or_else(|| {
        Error::Failed(format!(
            "{}/{key}: written, then not found: the store's clock cannot be read",
            bucket.url
        ))
    })
}

/// A held lock object: rewritten every [`HEARTBEAT`] by a thread, deleted on drop.
pub struct Lock {
    bucket: Arc<Bucket>,
    body: Vec<u8>,
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
        // Only our own lock: a run that took it over (ours went stale) keeps its own.
        match self.bucket.get_meta(LOCK_KEY) {
            Ok(Some((b, _, _))) if b == self.body => {
                if let Err(e) = self.bucket.delete_one(LOCK_KEY) {
                    tracing::error!(
                        "releasing the lock: {e}; delete {}/{LOCK_KEY} once no regclean runs, or the next run waits {}s for it to go stale",
                        self.bucket.url,
                        STALE.as_secs()
                    );
                }
            }
            Ok(_) => tracing::warn!(
                "{}/{LOCK_KEY} is no longer this run's (taken over while it was stale): left to its holder",
                self.bucket.url
            ),
            Err(e) => tracing::error!("releasing the lock: {e}"),
        }
    }
}

/// Takes the store's lock object with a conditional create (`If-None-Match: *`), so two runs,
/// even on different hosts, cannot both hold it. One that holds it is refused with its owner
/// named (exit 3), or waited for with `--wait`. A lock object not renewed for [`STALE`] (its
/// run died: the heartbeat stopped) is taken over by a conditional replace (`If-Match` on the
/// ETag that was read): of several runs taking over at once, one wins, and a run that renews
/// meanwhile keeps it. The age is measured on the store's clock (the lock's `Last-Modified`
/// against the store's "now", found once per run with a probe object, see [`Skew`]): this
/// host's clock, ahead or behind, changes nothing.
///
/// Where the service ignores the preconditions (older S3-compatible stores), the create or
/// replace always "succeeds": the read-back below catches a run whose lock was overwritten in
/// the same instant, which narrows the window to the seconds between their requests; say so
/// to operators of such stores (README).
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
    let mut skew: Option<Skew> = None;
    let etag = loop {
        if let Some(etag) = bucket.create(LOCK_KEY, body.clone())? {
            break read_back(&bucket, &body, etag)?;
        }
        let Some((owner, modified, etag)) = bucket.get_meta(LOCK_KEY)? else {
            continue; // released meanwhile
        };
        // The lock's age by the store's clock, which stamped it: this host's may run ahead
        // (it would take over a live lock) or behind (it would wait on a dead one forever).
        // The difference is measured once, with a probe object.
        let skew = match skew {
            Some(s) => s,
            None => {
                let s = Skew::measure(&bucket, &token)?;
                skew = Some(s);
                s
            }
        };
        let age = skew
            .store_time(SystemTime::now())
            .duration_since(modified)
            .unwrap_or_default();
        if age > STALE {
            tracing::warn!(
                "taking over the lock object {}/{LOCK_KEY}: not renewed for {}s (its run died): {}",
                bucket.url,
                age.as_secs(),
                String::from_utf8_lossy(&owner)
            );
            if let Some(new) = bucket.replace(LOCK_KEY, body.clone(), &etag)? {
                break read_back(&bucket, &body, new)?;
            }
            // Another run took it over or its holder renewed it: look again.
            std::thread::sleep(Duration::from_secs(1));
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
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (b, s, own) = (bucket.clone(), stop.clone(), body.clone());
    let beat = std::thread::spawn(move || {
        let mut etag = etag;
        loop {
            std::thread::park_timeout(HEARTBEAT);
            if s.load(Ordering::Relaxed) {
                return;
            }
            match b.replace(LOCK_KEY, own.clone(), &etag) {
                Ok(Some(new)) => etag = new,
                Ok(None) => {
                    tracing::error!(
                        "the lock object {}/{LOCK_KEY} was taken over by another run",
                        b.url
                    );
                    return;
                }
                Err(e) => tracing::warn!("renewing the lock object: {e}"),
            }
        }
    });
    Ok(Lock {
        bucket,
        body,
        stop,
        beat: Some(beat),
    })
}

impl Lock {
    /// Is the lock object still this run's? A run whose lock was taken over (it stalled past
    /// [`STALE`], or the clocks disagree) must stop before its next delete step.
    pub fn check(&self) -> Result<()> {
        match self.bucket.get_meta(LOCK_KEY)? {
            Some((b, _, _)) if b == self.body => Ok(()),
            _ => Err(Error::Failed(format!(
                "{}/{LOCK_KEY} was taken over by another run: this run stopped before its next delete step",
                self.bucket.url
            ))),
        }
    }
}

/// After a create or replace: the lock must hold our body (a store that ignored the
/// precondition may show another run's), else refuse (exit 3, nothing changed).
fn read_back(bucket: &Bucket, body: &[u8], etag: String) -> Result<String> {
    match bucket.get_meta(LOCK_KEY)? {
        Some((b, _, e)) if b == body => Ok(if e.is_empty() { etag } else { e }),
        _ => Err(Error::Unsafe(format!(
            "another regclean run wrote {}/{LOCK_KEY} as this one took it (the service may ignore conditional writes): nothing was changed; run again",
            bucket.url
        ))),
    }
}

/// This host's name (for the lock object's and a supervisor's heartbeat's owner).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// The pruning scope a killed run recorded (to be merged into this run's scope).
pub fn pending_scope(bucket: &Bucket) -> Result<Vec<String>> {
    Ok(match bucket.get_meta(PENDING_KEY)? {
        Some((b, _, _)) => serde_json::from_slice(&b).unwrap_or_default(),
        None => Vec::new(),
    })
}

/// What the deletes did.
#[derive(Default)]
pub struct Done {
    /// Keys deleted (or already gone).
    pub keys: u64,
    /// Empty directories deleted that were there before the run (see [`dirs::hollow`]).
    pub dirs: u64,
    /// Removals left undone because the store changed under them, and why.
    pub skipped: Vec<(crate::plan::Removal, String)>,
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
    lock: &Lock,
    plan: &Plan,
    prep: &mut Prepared,
    holding: &std::collections::BTreeSet<String>,
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
        prep.sweep.blobs = sweep.blobs;
    }
    // Repositories whose own parts go (the catalog of 2.8 lists a repository while its
    // `_manifests` directory exists, even empty; the upload purger panics on an empty
    // repository directory).
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
    // Registries may serve (removal alone, without --registry-stopped): `_layers` stay, and
    // so does the repository's directory.
    let live = prep.layers == crate::apply::Layers::Keep;
    let gone = if live {
        dirs::Gone::Parts
    } else {
        dirs::Gone::Whole
    };
    let step = |what: &str, keys: Vec<String>, done: &mut Done| -> bool {
        if let Err(e) = lock.check() {
            done.errors.push(e.to_string());
            return false;
        }
        let mut keys = keys;
        keys.sort();
        keys.dedup();
        tracing::info!("deleting {} {what}", keys.len());
        let n = keys.len() as u64;
        let dirs = dirs::emptied(&keys, &removed_repos, gone);
        let errs = bucket.delete(keys);
        done.keys += n - errs.len() as u64;
        if !errs.is_empty() {
            done.errors.extend(errs);
            return false;
        }
        dirs::delete(bucket, dirs);
        true
    };
    // No atomic rename here: a registry that serves while a removal runs (removal alone is
    // allowed then) may re-push what is being removed. Before each step that makes something
    // unservable, what changed since the listing is looked at again and left whole.
    // Registries may serve (removal alone, without --registry-stopped): then it looks again.
    let _ = step(
        "tag history entries",
        std::mem::take(&mut phases.history),
        &mut done,
    ) && {
        let mut current = std::mem::take(&mut phases.current);
        if live {
            current = unchanged_tag_links(bucket, plan, current, &mut done);
        }
        step("tag links", current, &mut done)
    } && {
        if live {
            leftover_of_removed_tags(bucket, plan, &mut phases, &mut done);
            repushed_repositories(bucket, plan, &mut phases, &mut done);
        }
        step(
            "manifest revisions",
            std::mem::take(&mut phases.manifests),
            &mut done,
        )
    } && step(
        "layer links and uploads",
        std::mem::take(&mut phases.links),
        &mut done,
    );
    if prep.run {
        if done.errors.is_empty() {
            if let Err(e) = lock.check() {
                done.errors.push(e.to_string());
            }
        }
        sweep_blobs(bucket, prep, &mut done);
    }
    if !live && done.errors.is_empty() {
        sweep_hollow(bucket, holding, &removed_repos, &mut done);
    }
    if prep.run && done.errors.is_empty() {
        if let Err(e) = bucket
            .delete(vec![PENDING_KEY.to_string()])
            .pop()
            .map_or(Ok(()), Err)
        {
            done.errors.push(e);
        }
    }
    (outcomes(plan, &done), done)
}

/// The planned digest of each removed tag's `current/link`, by key.
fn planned_links(plan: &Plan) -> Vec<(String, &crate::plan::Removal, Option<String>)> {
    plan.removals
        .iter()
        .filter_map(|r| match &r.what {
            What::Tag { name, manifest } => Some((
                super::layout::tag_current_key(&r.repo, name),
                r,
                manifest.map(|d| d.to_string()),
            )),
            What::Repository { .. } => None,
        })
        .collect()
}

/// The tag links still to delete: a tag whose `current/link` changed since the plan (re-pushed
/// during the removal) is left whole, and its removal reported as not done.
fn unchanged_tag_links(
    bucket: &Bucket,
    plan: &Plan,
    mut current: Vec<String>,
    done: &mut Done,
) -> Vec<String> {
    let planned = planned_links(plan);
    let keys: Vec<String> = planned
        .iter()
        .filter(|(k, _, d)| d.is_some() && current.contains(k))
        .map(|(k, _, _)| k.clone())
        .collect();
    for (k, now) in bucket.get_many(keys, 4096) {
        let Some((_, r, Some(want))) = planned.iter().find(|(pk, _, _)| *pk == k) else {
            continue;
        };
        let changed = match &now {
            Ok(Some(b)) => b != want.as_bytes(),
            Ok(None) => false,
            Err(_) => true, // unknown: leave it
        };
        if changed {
            current.retain(|c| *c != k);
            done.skipped.push((
                (*r).clone(),
                "its tag link changed during the removal (re-pushed?): left in place".into(),
            ));
        }
    }
    current
}

/// After the tag links went: anything a push wrote meanwhile into a removed tag's directory
/// (a history entry re-written for the same digest) is deleted when the tag has no
/// `current/link` (it is then invisible to the registry but would be listed); a tag that has
/// one again was re-pushed and stays.
fn leftover_of_removed_tags(bucket: &Bucket, plan: &Plan, phases: &mut Phases, done: &mut Done) {
    let prefixes: Vec<String> = planned_links(plan)
        .iter()
        .filter(|(_, r, _)| !done.skipped.iter().any(|(s, _)| s == *r))
        .map(|(k, _, _)| k.trim_end_matches("current/link").to_string())
        .collect();
    if prefixes.is_empty() {
        return;
    }
    let Ok(objs) = bucket.list(prefixes.clone()) else {
        return;
    };
    for p in prefixes {
        let keys: Vec<&str> = objs
            .iter()
            .map(|o| o.key.as_str())
            .filter(|k| k.starts_with(&p))
            .collect();
        if keys.iter().any(|k| k.ends_with("/current/link")) {
            if let Some((_, r, _)) = planned_links(plan)
                .into_iter()
                .find(|(k, _, _)| k.starts_with(&p))
            {
                done.skipped.push((
                    r.clone(),
                    "re-pushed during the removal: left in place".into(),
                ));
            }
            continue;
        }
        phases.history.extend(keys.into_iter().map(str::to_string));
    }
    let rest = std::mem::take(&mut phases.history);
    if !rest.is_empty() {
        let dirs = dirs::emptied(&rest, &[], dirs::Gone::Parts);
        done.errors.extend(bucket.delete(rest));
        dirs::delete(bucket, dirs);
    }
}

/// Before a removed repository's revisions and layer links go: a repository that has a tag
/// again was pushed to during the removal; its remaining keys stay (the new tag needs them)
/// and the removal is reported as not done.
fn repushed_repositories(bucket: &Bucket, plan: &Plan, phases: &mut Phases, done: &mut Done) {
    for r in plan
        .removals
        .iter()
        .filter(|r| matches!(r.what, What::Repository { .. }))
    {
        let base = format!("{V2}repositories/{}/", r.repo);
        let tags = format!("{base}_manifests/tags/");
        let Ok(objs) = bucket.list(vec![tags]) else {
            continue;
        };
        if objs.iter().any(|o| o.key.ends_with("/current/link")) {
            let own = |k: &String| {
                ["_manifests/", "_layers/", "_uploads/"]
                    .iter()
                    .any(|p| k.starts_with(&format!("{base}{p}")))
            };
            phases.manifests.retain(|k| !own(k));
            phases.links.retain(|k| !own(k));
            done.skipped.push((
                r.clone(),
                "a tag was pushed to it during the removal: its remaining keys were left in place"
                    .into(),
            ));
        }
    }
}

/// Last, with the registries stopped: the empty directories that were there before (the
/// registry's own, after uploads; a killed run's), which would crash registry 2.x's upload
/// purger (see [`dirs`]). A failure to find or delete them is logged, not fatal: the
/// registry's data is whole either way.
fn sweep_hollow(
    bucket: &Bucket,
    holding: &std::collections::BTreeSet<String>,
    removed: &[String],
    done: &mut Done,
) {
    match dirs::hollow(bucket, holding, removed) {
        Ok(found) => {
            let n = found.empty.len();
            if n > 0 {
                tracing::info!(
                    "deleting {n} empty director{} (registry 2.x's upload purger panics on them)",
                    if n == 1 { "y" } else { "ies" }
                );
                done.dirs = n as u64;
                dirs::delete(bucket, found.delete);
            }
        }
        Err(e) => tracing::warn!("looking for empty directories: {e}"),
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
            error: done
                .skipped
                .iter()
                .find(|(s, _)| s == r)
                .map(|(_, why)| why.clone())
                .or_else(|| done.errors.first().cloned()),
        })
        .collect()
}
