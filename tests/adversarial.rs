//! Adversarial review of the issue 10 fixes: each test pins one way the promises ("never
//! touches anything outside the store", "exit 2/3 means nothing was changed", "the live guard
//! finds writable registries as the registry resolves its storage", "pruning only where the
//! run touches") were still broken. Mount tests need root (`mount --bind`), which CI has.

mod common;
use common::*;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(o)))
}

/// Bind mounts made under one directory; unmounted on drop (searched in the mount table).
struct Mounts {
    under: PathBuf,
}

impl Mounts {
    fn new(under: &Path) -> Mounts {
        Mounts {
            under: std::fs::canonicalize(under).unwrap(),
        }
    }

    fn bind(&self, src: &Path, dst: &Path) {
        std::fs::create_dir_all(dst).unwrap();
        let o = Command::new("mount")
            .arg("--bind")
            .arg(src)
            .arg(dst)
            .output()
            .unwrap();
        assert!(o.status.success(), "mount --bind: {}", text(&o));
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut v: Vec<PathBuf> = table
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(|p| PathBuf::from(p.replace("\\040", " ")))
            .filter(|p| p.starts_with(&self.under) && *p != self.under)
            .collect();
        v.sort();
        for p in v.iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(p).status();
        }
    }
}

/// Names of the entries of `dir` (empty when it does not exist).
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

// --- exit codes that say "nothing was changed" after changes ---

/// A storage root whose path is not UTF-8, with no registry config file (so regclean must
/// generate one): the removal and pruning happen, then generating the GC config fails with a
/// usage error — exit 2 ("invalid usage; nothing was changed") with the repository gone and
/// its contents left in `.regclean/trash`. The check must come before the first change.
#[test]
fn non_utf8_root_is_refused_before_removal_not_with_exit_2_after_it() {
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp
        .path()
        .join(std::ffi::OsStr::from_bytes(b"store-\xff-latin1"));
    let st = Command::new("cp")
        .arg("-a")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/sample"))
        .arg(&root)
        .status()
        .unwrap();
    assert!(st.success());
    let before = full_snapshot(&root);
    let o = regclean()
        .arg("--root")
        .arg(&root)
        .args(["--config", "/dev/null", "team1/app0"])
        .output()
        .unwrap();
    let code = o.status.code();
    assert_ne!(code, Some(0), "{}", text(&o));
    if matches!(code, Some(2) | Some(3)) {
        assert_same(
            &before,
            &full_snapshot(&root),
            "exit 2/3 means nothing was changed",
        );
    }
    assert!(
        names(&root.join(".regclean/trash")).is_empty(),
        "a run must never end with its removals left undeleted in the trash: {}",
        text(&o)
    );
}

// --- mounts around the state directory ---

/// `<root>/.regclean` is a bind mount of an outside directory (same file system, so the device
/// check passes): regclean creates `trash/` inside the outside directory, then notices the
/// mount and exits 3 — having written outside the store, and leaving it there.
#[test]
fn state_directory_bind_mount_gets_nothing_created_through_it() {
    let (t, root) = fixture("sample");
    let outside = t.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let mounts = Mounts::new(t.path());
    mounts.bind(&outside, &root.join(".regclean"));
    let o = run_on(&root, &["team1/app0"]);
    let seen = names(&outside);
    drop(mounts);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        seen.is_empty(),
        "regclean created {seen:?} in a directory outside the store (bind-mounted at .regclean): {}",
        text(&o)
    );
}

/// `repositories/` is a bind mount (same file system): with `--no-gc` (no hazard check), the
/// run creates `.regclean/trash`, then refuses because the trash is on another mount — exit 3
/// with the root changed. The refusal must come before the state directory is created.
#[test]
fn mount_refusal_of_the_trash_leaves_no_state_directory_behind() {
    let (t, root) = fixture("sample");
    let repos = root.join("docker/registry/v2/repositories");
    let moved = t.path().join("repos-elsewhere");
    std::fs::rename(&repos, &moved).unwrap();
    std::fs::create_dir(&repos).unwrap();
    let mounts = Mounts::new(t.path());
    mounts.bind(&moved, &repos);
    let before = full_snapshot(&root);
    let o = run_on(&root, &["--no-gc", "team1/app0"]);
    let after = full_snapshot(&root);
    drop(mounts);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert_same(&before, &after, "a refused run (exit 3) changes nothing");
}

// --- the rollback ---

