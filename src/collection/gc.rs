//! Running the registry's own `garbage-collect`, and never trusting its exit status alone.
//!
//! 2.8 exits 0 after printing an error for an unknown flag, without collecting anything; so a
//! run counts only with exit status 0 *and* the summary line
//! `N blobs marked, N blobs and N manifests eligible for deletion`. `-m`
//! (`--delete-untagged`) is never passed: on 2.8 it deletes the children of multi-arch images;
//! regclean prunes untagged manifests itself. The storage root is passed in the environment
//! (`REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY`, which the registry prefers over its config), so
//! the registry collects exactly the store regclean cleaned.

use crate::digest::Digest;
use crate::error::{Error, Result};
use regex::Regex;
use std::collections::{BTreeSet, VecDeque};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

/// Where to look for the registry binary when `--registry-bin` is not given.
pub const DEFAULT_BINS: [&str; 3] = ["/bin/registry", "registry", "docker-registry"];

/// Finds the registry binary: `explicit`, else [`DEFAULT_BINS`] (names searched on `PATH`).
pub fn find_binary(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(Error::Failed(format!(
                "registry binary {}: no such file",
                p.display()
            )))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for b in DEFAULT_BINS {
        if b.starts_with('/') {
            if Path::new(b).is_file() {
                return Ok(PathBuf::from(b));
            }
            continue;
        }
        for dir in std::env::split_paths(&path) {
            let p = dir.join(b);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(Error::Failed(format!(
        "no registry binary found (tried {}); pass --registry-bin",
        DEFAULT_BINS.join(", ")
    )))
}

/// The registry parses `REGISTRY_*` override values as YAML: a root such as `/data/a: b` or
/// `/data/x #y` must be passed as a quoted YAML string, or the collector would use another
/// path (or none).
fn yaml_env_value(root: &Path) -> Result<String> {
    let s = root.to_str().ok_or_else(|| {
        Error::Usage(format!(
            "storage root {} is not valid UTF-8: the registry's config cannot name it",
            root.display()
        ))
    })?;
    let y = serde_yaml_ng::to_string(&serde_yaml_ng::Value::String(s.to_string()))
        .expect("YAML serializes");
    Ok(y.trim_end_matches('\n').to_string())
}

/// What one `garbage-collect` run reported.
#[derive(Debug, Default, Clone)]
pub struct GcRun {
    /// The summary line.
    pub summary: String,
    /// Blobs marked.
    pub marked: u64,
    /// Blobs it deleted (or, in a dry run, would delete).
    pub swept: BTreeSet<Digest>,
}

/// The configuration handed to `garbage-collect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GcConfig {
    /// The registry's own config file.
    File(PathBuf),
    /// A generated config, passed as `/dev/stdin` (nothing is written to disk; the registry
    /// reads its config fully with `os.Open` + parse before doing anything).
    Generated(String),
}

/// Runs `BIN garbage-collect [--dry-run] CONFIG` for `root`, streaming its output into the logs.
pub fn run(bin: &Path, config: &GcConfig, root: &Path, dry_run: bool) -> Result<GcRun> {
    let mut cmd = Command::new(bin);
    cmd.arg("garbage-collect");
    if dry_run {
        cmd.arg("--dry-run");
    }
    let (cfg_arg, stdin_text) = match config {
        GcConfig::File(p) => (p.as_path(), None),
        GcConfig::Generated(t) => (Path::new("/dev/stdin"), Some(t.clone())),
    };
    cmd.arg(cfg_arg)
        .env(
            "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY",
            yaml_env_value(root)?,
        )
        .env_remove("REGISTRY_STORAGE")
        .env_remove("REGISTRY_CONFIGURATION_PATH")
        .stdin(if stdin_text.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let what = format!(
        "{} garbage-collect{} {}",
        bin.display(),
        if dry_run { " --dry-run" } else { "" },
        match config {
            GcConfig::File(p) => p.display().to_string(),
            GcConfig::Generated(_) => "<generated config on stdin>".to_string(),
        }
    );
    tracing::info!("running {what}");
    crate::progress::phase(format_args!(
        "running the registry's garbage-collect{}",
        if dry_run { " --dry-run" } else { "" }
    ));
    // The collector dies with regclean: killed regclean means released lock, and a collector
    // sweeping on without the lock could race the next run (or a restarted registry).
    die_with_parent(&mut cmd, nix::sys::signal::Signal::SIGKILL);
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::Failed(format!("cannot run {what}: {e}")))?;
    if let (Some(text), Some(mut stdin)) = (stdin_text, child.stdin.take()) {
        // Written from a thread and closed: a collector that never reads cannot block us.
        std::thread::spawn(move || {
            let _ = std::io::Write::write_all(&mut stdin, text.as_bytes());
        });
    }
    let tail: Arc<Mutex<VecDeque<String>>> = Arc::default();
    let keep = |line: &str, tail: &Mutex<VecDeque<String>>| {
        let mut t = tail.lock().unwrap();
        if t.len() == 12 {
            t.pop_front();
        }
        t.push_back(line.to_string());
    };
    let stderr = child.stderr.take().expect("piped");
    let err_tail = tail.clone();
    let err_thread = std::thread::spawn(move || {
        for line in BufReader::new(stderr)
            .lines()
            .map_while(std::result::Result::ok)
        {
            tracing::debug!(target: "regclean::gc", "{line}");
            keep(&line, &err_tail);
        }
    });
    let summary_re =
        Regex::new(r"^(\d+) blobs marked, (\d+) blobs and (\d+) manifests eligible for deletion")
            .unwrap();
    let mut out = GcRun::default();
    let mut have_summary = false;
    for line in BufReader::new(child.stdout.take().expect("piped"))
        .lines()
        .map_while(std::result::Result::ok)
    {
        if let Some(c) = summary_re.captures(&line) {
            have_summary = true;
            out.summary = line.clone();
            out.marked = c[1].parse().unwrap_or(0);
            tracing::info!("registry: {line}");
        } else if let Some(d) = line.strip_prefix("blob eligible for deletion: ") {
            if let Some(d) = Digest::parse(d.trim().as_bytes()) {
                out.swept.insert(d);
            }
            tracing::debug!(target: "regclean::gc", "{line}");
        } else {
            tracing::debug!(target: "regclean::gc", "{line}");
        }
        keep(&line, &tail);
    }
    let status = child
        .wait()
        .map_err(|e| Error::Failed(format!("waiting for {what}: {e}")))?;
    let _ = err_thread.join();
    let last = tail
        .lock()
        .unwrap()
        .iter()
        .cloned()
        .collect::<Vec<_>>()
        .join("\n  ");
    if !status.success() {
        return Err(Error::Failed(format!(
            "{what} failed ({status}); its last lines:\n  {last}"
        )));
    }
    if !have_summary {
        return Err(Error::Failed(format!(
            "{what} exited 0 but printed no summary line, so it did not collect; its last lines:\n  {last}"
        )));
    }
    Ok(out)
}

/// Makes the child get `sig` when this thread's process dies (`PR_SET_PDEATHSIG`; Linux sends
/// it when the thread that spawned the child exits, so spawn from a thread that lives as long
/// as the process).
pub fn die_with_parent(cmd: &mut Command, sig: nix::sys::signal::Signal) {
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs between fork and exec and calls only async-signal-safe
    // functions (prctl, getppid, _exit).
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, move || {
            nix::sys::prctl::set_pdeathsig(sig).map_err(std::io::Error::from)?;
            if nix::unistd::getppid() != parent {
                nix::libc::_exit(1); // the parent died before the prctl took effect
            }
            Ok(())
        });
    }
}
