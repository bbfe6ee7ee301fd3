//! `--check`: a read-only integrity check. It finds the tags that are already broken (by 2.8's
//! `--delete-untagged`, by pushes during a GC, by other cleaners) before anyone trusts a clean,
//! and the store hazards that would make the registry's GC misbehave. It never writes to the
//! store, not even a lock file.

use crate::blobs::Blobs;
use crate::digest::{Digest, Link};
use crate::fsx::DirFd;
use crate::hazard::{self, Hazard};
use crate::manifest::{Db, Kind, Problem};
use crate::scan::{Inventory, Repo};
use rayon::prelude::*;
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime};

/// Kinds of finding; the names are stable (`--json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// A tag without `current/link`.
    TagLinkMissing,
    /// A tag whose `current/link` is empty or malformed.
    TagLinkMalformed,
    /// A tag pointing at a manifest without a revision link in the repository.
    TagRevisionMissing,
    /// A manifest reachable from a tag whose blob is missing.
    ManifestBlobMissing,
    /// A manifest reachable from a tag that cannot be parsed.
    ManifestUnparsable,
    /// An index child with no revision link in the repository (2.8 `-m` damage).
    ChildRevisionMissing,
    /// A config or layer whose blob is missing.
    BlobMissing,
    /// A config or layer without a `_layers` link: not pullable through this repository.
    LayerLinkMissing,
    /// A blob whose content does not hash to its digest (`--verify-content`).
    BlobCorrupt,
    /// A store hazard for the registry's GC.
    Hazard,
    /// Trash left by an interrupted regclean run.
    LeftoverTrash,
    /// An upload started more than a day ago.
    StaleUpload,
    /// A mount point inside the store or its `.regclean` (never crossed; GC is refused).
    MountPoint,
    /// A FIFO, socket or device in the store (never opened; GC is refused).
    SpecialFile,
    /// A malformed entry of the blob store: a blob directory without `data`, a `data` that
    /// is a directory or a symlink, a name that is not a digest or in the wrong fan-out
    /// (never swept; GC is refused).
    BadBlob,
    /// An attachment tag (`sha256-<digest>.sig`, `.att`, `.sbom`, or a referrers fallback
    /// tag) whose subject is not in the repository: it signs nothing here, and pruning
    /// removes it.
    OrphanAttachment,
    /// Object storage that keeps directories (SeaweedFS): an empty directory below
    /// `repositories/` where registry 2.x's upload purger walks, and panics
    /// (distribution/distribution#4590).
    EmptyDirectory,
}

/// The empty directories of a bucket where the registry's upload purger panics (see
/// [`crate::storage::s3::dirs::hollow`]), one finding per empty tree (its topmost
/// directory).
pub fn empty_directories(dirs: &[String]) -> Vec<Finding> {
    dirs.iter()
        .map(|d| Finding {
            kind: FindingKind::EmptyDirectory,
            repo: String::new(),
            tag: None,
            digest: None,
            detail: format!("{d}: an empty directory (with only empty directories below it) where registry 2.x's upload purger walks; it panics on it (distribution/distribution#4590), and the registry stops"),
            advice: "with the registries stopped, any regclean run that collects removes it (regclean --gc-only --registry-stopped)".into(),
        })
        .collect()
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Finding {
    /// What.
    pub kind: FindingKind,
    /// Repository (empty for store-level findings).
    pub repo: String,
    /// Tag, when one is concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Digest, when one is concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    /// What is wrong.
    pub detail: String,
    /// What a user can do about it.
    pub advice: String,
}

/// Content verification throughput.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Verified {
    /// Blobs hashed.
    pub blobs: usize,
    /// Bytes hashed.
    pub bytes: u64,
    /// MiB per second.
    pub mib_per_s: f64,
}

const REPUSH: &str = "re-push the image, or remove the tag (regclean REPO:TAG)";

/// Checks the repositories in `inv` (already restricted to the targets, if any).
pub fn check_repos(
    inv: &Inventory,
    db: &Db,
    blobs: &Blobs,
    protect: Option<&crate::policy::Policies>,
) -> Vec<Finding> {
    inv.repos
        .par_iter()
        .flat_map_iter(|r| check_repo(r, db, blobs, protect))
        .collect()
}

