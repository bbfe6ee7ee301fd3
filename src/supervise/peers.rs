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
    body: Vec<u8>,
    stop: Arc<AtomicBool>,
    beat: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Peers {
    /// Writes the heartbeat once (a failure is logged: the registry starts anyway, and no
    /// cycle runs until the heartbeat is in the bucket), then every [`HEARTBEAT`] from a
    /// thread. An error only when the bucket cannot be addressed at all.
    pub fn start(s3: &S3Settings) -> Result<Arc<Peers>, String> {
        use std::hash::{BuildHasher, Hasher};
        let bucket = Arc::new(Bucket::open(s3).map_err(|e| e.to_string())?);
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let host = crate::storage::s3::change::hostname();
        // Replicas may share a host name and a pid (1, in a container) and start in the same
        // second: a random part keeps their keys apart.
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let key = format!("{DIR}{host}-{}-{started}-{random:016x}", std::process::id());
        let body =
            format!("regclean supervise on {host}, pid {}\n", std::process::id()).into_bytes();
        let peers = Arc::new(Peers {
            bucket,
            key,
            body,
            stop: Arc::new(AtomicBool::new(false)),
            beat: std::sync::Mutex::new(None),
        });
        if let Err(e) = peers.beat() {
            tracing::warn!("{e}; retried every {}s", HEARTBEAT.as_secs());
        }
        let p = Arc::clone(&peers);
        let t = std::thread::spawn(move || loop {
            std::thread::park_timeout(HEARTBEAT);
            if p.stop.load(Ordering::Relaxed) {
                return;
            }
            if let Err(e) = p.beat() {
                tracing::warn!("{e}");
            }
        });
        *peers.beat.lock().expect("beat") = Some(t);
        Ok(peers)
    }

    fn beat(&self) -> Result<(), String> {
        self.bucket
            .put(&self.key, self.body.clone())
            .map_err(|e| format!("writing the supervisor's heartbeat: {e}"))
    }

    /// The live heartbeats of other supervisors of this bucket (their keys). Ours is written
    /// first, so that the store stamps "now": a heartbeat is live when stamped less than
    /// [`LIVE`] before it (or after it).
    pub fn others(&self) -> Result<Vec<String>, String> {
        self.beat()?;
        let all = self
            .bucket
            .list(vec![DIR.to_string()])
            .map_err(|e| e.to_string())?;
        let Some(now) = all.iter().find(|o| o.key == self.key).map(|o| o.modified) else {
            return Err(format!(
                "this supervisor's heartbeat {}/{} was written but is not listed: nothing is collected",
                self.bucket.url, self.key
            ));
        };
        Ok(all
            .iter()
            .filter(|o| o.key != self.key)
            .filter(|o| {
                now.duration_since(o.modified)
                    .map_or(true, |age| age <= LIVE)
            })
            .map(|o| o.key.clone())
            .collect())
    }

    /// Stops the heartbeat and deletes it (the supervisor is stopping): the thread is joined
    /// first, so that no write in flight puts it back.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.beat.lock().expect("beat").take() {
            t.thread().unpark();
            let _ = t.join();
        }
        if let Err(e) = self.bucket.delete_one(&self.key) {
            tracing::warn!("deleting the supervisor's heartbeat: {e}");
        }
    }
}
