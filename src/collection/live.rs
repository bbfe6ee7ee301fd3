//! The live-registry guard: is a registry serving this store right now, and is it read-only?
//!
//! Garbage collection next to a writable registry loses layers of concurrent pushes
//! (Distribution's docs: GC is stop-the-world), and pruning races with re-tagging. So before
//! either, regclean looks through `/proc` for registries by what they are, not by their name:
//! a process whose executable's Go build info names Distribution (see [`buildinfo`]; a renamed
//! copy such as Harbor's `registry_DO_NOT_USE_GC`, or an `exec -a` argv, is still found) and
//! whose subcommand is `serve`. It then resolves that registry's storage as the registry does
//! (its environment, then its config file; relative paths against its working directory; all
//! read through `/proc/<pid>/root` and `/proc/<pid>/cwd` so a containerised registry is seen
//! from the host too), skips other storage drivers and roots that do not exist, and compares
//! the directory by device and inode, not by path. Read-only mode is trusted only from a config
//! that has not changed since the process started: the registry reads it once.

mod buildinfo;

use crate::config;
use buildinfo::ExeKind;
use serde::Serialize;
use std::collections::HashMap;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A registry process serving the same store.
#[derive(Debug, Clone, Serialize)]
pub struct Serving {
    /// Its pid (as seen from here).
    pub pid: u32,
    /// Its command line.
    pub cmdline: String,
    /// Whether it runs in read-only maintenance mode.
    pub readonly: bool,
    /// How it was recognised and why it counts (so a surprising deferral can be explained).
    pub reason: String,
}

/// Registries serving the store at `root` (compared by device and inode). regclean itself and
/// its children (the registry's `garbage-collect`) never count.
pub fn serving(root: &Path) -> Vec<Serving> {
    let Ok(ours) = std::fs::metadata(root) else {
        return Vec::new();
    };
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id();
    let mut scan = Scan {
        store: (ours.dev(), ours.ino()),
        me,
        boot: std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| parse_btime(&s)),
        hz: clock_ticks(),
        exes: HashMap::new(),
    };
    procs
        .flatten()
        .filter_map(|p| p.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter_map(|pid| scan.inspect(pid))
        .collect()
}

/// What one look through `/proc` knows.
struct Scan {
    /// The store's (device, inode).
    store: (u64, u64),
    /// regclean's own pid.
    me: u32,
    /// Boot time, seconds since the epoch (`btime` in `/proc/stat`).
    boot: Option<u64>,
    /// Clock ticks per second (`/proc/<pid>/stat` times are in ticks).
    hz: u64,
    /// Executables already classified, by (device, inode): a binary is read once per run.
    exes: HashMap<(u64, u64), ExeKind>,
}

/// What a registry's config file tells, given when the process started.
enum ConfigState {
    /// Read, and unchanged since the process started (or none was named).
    Current(Option<config::RegistryConfig>),
    /// Read, but changed after the process started: the running registry may use other
    /// settings; its read-only mode is unknown, which means writable.
    Changed(config::RegistryConfig),
    /// Not readable (permission denied, removed, invalid): why.
    Unreadable(String),
}