/// A late refusal rolls a repository removal back, but the repository directory (removed by
/// `rmdir` once empty) is re-created by regclean as root:root 0755, not with its owner and
/// mode. A registry running as another user (uid 1000 here) can then no longer create
/// `_uploads` or `_layers` in it: exit 3 "nothing was changed" is not true.
#[test]
fn rollback_recreates_removed_directories_with_their_owner_and_mode() {
    let (t, root) = fixture("sample");
    let st = Command::new("chown")
        .args(["-R", "1000:1000"])
        .arg(&root)
        .status()
        .unwrap();
    assert!(st.success());
    let app0 = repo_path(&root, "team1/app0");
    let st = Command::new("chmod")
        .arg("2775")
        .arg(&app0)
        .status()
        .unwrap();
    assert!(st.success());
    let fake = refusing_registry(t.path(), &root);
    let before = full_snapshot(&root);
    let o = run_on(
        &root,
        &[
            "--json",
            "--registry-bin",
            fake.to_str().unwrap(),
            "team1/app0",
        ],
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert_eq!(json(&o)["rolled_back"], true, "{}", text(&o));
    let m = std::fs::metadata(&app0).unwrap();
    assert_eq!(
        (m.uid(), m.mode() & 0o7777),
        (1000, 0o2775),
        "the rolled-back repository directory lost its owner/mode"
    );
    assert_same(&before, &full_snapshot(&root), "exit 3 after a rollback");
}

// --- pruning scope ---

/// `regclean 'team0/*:build-*'` prunes untagged manifests in team0/app3 although no tag of it
/// matched and nothing in it was removed: digest-pinned deployments there break. A repository
/// only matched by the repository part of a tag pattern is not touched by the run.
#[test]
fn tag_pattern_prunes_only_repositories_where_it_removed_something() {
    let (_t, root) = fixture("sample");
    for e in std::fs::read_dir(repo_path(&root, "team0/app3/_manifests/tags")).unwrap() {
        let e = e.unwrap();
        if e.file_name().to_string_lossy().starts_with("build-") {
            std::fs::remove_dir_all(e.path()).unwrap();
        }
    }
    let o = run_on(&root, &["--dry-run", "--json", "team0/*:build-*"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let j = json(&o);
    let removed: Vec<&str> = j["removals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["repo"].as_str().unwrap())
        .collect();
    assert!(!removed.contains(&"team0/app3"), "{j}");
    let pruned: Vec<&str> = j["gc"]["pruned"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["repo"].as_str().unwrap())
        .collect();
    assert!(
        !pruned.contains(&"team0/app3"),
        "team0/app3 had no matching tag and nothing removed, yet its untagged manifests are pruned: {pruned:?}"
    );
}

// --- the live guard resolves storage differently from the registry ---

/// Pushes `app:v1`, then restarts the registry with `config` and `env` (texts, `{root}` and
/// `{addr}` substituted), and checks it still serves the same store.
fn serve_same_store_differently(config: &str, env: &[(&str, &str)]) -> Registry {
    let mut r = Registry::start();
    r.push(&oci_image(&[b"adv-live-layer"]), "app:v1");
    r.push(&oci_image(&[b"adv-live-layer-2"]), "app:v2");
    let text = config
        .replace("{root}", &r.root.display().to_string())
        .replace("{addr}", &format!("127.0.0.1:{}", r.port));
    std::fs::write(&r.config, text).unwrap();
    let root = r.root.display().to_string();
    let env: Vec<(&str, String)> = env
        .iter()
        .map(|(k, v)| (*k, v.replace("{root}", &root)))
        .collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    r.serve(&env);
    r.assert_pull(&["app:v1"]);
    r
}

fn assert_found_serving(r: &Registry) {
    let o = r.regclean(&["--json", "--dry-run", "app:v2"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let j = json(&o);
    assert!(
        !j["gc"]["serving"].as_array().unwrap().is_empty(),
        "a writable registry (pid {:?}) serves this store, the guard did not find it: {j}",
        r.pid()
    );
    assert_eq!(j["gc"]["status"], "deferred", "{j}");
}

/// The registry parses `REGISTRY_*` environment overrides as YAML, so a quoted value (as
/// `docker run --env-file` passes `KEY="/var/lib/registry"` verbatim) names the store; the
/// live guard takes the quotes literally, finds no such directory, and lets GC run next to a
/// writable registry.
#[test]
fn live_guard_reads_the_environment_root_as_yaml_like_the_registry() {
    if !e2e_available() {
        return;
    }
    let cfg = "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: /nonexistent/elsewhere\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n";
    let r = serve_same_store_differently(
        cfg,
        &[("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", "\"{root}\"")],
    );
    assert_found_serving(&r);
}

/// The registry reads its config with YAML 1.1 merge keys (`<<: *anchor`); the live guard
/// does not, resolves the default root, and misses the writable registry serving this store.
#[test]
fn live_guard_reads_yaml_merge_keys_in_the_config_like_the_registry() {
    if !e2e_available() {
        return;
    }
    let cfg = "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nfs: &fs\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\nstorage:\n  <<: *fs\nhttp:\n  addr: {addr}\n";
    let r = serve_same_store_differently(cfg, &[]);
    assert_found_serving(&r);
}

// --- kill -9 during collection ---

/// regclean is SIGKILLed while the registry's `garbage-collect` runs: the collector (its
/// child) keeps running and sweeping, but the lock died with regclean (the lock descriptor is
/// close-on-exec, nothing ties the child to the parent). A second run — or the maintenance
/// script restarting the registry — proceeds while blobs are still being deleted. Either the
/// collector must hold the lock too (the second run exits 3) or it must die with regclean.
#[test]
fn sigkill_during_collection_leaves_the_collector_running_without_the_lock() {
    let (t, root) = fixture("sample");
    let started = t.path().join("gc-started");
    let finished = t.path().join("gc-finished");
    let fake = fake_registry(
        t.path(),
        &format!(
            "case \"$*\" in *--dry-run*) echo '0 blobs marked, 0 blobs and 0 manifests eligible for deletion';; *) touch {s}; sleep 4; touch {f}; echo '0 blobs marked, 0 blobs and 0 manifests eligible for deletion';; esac",
            s = started.display(),
            f = finished.display()
        ),
    );
    let mut first = regclean()
        .arg("--root")
        .arg(&root)
        .args(["--config", "/dev/null", "-q", "--registry-bin"])
        .arg(&fake)
        .arg("team1/app0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !started.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the collector never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    first.kill().unwrap();
    first.wait().unwrap();
    let second = run_on(&root, &["--no-gc", "team1/app1"]);
    let collector_was_running = !finished.exists();
    std::thread::sleep(std::time::Duration::from_secs(5));
    if second.status.code() != Some(3) {
        assert!(
            !(collector_was_running && finished.exists()),
            "a second run changed the store while the killed run's collector was still sweeping: {}",
            text(&second)
        );
    }
}
