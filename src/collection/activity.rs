//! Pull activity: when each tag and each manifest digest was last pulled, per repository.
//!
//! Recorded by `regclean supervise` from the registry's own notification events into an
//! SQLite database, `<root>/.regclean/activity.db` (WAL journal, `synchronous=FULL`: a
//! crash loses at most the event being written, never the file; it survives restarts). Read
//! by policies: `pulled_within` keeps tags pulled recently, `untagged: {keep_pulled_within}`
//! keeps untagged manifests still pulled by digest (digest-pinned deployments).

use crate::digest::Digest;
use rusqlite::{params, Connection, OpenFlags};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The database's name in `.regclean`.
pub const DB: &str = "activity.db";

/// The database path for a storage root.
pub fn path(root: &Path) -> PathBuf {
    root.join(crate::app::STATE_DIR).join(DB)
}

/// One pull, as the registry reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pull {
    /// The repository.
    pub repo: String,
    /// The manifest pulled.
    pub digest: Digest,
    /// The tag it was pulled by, if any.
    pub tag: Option<String>,
    /// When.
    pub at: SystemTime,
}

/// The last pull times, loaded for a run.
#[derive(Debug, Clone, Default)]
pub struct Pulls {
    tags: HashMap<(String, String), SystemTime>,
    digests: HashMap<(String, Digest), SystemTime>,
}

impl Pulls {
    /// When `repo:tag` was last pulled by its name, or its manifest `digest` by any name.
    pub fn tag(&self, repo: &str, tag: &str, digest: Option<Digest>) -> Option<SystemTime> {
        let by_name = self.tags.get(&(repo.to_string(), tag.to_string())).copied();
        let by_digest = digest.and_then(|d| self.digest(repo, &d));
        by_name.max(by_digest)
    }

    /// When manifest `digest` of `repo` was last pulled.
    pub fn digest(&self, repo: &str, digest: &Digest) -> Option<SystemTime> {
        self.digests.get(&(repo.to_string(), *digest)).copied()
    }

    /// Adds one pull (for tests and for loading).
    pub fn add(&mut self, p: &Pull) {
        let d = self
            .digests
            .entry((p.repo.clone(), p.digest))
            .or_insert(p.at);
        *d = (*d).max(p.at);
        if let Some(t) = &p.tag {
            let e = self.tags.entry((p.repo.clone(), t.clone())).or_insert(p.at);
            *e = (*e).max(p.at);
        }
    }
}

fn secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The writer side (the supervisor).
pub struct Recorder {
    conn: Connection,
}

impl Recorder {
    /// Opens (creating) the database.
    pub fn open(path: &Path) -> rusqlite::Result<Recorder> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NOFOLLOW,
        )?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS pulls (
                repo TEXT NOT NULL,
                kind TEXT NOT NULL CHECK (kind IN ('tag', 'digest')),
                name TEXT NOT NULL,
                last_pull INTEGER NOT NULL,
                PRIMARY KEY (repo, kind, name)
            ) WITHOUT ROWID;",
        )?;
        Ok(Recorder { conn })
    }

    /// Records pulls in one transaction (the last time wins, never an earlier one).
    pub fn record(&mut self, pulls: &[Pull]) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut st = tx.prepare_cached(
                "INSERT INTO pulls (repo, kind, name, last_pull) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (repo, kind, name) DO UPDATE
                 SET last_pull = max(last_pull, excluded.last_pull)",
            )?;
            for p in pulls {
                st.execute(params![p.repo, "digest", p.digest.to_string(), secs(p.at)])?;
                if let Some(t) = &p.tag {
                    st.execute(params![p.repo, "tag", t, secs(p.at)])?;
                }
            }
        }
        tx.commit()
    }
}

/// Loads every pull time, read-only. `Ok(None)` when there is no database (no supervisor ever
/// recorded anything here).
pub fn load(root: &Path) -> Result<Option<Pulls>, String> {
    let p = path(root);
    if std::fs::symlink_metadata(&p).is_err() {
        return Ok(None);
    }
    let what = |e: rusqlite::Error| format!("pull activity database {}: {e}", p.display());
    let conn = Connection::open_with_flags(
        &p,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NOFOLLOW,
    )
    .map_err(what)?;
    conn.busy_timeout(Duration::from_secs(10)).map_err(what)?;
    let mut st = conn
        .prepare("SELECT repo, kind, name, last_pull FROM pulls")
        .map_err(what)?;
    let rows = st
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })
        .map_err(what)?;
    let mut out = Pulls::default();
    for row in rows {
        let (repo, kind, name, at) = row.map_err(what)?;
        let at = UNIX_EPOCH + Duration::from_secs(at.max(0) as u64);
        match kind.as_str() {
            "tag" => {
                out.tags.insert((repo, name), at);
            }
            _ => {
                if let Some(d) = Digest::parse(name.as_bytes()) {
                    out.digests.insert((repo, d), at);
                }
            }
        }
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_pulls_survive_reopening_and_keep_the_latest_time() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join(crate::app::STATE_DIR)).unwrap();
        let at = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        let d = Digest([7; 32]);
        {
            let mut r = Recorder::open(&path(t.path())).unwrap();
            r.record(&[
                Pull {
                    repo: "app".into(),
                    digest: d,
                    tag: Some("v1".into()),
                    at: at(2000),
                },
                Pull {
                    repo: "app".into(),
                    digest: d,
                    tag: None,
                    at: at(1000),
                },
            ])
            .unwrap();
        }
        let p = load(t.path()).unwrap().unwrap();
        assert_eq!(p.digest("app", &d), Some(at(2000)));
        assert_eq!(p.tag("app", "v1", None), Some(at(2000)));
        assert_eq!(p.tag("app", "v2", Some(d)), Some(at(2000)), "by digest");
        assert_eq!(p.tag("other", "v1", None), None);
        assert!(load(&t.path().join("nowhere")).unwrap().is_none());
    }
}