impl Scan {
    /// The serving registry at `pid`, if it is one and serves this store.
    fn inspect(&mut self, pid: u32) -> Option<Serving> {
        let dir = PathBuf::from(format!("/proc/{pid}"));
        let argv = read_argv(&dir)?;
        let config_arg = serve_config(&argv)?;
        let how = self.identify(&dir, &argv)?;
        let (ppid, ticks) = parse_stat(&std::fs::read_to_string(dir.join("stat")).ok()?)?;
        if ppid == self.me {
            return None;
        }
        let found = |readonly: bool, why: String| Serving {
            pid,
            cmdline: argv.join(" "),
            readonly,
            reason: format!("{how}; {why}"),
        };
        let env = match read_environ(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::PermissionDenied => {
                return Some(found(
                    false,
                    assume_worst("its environment is not readable"),
                ))
            }
            Err(_) => return None,
        };
        let env_driver = env
            .get("REGISTRY_STORAGE")
            .map(|d| config::env_scalar(d.trim()));
        let env_driver = env_driver.as_deref();
        if env_driver.is_some_and(|d| !d.is_empty() && d != "filesystem") {
            return None;
        }
        let start = self
            .boot
            .map(|b| process_start(b, ticks, self.hz))
            .unwrap_or(UNIX_EPOCH);
        let config_path = config_arg.or_else(|| env.get("REGISTRY_CONFIGURATION_PATH").cloned());
        let state = read_config_of(&dir, config_path.as_deref(), start);
        let cfg = match &state {
            ConfigState::Current(c) => c.as_ref(),
            ConfigState::Changed(c) => Some(c),
            ConfigState::Unreadable(_) => None,
        };
        match config::storage_driver(cfg, env_driver) {
            Ok(Some(d)) if d != "filesystem" => return None,
            _ => {}
        }
        // The registry reads REGISTRY_* values as YAML (`"/store"` is /store).
        let env_root = env
            .get("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY")
            .map(|r| config::env_scalar(r))
            .filter(|r| !r.is_empty());
        let their_root = match (env_root, &state) {
            (Some(r), _) => r,
            (None, ConfigState::Unreadable(why)) => {
                return Some(found(false, assume_worst(why)));
            }
            (None, _) => cfg
                .and_then(config_root)
                .unwrap_or_else(|| config::DEFAULT_ROOT.into()),
        };
        match std::fs::metadata(in_process(&dir, Path::new(&their_root))) {
            Ok(m) if (m.dev(), m.ino()) == self.store => {}
            Err(e) if e.kind() == ErrorKind::PermissionDenied => {
                let why = format!("its root {their_root} is not readable");
                return Some(found(false, assume_worst(&why)));
            }
            // Another directory, or one that does not exist: another store.
            _ => return None,
        }
        let (readonly, note) = match &state {
            ConfigState::Current(c) => (readonly(&env, c.as_ref()), String::new()),
            ConfigState::Changed(_) => (
                readonly(&env, None),
                format!(
                    "; its config {} changed after it started, so its read-only mode is unknown (taken as writable unless its environment sets it)",
                    config_path.as_deref().unwrap_or_default()
                ),
            ),
            ConfigState::Unreadable(why) => (readonly(&env, None), format!("; {why}")),
        };
        Some(found(readonly, format!("it serves {their_root}{note}")))
    }

    /// How the process was recognised as a registry, or `None` if it is not one: by its
    /// executable's build info, or, only when that cannot be read, by its name.
    fn identify(&mut self, dir: &Path, argv: &[String]) -> Option<String> {
        match self.exe_kind(dir) {
            ExeKind::Distribution(path) => Some(format!("its executable is Distribution's {path}")),
            ExeKind::Other => None,
            ExeKind::Unknown => named_registry(&argv[0])
                .then(|| "named like the registry (its executable could not be identified)".into()),
        }
    }

    /// The kind of `/proc/<pid>/exe`, cached per (device, inode).
    fn exe_kind(&mut self, dir: &Path) -> ExeKind {
        let exe = dir.join("exe");
        let Ok(m) = std::fs::metadata(&exe) else {
            return ExeKind::Unknown;
        };
        if let Some(k) = self.exes.get(&(m.dev(), m.ino())) {
            return k.clone();
        }
        let Ok(f) = std::fs::File::open(&exe) else {
            return ExeKind::Unknown;
        };
        let k = buildinfo::classify(&f);
        self.exes.insert((m.dev(), m.ino()), k.clone());
        k
    }
}

fn assume_worst(why: &str) -> String {
    format!("{why}: assuming it serves this store, writable")
}

