//! Other supervisors of the same bucket.
//!
//! On object storage the supervisor's cycle collects on the operator's word that its registry
//! is the bucket's only one (`REGCLEAN_SOLE_REGISTRY`). The likeliest way for that word to be
//! wrong is the same image run twice (replicas of one deployment, each told it is alone): so
//! each supervisor that was told so keeps a heartbeat object in the bucket,
//! `<rootdirectory>/.regclean/supervisors/<host>-<pid>-<start>`, rewritten every
//! [`HEARTBEAT`], and refuses a cycle while another one is fresh. Freshness is judged by the
//! store's clock alone: another heartbeat is live when the store stamped it within [`LIVE`]
//! of stamping ours. A registry not run under a supervisor remains invisible.

use crate::storage::s3::bucket::Bucket;
use crate::storage::s3::settings::S3Settings;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Where the heartbeats are, relative to the store's prefix (beside `docker/`).
const DIR: &str = ".regclean/supervisors/";
/// How often a supervisor rewrites its heartbeat.
const HEARTBEAT: Duration = Duration::from_secs(30);
/// A heartbeat stamped this close to ours belongs to a live supervisor.
const LIVE: Duration = Duration::from_secs(120);

/// This supervisor's heartbeat in the bucket.
pub struct Peers {
    bucket: Arc<Bucket>,
    key: String,
    stop: Arc<AtomicBool>,
}

impl Peers {
    /// Starts writing the heartbeat from a thread (at once, then every [`HEARTBEAT`]; a
    /// failure is retried there, and no cycle runs until the heartbeat is in the bucket). An
    /// error only when the bucket cannot be addressed at all.
    pub fn start(s3: &S3Settings) -> Result<Arc<Peers>, String> {
        let bucket = Arc::new(Bucket::open(s3).map_err(|e| e.to_string())?);
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let host = crate::storage::s3::change::hostname();
        let key = format!("{DIR}{host}-{}-{started}", std::process::id());
        let body = format!("regclean supervise on {host}, pid {}\n", std::process::id());
        let peers = Arc::new(Peers {
            bucket,
            key,
            stop: Arc::new(AtomicBool::new(false)),
        });
        let p = Arc::clone(&peers);
        std::thread::spawn(move || {
            while !p.stop.load(Ordering::Relaxed) {
                if let Err(e) = p.bucket.put(&p.key, body.clone().into_bytes()) {
                    tracing::warn!("writing the supervisor's heartbeat: {e}");
                }
                std::thread::park_timeout(HEARTBEAT);
            }
        });
        Ok(peers)
    }

    /// The live heartbeats of other supervisors of this bucket (their keys).
    pub fn others(&self) -> Result<Vec<String>, String> {
        let all = self
            .bucket
            .list(vec![DIR.to_string()])
            .map_err(|e| e.to_string())?;
        let Some(ours) = all.iter().find(|o| o.key == self.key).map(|o| o.modified) else {
            return Err(format!(
                "this supervisor's heartbeat {}/{} is not in the bucket (see the supervisor's log): without it no other supervisor could see this one, so nothing is collected",
                self.bucket.url, self.key
            ));
        };
        Ok(all
            .iter()
            .filter(|o| o.key != self.key)
            .filter(|o| {
                let gap = match o.modified > ours {
                    true => o.modified.duration_since(ours),
                    false => ours.duration_since(o.modified),
                };
                gap.unwrap_or_default() <= LIVE
            })
            .map(|o| o.key.clone())
            .collect())
    }

    /// Stops the heartbeat and deletes it (the supervisor is stopping).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Err(e) = self.bucket.delete_one(&self.key) {
            tracing::warn!("deleting the supervisor's heartbeat: {e}");
        }
    }
}
