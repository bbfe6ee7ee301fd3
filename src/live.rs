//! The live-registry guard: is a `registry serve` using this store right now, and is it
//! read-only?
//!
//! Garbage collection next to a writable registry loses layers of concurrent pushes
//! (Distribution's docs: GC is stop-the-world), and pruning races with re-tagging. So before
//! either, regclean looks through `/proc` for `registry serve` / `docker-registry serve`
//! processes, resolves each one's storage root as that registry does (its environment, then
//! its config file, read through `/proc/<pid>/root` so a containerised registry is seen from
//! the host too), and compares the directory by device and inode, not by path.

use crate::config;
use serde::Serialize;
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A registry process serving the same store.
#[derive(Debug, Clone, Serialize)]
pub struct Serving {
    /// Its pid (as seen from here).
    pub pid: u32,
    /// Its command line.
    pub cmdline: String,
    /// Whether it runs in read-only maintenance mode.
    pub readonly: bool,
}

/// Registries serving the store at `root` (compared by device and inode).
pub fn serving(root: &Path) -> Vec<Serving> {
    let Ok(ours) = std::fs::metadata(root) else {
        return Vec::new();
    };
    let me = std::process::id();
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmd) = std::fs::read(p.path().join("cmdline")) else {
            continue;
        };
        let argv: Vec<String> = cmd
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let Some(serve_at) = serve_position(&argv) else {
            continue;
        };
        let env = read_environ(&p.path());
        let proc_root = p.path().join("root");
        let cwd = std::fs::read_link(p.path().join("cwd")).unwrap_or_else(|_| PathBuf::from("/"));
        let cfg_path = argv
            .get(serve_at + 1)
            .map(PathBuf::from)
            .or_else(|| env.get("REGISTRY_CONFIGURATION_PATH").map(PathBuf::from))
            .map(|c| if c.is_absolute() { c } else { cwd.join(c) });
        let cfg = cfg_path.and_then(|c| config::read_config(&in_proc_root(&proc_root, &c)).ok());
        let their_root = env
            .get("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY")
            .cloned()
            .or_else(|| {
                cfg.as_ref().and_then(|c| {
                    config::get(&c.yaml, &["storage", "filesystem", "rootdirectory"])?
                        .as_str()
                        .map(str::to_string)
                })
            })
            .unwrap_or_else(|| config::DEFAULT_ROOT.to_string());
        let same = match std::fs::metadata(in_proc_root(&proc_root, Path::new(&their_root))) {
            Ok(m) => m.dev() == ours.dev() && m.ino() == ours.ino(),
            // Cannot tell (no access to its mount namespace): assume the worst.
            Err(_) => true,
        };
        if !same {
            continue;
        }
        out.push(Serving {
            pid,
            cmdline: argv.join(" "),
            readonly: readonly(&env, cfg.as_ref()),
        });
    }
    out
}

/// The index of `serve` in a registry's argv (`registry serve CONFIG`).
fn serve_position(argv: &[String]) -> Option<usize> {
    let is_registry = |a: &String| {
        let base = Path::new(a)
            .file_name()
            .and_then(|b| b.to_str())
            .unwrap_or("");
        base == "registry" || base == "docker-registry"
    };
    argv.iter()
        .position(|a| a == "serve")
        .filter(|&i| i > 0 && is_registry(&argv[i - 1]))
}

fn in_proc_root(proc_root: &Path, p: &Path) -> PathBuf {
    proc_root.join(p.strip_prefix("/").unwrap_or(p))
}

fn read_environ(proc_dir: &Path) -> HashMap<String, String> {
    std::fs::read(proc_dir.join("environ"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
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

    #[test]
    fn serve_is_recognised_for_both_binaries() {
        let v = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert_eq!(
            serve_position(&v("registry serve /etc/docker/registry/config.yml")),
            Some(1)
        );
        assert_eq!(
            serve_position(&v("/usr/bin/docker-registry serve cfg.yml")),
            Some(1)
        );
        assert_eq!(serve_position(&v("/bin/registry serve")), Some(1));
        assert_eq!(serve_position(&v("registry garbage-collect cfg.yml")), None);
        assert_eq!(serve_position(&v("vim serve")), None);
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