fn finding(
    kind: FindingKind,
    repo: &Repo,
    tag: Option<&str>,
    digest: Option<Digest>,
    detail: String,
    advice: &str,
) -> Finding {
    Finding {
        kind,
        repo: repo.name.clone(),
        tag: tag.map(str::to_string),
        digest,
        detail,
        advice: advice.to_string(),
    }
}

fn check_repo(
    r: &Repo,
    db: &Db,
    blobs: &Blobs,
    protect: Option<&crate::policy::Policies>,
) -> Vec<Finding> {
    use FindingKind::*;
    let mut out = Vec::new();
    let mut seen: BTreeSet<(Digest, Option<Digest>)> = BTreeSet::new();
    let roles = crate::attach::roles(r, crate::attach::Attachments::Follow);
    for (t, role) in r.tags.iter().zip(roles) {
        if let crate::attach::Role::Orphan(subject) = role {
            // What pruning does with it depends on the policy file's `protect`, when given.
            let advice = match protect.and_then(|p| p.protector(&r.name, &t.name)) {
                Some(p) => format!("protected by '{p}' in the policy file: pruning keeps it (and the manifest it names); regclean {}:{} removes it by name if it is not wanted", r.name, t.name),
                None => "a run that prunes this repository removes it (regclean REPO:TAG removes it now; --keep-attachments keeps such tags, and so does a policy file's protect)".to_string(),
            };
            out.push(finding(
                OrphanAttachment,
                r,
                Some(&t.name),
                Some(subject),
                format!(
                    "an attachment of {subject}, which is not a manifest of {}",
                    r.name
                ),
                &advice,
            ));
        }
    }
    for t in &r.tags {
        let d = match t.current {
            Link::Ok(d) => d,
            Link::Missing => {
                out.push(finding(
                    TagLinkMissing,
                    r,
                    Some(&t.name),
                    None,
                    "the tag has no current/link".into(),
                    "remove the tag (regclean REPO:TAG) or re-push it",
                ));
                continue;
            }
            Link::Empty | Link::Malformed => {
                out.push(finding(
                    TagLinkMalformed,
                    r,
                    Some(&t.name),
                    None,
                    "current/link is empty or not 'sha256:<64 hex>'".into(),
                    REPUSH,
                ));
                continue;
            }
        };
        if !r.has_revision(&d) {
            out.push(finding(
                TagRevisionMissing,
                r,
                Some(&t.name),
                Some(d),
                format!("points at {d}, which has no revision link in {}", r.name),
                REPUSH,
            ));
        }
        // Walk the tag's manifests: the tag, then children of indexes, recursively.
        let mut stack = vec![(d, None::<Digest>)];
        while let Some((m, parent)) = stack.pop() {
            if !seen.insert((m, parent)) {
                continue;
            }
            if let Some(parent) = parent.filter(|_| !r.has_revision(&m)) {
                out.push(finding(ChildRevisionMissing, r, Some(&t.name), Some(m), format!("child of index {} has no revision link in {}: clients get MANIFEST_UNKNOWN (the damage of 2.8's --delete-untagged)", parent, r.name), REPUSH));
            }
            match db.problem(&m) {
                Some(Problem::MissingBlob) => {
                    out.push(finding(
                        ManifestBlobMissing,
                        r,
                        Some(&t.name),
                        Some(m),
                        "the manifest's blob is missing".into(),
                        REPUSH,
                    ));
                    continue;
                }
                Some(Problem::Unparsable(why)) => {
                    out.push(finding(
                        ManifestUnparsable,
                        r,
                        Some(&t.name),
                        Some(m),
                        format!("the manifest cannot be parsed: {why}"),
                        REPUSH,
                    ));
                    continue;
                }
                None => {}
            }
            let Some(man) = db.get(&m) else { continue };
            if man.kind == Kind::Index {
                stack.extend(man.refs.iter().map(|c| (*c, Some(m))));
                continue;
            }
            for b in &man.refs {
                if let Some(o) = blobs.special_of(b) {
                    out.push(finding(
                        SpecialFile,
                        r,
                        Some(&t.name),
                        Some(*b),
                        format!("blob referenced by manifest {m}: {} {}", o.path, o.detail),
                        REPUSH,
                    ));
                } else if !blobs.sizes.contains_key(b) {
                    out.push(finding(
                        BlobMissing,
                        r,
                        Some(&t.name),
                        Some(*b),
                        format!("blob referenced by manifest {m} is missing"),
                        REPUSH,
                    ));
                } else if !r.has_layer(b) {
                    out.push(finding(LayerLinkMissing, r, Some(&t.name), Some(*b), format!("blob referenced by manifest {m} has no _layers link in {}: not pullable through this repository", r.name), REPUSH));
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Malformed entries of the blob store ([`Blobs::malformed`]): neither collector handles them
/// as blobs, so collection is refused until they are removed; `--check` names each path.
pub fn bad_blobs(blobs: &Blobs) -> Vec<Finding> {
    blobs
        .malformed
        .iter()
        .map(|o| Finding {
            kind: FindingKind::BadBlob,
            repo: String::new(),
            tag: None,
            digest: None,
            detail: format!("{}: {}", o.path, o.detail),
            advice: "remove it once no push is running (a registry writes blobs only as blobs/sha256/<xx>/<hex>/data); collection is refused while it is there".into(),
        })
        .collect()
}

/// Store-level findings: GC hazards, leftover trash, stale uploads.
pub fn check_store(
    inv: &Inventory,
    db: &Db,
    repos_dir: Option<&DirFd>,
    state: Option<&DirFd>,
    now: SystemTime,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut hz: Vec<Hazard> = hazard::check(inv, db);
    if let Some(r) = repos_dir {
        hz.extend(hazard::check_revision_links(r, inv));
    }
    for h in hz {
        let (kind, detail, advice) = match h.kind {
            hazard::HazardKind::MountPoint => (
                FindingKind::MountPoint,
                format!("{}: {}", h.at, h.detail),
                "unmount it: removals that hold it fail, and collection is refused while it is there".to_string(),
            ),
            hazard::HazardKind::SpecialFile => (
                FindingKind::SpecialFile,
                format!("{}: {}", h.at, h.detail),
                "remove it (a registry writes only regular files); collection is refused while it is there".to_string(),
            ),
            _ => (
                FindingKind::Hazard,
                format!("{:?} at {}", h.kind, h.at),
                h.detail,
            ),
        };
        out.push(Finding {
            kind,
            repo: String::new(),
            tag: None,
            digest: None,
            detail,
            advice,
        });
    }
    out.extend(state_mounts(state));
    if let Some(n) = state
        .and_then(|s| crate::trash::leftover_runs(s).ok())
        .filter(|n| *n > 0)
    {
        out.push(Finding {
            kind: FindingKind::LeftoverTrash,
            repo: String::new(),
            tag: None,
            digest: None,
            detail: format!(
                "{n} trash director(ies) left by interrupted regclean runs in .regclean/trash"
            ),
            advice: "run regclean again (any removal or --gc-only empties the trash)".into(),
        });
    }
    if let Some(rd) = repos_dir {
        for r in inv.repos.iter().filter(|r| r.uploads > 0) {
            out.extend(stale_uploads(rd, r, now));
        }
    }
    out
}

/// Mount points under `<root>/.regclean` (the trash): the trash deletion never crosses them,
/// but they are left there and every run reports them.
fn state_mounts(state: Option<&DirFd>) -> Vec<Finding> {
    let Some(Ok(mounts)) = state.map(DirFd::mount_points_below) else {
        return Vec::new();
    };
    mounts
        .into_iter()
        .map(|m| Finding {
            kind: FindingKind::MountPoint,
            repo: String::new(),
            tag: None,
            digest: None,
            detail: format!(
                ".regclean/{m}: a mount point in regclean's state directory (never crossed)"
            ),
            advice: "unmount it; regclean's trash deletion leaves it in place".into(),
        })
        .collect()
}

fn stale_uploads(repos_dir: &DirFd, r: &Repo, now: SystemTime) -> Vec<Finding> {
    let Ok(mut up) = crate::apply::open_repo(repos_dir, &r.name).and_then(|d| d.sub("_uploads"))
    else {
        return Vec::new();
    };
    let Ok(entries) = up.entries() else {
        return Vec::new();
    };
    let day_ago = now - Duration::from_secs(86_400);
    entries
        .iter()
        .filter(|e| up.stat(&e.name).map(|st| crate::fsx::mtime(&st) < day_ago).unwrap_or(false))
        .map(|e| Finding {
            kind: FindingKind::StaleUpload,
            repo: r.name.clone(),
            tag: None,
            digest: None,
            detail: format!("upload {} started more than a day ago", e.name.to_string_lossy()),
            advice: "abandoned uploads only take space: the registry's upload purging or removing the repository's _uploads entry frees it".into(),
        })
        .collect()
}

/// Hashes every blob (in parallel) and reports those whose content does not match.
pub fn verify_content(v2: &DirFd, blobs: &Blobs) -> (Vec<Finding>, Verified) {
    let start = Instant::now();
    let list: Vec<(&Digest, &u64)> = blobs.sizes.iter().collect();
    let bad: Vec<Finding> = list
        .par_iter()
        .filter_map(|(d, _)| {
            let h = d.hex();
            let dir = v2.sub("blobs").and_then(|b| b.sub("sha256")?.sub(&h[..2])?.sub(&h)).ok()?;
            let ok = hash_file(&dir).map(|x| x == d.0);
            let detail = match ok {
                Ok(true) => return None,
                Ok(false) => format!("blobs/sha256/{}/{h}/data does not hash to its digest", &h[..2]),
                Err(e) => format!("blobs/sha256/{}/{h}/data cannot be hashed: {e}", &h[..2]),
            };
            Some(Finding {
                kind: FindingKind::BlobCorrupt,
                repo: String::new(),
                tag: None,
                digest: Some(**d),
                detail,
                advice: "re-push every image using this blob (regclean --check names them as broken once the blob is removed)".into(),
            })
        })
        .collect();
    let bytes: u64 = blobs.sizes.values().sum();
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    (
        bad,
        Verified {
            blobs: list.len(),
            bytes,
            mib_per_s: (bytes as f64 / 1_048_576.0 / secs * 10.0).round() / 10.0,
        },
    )
}

fn hash_file(dir: &DirFd) -> std::io::Result<[u8; 32]> {
    use std::io::Read;
    let (mut f, _) = dir
        .open_file("data")
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

/// The check's report.
#[derive(Debug, Serialize)]
pub struct CheckReport {
    /// The storage root checked.
    pub root: String,
    /// Repositories checked.
    pub repositories: usize,
    /// Tags checked.
    pub tags: usize,
    /// Everything found, sorted by repository.
    pub findings: Vec<Finding>,
    /// Named targets that do not exist.
    pub missing: Vec<crate::plan::Missing>,
    /// Content verification, with `--verify-content`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified: Option<Verified>,
    /// Exit code: 0 clean, 1 anything broken.
    pub exit_code: i32,
}

impl CheckReport {
    /// Human form, grouped by repository.
    pub fn to_text(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let mut last: Option<&str> = None;
        for f in &self.findings {
            let group = if f.repo.is_empty() {
                "(store)"
            } else {
                f.repo.as_str()
            };
            if last != Some(group) {
                let _ = writeln!(s, "{group}");
                last = Some(group);
            }
            let kind = serde_json::to_value(f.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let tag = f
                .tag
                .as_deref()
                .map(|t| format!(" tag {t}"))
                .unwrap_or_default();
            let d = f.digest.map(|d| format!(" {d}")).unwrap_or_default();
            let _ = writeln!(s, "  {kind}{tag}{d}: {}", f.detail);
            let _ = writeln!(s, "    -> {}", f.advice);
        }
        for m in &self.missing {
            let _ = writeln!(s, "missing: {}: {}", m.target, m.reason);
        }
        if let Some(v) = &self.verified {
            let _ = writeln!(
                s,
                "verified {} blobs, {} at {} MiB/s",
                v.blobs,
                crate::report::human_bytes(v.bytes),
                v.mib_per_s
            );
        }
        let broken: BTreeSet<&str> = self
            .findings
            .iter()
            .map(|f| f.repo.as_str())
            .filter(|r| !r.is_empty())
            .collect();
        if self.findings.is_empty() {
            let _ = writeln!(
                s,
                "Check: clean ({} repositories, {} tags) in {}.",
                self.repositories, self.tags, self.root
            );
        } else {
            let _ = writeln!(
                s,
                "Check: {} problem(s), {} repositor{} affected ({} repositories, {} tags checked) in {}.",
                self.findings.len(),
                broken.len(),
                if broken.len() == 1 { "y" } else { "ies" },
                self.repositories,
                self.tags,
                self.root
            );
        }
        s
    }
}