/// `storage.filesystem.rootdirectory` as the registry would read it.
fn config_root(c: &config::RegistryConfig) -> Option<String> {
    match config::get(&c.yaml, &["storage", "filesystem", "rootdirectory"])? {
        serde_yaml_ng::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_yaml_ng::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Reads the config at `path` as the process at `dir` sees it, and tells whether it changed
/// after the process started.
fn read_config_of(dir: &Path, path: Option<&str>, start: SystemTime) -> ConfigState {
    let Some(p) = path else {
        return ConfigState::Current(None);
    };
    let file = in_process(dir, Path::new(p));
    let cfg = match config::read_config(&file) {
        Ok(c) => c,
        Err(e) => return ConfigState::Unreadable(format!("its config {p} is not readable ({e})")),
    };
    match std::fs::metadata(&file).and_then(|m| m.modified()) {
        Ok(mtime) if !changed_after(mtime, start) => ConfigState::Current(Some(cfg)),
        _ => ConfigState::Changed(cfg),
    }
}

/// Was a file modified after a process that started at `start` (as computed from `btime`,
/// whole seconds, so up to 1 s early)? Only a change surely after the start counts.
fn changed_after(mtime: SystemTime, start: SystemTime) -> bool {
    mtime > start + Duration::from_secs(1)
}

/// When a process started: boot time plus its start time in clock ticks.
fn process_start(boot: u64, ticks: u64, hz: u64) -> SystemTime {
    let hz = hz.max(1);
    UNIX_EPOCH
        + Duration::from_secs(boot)
        + Duration::from_secs(ticks / hz)
        + Duration::from_nanos((ticks % hz) * 1_000_000_000 / hz)
}

/// `btime` (boot time, seconds since the epoch) from `/proc/stat`.
fn parse_btime(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// (parent pid, start time in clock ticks) from `/proc/<pid>/stat`: fields 4 and 22, counted
/// after the command name, which may itself hold spaces and parentheses.
fn parse_stat(stat: &str) -> Option<(u32, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((f.get(1)?.parse().ok()?, f.get(19)?.parse().ok()?))
}

/// Clock ticks per second.
fn clock_ticks() -> u64 {
    // SAFETY: sysconf only reads a constant of the C library.
    let t = unsafe { nix::libc::sysconf(nix::libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

fn read_argv(dir: &Path) -> Option<Vec<String>> {
    let cmd = std::fs::read(dir.join("cmdline")).ok()?;
    let argv: Vec<String> = cmd
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    (!argv.is_empty()).then_some(argv)
}

/// For `registry serve [CONFIG]` (any argv[0]): `Some(CONFIG)`; `None` for any other
/// subcommand (`garbage-collect` is not serving).
fn serve_config(argv: &[String]) -> Option<Option<String>> {
    let mut positional = argv.iter().skip(1).filter(|a| !a.starts_with('-'));
    (positional.next()? == "serve").then(|| positional.next().cloned())
}

/// The fallback when the executable cannot be read: the registry's usual names
/// (`registry`, Harbor's `registry_DO_NOT_USE_GC`, Debian's `docker-registry`).
fn named_registry(argv0: &str) -> bool {
    let base = Path::new(argv0)
        .file_name()
        .and_then(|b| b.to_str())
        .unwrap_or("");
    base.starts_with("registry") || base == "docker-registry"
}

/// A path as the process at `dir` sees it: absolute ones through its root, relative ones
/// through its working directory (the registry opens them relative to it).
fn in_process(dir: &Path, p: &Path) -> PathBuf {
    match p.strip_prefix("/") {
        Ok(rel) => dir.join("root").join(rel),
        Err(_) => dir.join("cwd").join(p),
    }
}

fn read_environ(proc_dir: &Path) -> std::io::Result<HashMap<String, String>> {
    Ok(std::fs::read(proc_dir.join("environ"))?
        .split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect())
}

/// Is a registry with this environment and config read-only? The registry reads
/// `storage.maintenance.readonly.enabled`; the working environment form is
/// `REGISTRY_STORAGE_MAINTENANCE_READONLY='{"enabled":true}'` (YAML/JSON), which replaces the
/// config's value.
pub fn readonly(env: &HashMap<String, String>, cfg: Option<&config::RegistryConfig>) -> bool {
    if let Some(v) = env.get("REGISTRY_STORAGE_MAINTENANCE_READONLY") {
        if let Ok(y) = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(v) {
            return enabled(&y);
        }
    }
    if let Some(v) = env.get("REGISTRY_STORAGE_MAINTENANCE_READONLY_ENABLED") {
        return v.trim() == "true";
    }
    cfg.and_then(|c| config::get(&c.yaml, &["storage", "maintenance", "readonly"]))
        .is_some_and(enabled)
}

fn enabled(v: &serde_yaml_ng::Value) -> bool {
    v.as_mapping()
        .and_then(|m| m.get("enabled"))
        .and_then(|e| e.as_bool())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn cfg(text: &str) -> config::RegistryConfig {
        config::RegistryConfig {
            path: "/c.yml".into(),
            yaml: serde_yaml_ng::from_str(text).unwrap(),
        }
    }

    fn v(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn serve_is_recognised_whatever_argv0_is() {
        let cfg = |s: &str| serve_config(&v(s));
        assert_eq!(
            cfg("registry serve /etc/docker/registry/config.yml"),
            Some(Some("/etc/docker/registry/config.yml".into()))
        );
        assert_eq!(
            cfg("other-name serve cfg.yml"),
            Some(Some("cfg.yml".into()))
        );
        assert_eq!(cfg("/bin/registry serve"), Some(None));
        assert_eq!(
            cfg("registry_DO_NOT_USE_GC -v serve c"),
            Some(Some("c".into()))
        );
        assert_eq!(cfg("registry garbage-collect serve"), None);
        assert_eq!(cfg("registry garbage-collect cfg.yml"), None);
        assert_eq!(cfg("bash -c exec"), None);
        assert_eq!(cfg("registry"), None);
    }

    #[test]
    fn names_are_only_a_fallback_for_unreadable_executables() {
        assert!(named_registry("/bin/registry"));
        assert!(named_registry("registry_DO_NOT_USE_GC"));
        assert!(named_registry("/usr/bin/docker-registry"));
        assert!(!named_registry("other-name"));
        assert!(!named_registry("vim"));
    }

    #[test]
    fn process_start_is_boot_time_plus_ticks() {
        // comm may hold spaces and parentheses; fields are counted after the last ')'.
        let stat = "4242 (a) b (c)) S 17 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 12345 1000 50 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(parse_stat(stat), Some((17, 12345)));
        assert_eq!(parse_stat("1 (x) S"), None);
        assert_eq!(
            parse_btime("cpu  1 2 3\nctxt 99\nbtime 1700000000\nprocesses 5\n"),
            Some(1_700_000_000)
        );
        let start = process_start(1_700_000_000, 12345, 100);
        assert_eq!(
            start,
            UNIX_EPOCH + Duration::from_secs(1_700_000_123) + Duration::from_millis(450)
        );
        // btime is whole seconds: only a change surely after the start counts.
        assert!(!changed_after(start + Duration::from_millis(900), start));
        assert!(changed_after(start + Duration::from_millis(1100), start));
        assert!(!changed_after(start - Duration::from_secs(60), start));
    }

    #[test]
    fn this_process_started_in_the_past() {
        let (ppid, ticks) =
            parse_stat(&std::fs::read_to_string("/proc/self/stat").unwrap()).unwrap();
        assert_eq!(ppid, nix::unistd::getppid().as_raw() as u32);
        let boot = parse_btime(&std::fs::read_to_string("/proc/stat").unwrap()).unwrap();
        let start = process_start(boot, ticks, clock_ticks());
        let now = SystemTime::now();
        assert!(start <= now, "{start:?} > {now:?}");
        assert!(now.duration_since(start).unwrap() < Duration::from_secs(3600));
    }

    #[test]
    fn paths_resolve_through_the_process_root_or_cwd() {
        let d = Path::new("/proc/7");
        assert_eq!(
            in_process(d, Path::new("/var/lib/registry")),
            PathBuf::from("/proc/7/root/var/lib/registry")
        );
        assert_eq!(
            in_process(d, Path::new("data/store")),
            PathBuf::from("/proc/7/cwd/data/store")
        );
    }

    #[test]
    fn readonly_from_config_and_environment() {
        let ro = cfg("storage:\n  maintenance:\n    readonly:\n      enabled: true\n");
        assert!(readonly(&env(&[]), Some(&ro)));
        assert!(!readonly(
            &env(&[]),
            Some(&cfg("storage:\n  filesystem: {}\n"))
        ));
        assert!(readonly(
            &env(&[(
                "REGISTRY_STORAGE_MAINTENANCE_READONLY",
                r#"{"enabled":true}"#
            )]),
            None
        ));
        assert!(!readonly(
            &env(&[(
                "REGISTRY_STORAGE_MAINTENANCE_READONLY",
                r#"{"enabled":false}"#
            )]),
            Some(&ro)
        ));
        assert!(readonly(
            &env(&[("REGISTRY_STORAGE_MAINTENANCE_READONLY_ENABLED", "true")]),
            None
        ));
    }
}
