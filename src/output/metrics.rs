//! `--metrics-file PATH`: the run's outcome in Prometheus text format, for node_exporter's
//! textfile collector (or any scraper reading a file).
//!
//! Written atomically (a fresh temporary file in the same directory, created with
//! `O_EXCL|O_NOFOLLOW`, then renamed over PATH), so a scraper never reads half a file and a
//! symlink planted at PATH is replaced, never written through. A failed run keeps the last
//! success timestamp of the previous file: alerting on "no success for a day" keeps working.

use crate::report::Report;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// What a run produced, as far as metrics go.
pub enum Outcome<'a> {
    /// A removal/retention/collection run that got as far as a report.
    Run(&'a Report),
    /// `--check`: its findings by kind.
    Check(&'a crate::check::CheckReport),
    /// A run that stopped with an error before its report.
    Failed,
}

const LAST_SUCCESS: &str = "regclean_last_success_timestamp_seconds";

/// Writes the metrics of `outcome` (exit code `exit`) to `path`.
pub fn write(path: &Path, outcome: Outcome, exit: i32, now: SystemTime) -> std::io::Result<()> {
    let now_s = now
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let previous = std::fs::read_to_string(path)
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix(&format!("{LAST_SUCCESS} ")))
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .unwrap_or(0.0);
    let success = if exit == 0 { now_s } else { previous };
    let mut m = String::new();
    gauge(
        &mut m,
        LAST_SUCCESS,
        "Time of the last run that exited 0.",
        &[("", success)],
    );
    gauge(
        &mut m,
        "regclean_last_run_timestamp_seconds",
        "Time of the last run.",
        &[("", now_s)],
    );
    gauge(
        &mut m,
        "regclean_last_exit_code",
        "Exit code of the last run (0 done, 1 failed, 2 usage, 3 refused).",
        &[("", exit as f64)],
    );
    match outcome {
        Outcome::Run(r) => run_metrics(&mut m, r),
        Outcome::Check(c) => {
            let mut kinds: std::collections::BTreeMap<String, f64> = Default::default();
            for f in &c.findings {
                let k = serde_json::to_value(f.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                *kinds.entry(k).or_default() += 1.0;
            }
            let labels: Vec<(String, f64)> = kinds
                .into_iter()
                .map(|(k, v)| (format!("{{kind=\"{k}\"}}"), v))
                .collect();
            let refs: Vec<(&str, f64)> = labels.iter().map(|(l, v)| (l.as_str(), *v)).collect();
            gauge(
                &mut m,
                "regclean_check_findings",
                "Findings of the last --check, by kind.",
                &refs,
            );
        }
        Outcome::Failed => {}
    }
    write_atomically(path, m.as_bytes())
}

fn run_metrics(m: &mut String, r: &Report) {
    let phases: Vec<(String, f64)> = serde_json::to_value(&r.timings_ms)
        .ok()
        .and_then(|v| v.as_object().cloned())
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| {
            (
                format!("{{phase=\"{k}\"}}"),
                v.as_f64().unwrap_or(0.0) / 1000.0,
            )
        })
        .collect();
    let refs: Vec<(&str, f64)> = phases.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    gauge(
        m,
        "regclean_phase_duration_seconds",
        "Duration of each phase of the last run.",
        &refs,
    );
    let done = |tag: bool| {
        r.removals
            .iter()
            .filter(|o| o.error.is_none())
            .filter(|o| matches!(o.removal.what, crate::plan::What::Tag { .. }) == tag)
            .count() as f64
    };
    let changed = !r.dry_run && !r.rolled_back;
    let n = |x: f64| if changed { x } else { 0.0 };
    let g = &r.gc;
    let pruned: usize = g.pruned.iter().map(|p| p.revisions.len()).sum();
    let attachments: usize = g.pruned.iter().map(|p| p.attachments.len()).sum();
    let collected = g.status == crate::collect::GcStatus::Done;
    let c = |x: f64| if changed && collected { x } else { 0.0 };
    // Collection done online by a supervisor counts as this run's.
    let (online_blobs, online_bytes) = r
        .supervisor
        .as_ref()
        .map(|s| {
            let g = &s["report"]["gc"];
            (
                g["freed_blobs"].as_f64().unwrap_or(0.0),
                g["freed_bytes"].as_f64().unwrap_or(0.0),
            )
        })
        .unwrap_or((0.0, 0.0));
    for (name, help, v) in [
        (
            "regclean_tags_removed",
            "Tags removed by the last run.",
            n(done(true)),
        ),
        (
            "regclean_repositories_removed",
            "Repositories removed by the last run.",
            n(done(false)),
        ),
        (
            "regclean_manifests_pruned",
            "Untagged manifests pruned by the last run.",
            c(pruned as f64),
        ),
        (
            "regclean_attachments_pruned",
            "Attachment tags pruned with their subject by the last run.",
            c(attachments as f64),
        ),
        (
            "regclean_blobs_freed",
            "Blobs deleted by the last run's collection.",
            c(g.freed_blobs as f64) + online_blobs,
        ),
        (
            "regclean_bytes_freed",
            "Bytes of blobs deleted by the last run's collection.",
            c(g.freed_bytes as f64) + online_bytes,
        ),
        (
            "regclean_hazards",
            "Store hazards found by the last run.",
            g.hazards.len() as f64,
        ),
    ] {
        gauge(m, name, help, &[("", v)]);
    }
}

fn gauge(m: &mut String, name: &str, help: &str, values: &[(&str, f64)]) {
    let _ = writeln!(m, "# HELP {name} {help}");
    let _ = writeln!(m, "# TYPE {name} gauge");
    for (labels, v) in values {
        let _ = writeln!(m, "{name}{labels} {v}");
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the metrics file path names no file"))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&tmp)?;
    let r = f
        .write_all(bytes)
        .and_then(|()| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}
