//! End-to-end: the live guard finds writable registries serving the store by what they are
//! (Debian's docker-registry 2.8.2 started the ways real deployments start it), not by their
//! name, and ignores registries that do not serve this store.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A registry started by a custom command, with a `Registry` handle on its store for the
/// shared helpers (push, get, regclean). Stopped (SIGTERM, wait) when dropped.
struct Live {
    r: Registry,
    child: Child,
}

impl Drop for Live {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

/// A handle on a new store `<tmp>/root` with the usual config `<tmp>/config.yml`.
fn store() -> Registry {
    let mut r = Registry::external(free_port(), Path::new(""));
    r.root = r.tmp.path().join("root");
    std::fs::create_dir_all(&r.root).unwrap();
    r.config = write_config(r.tmp.path(), &r.root, &format!("127.0.0.1:{}", r.port));
    r
}

/// Starts `cmd` as the registry of `r` and waits until it answers.
fn launch(r: Registry, mut cmd: Command) -> Live {
    let log_path = r.tmp.path().join("registry.log");
    let log = std::fs::File::create(&log_path).unwrap();
    cmd.stdout(log.try_clone().unwrap()).stderr(log);
    let child = cmd.spawn().expect("start the registry");
    let live = Live { r, child };
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok((200, _)) = live.r.get("/v2/") {
            return live;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "registry did not start: {}",
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );
}

/// `docker-registry serve <config>` with extra environment.
fn serve(config: &Path, env: &[(&str, &str)]) -> Command {
    let mut c = Command::new("docker-registry");
    c.arg("serve").arg(config);
    c.envs(env.iter().copied());
    c
}

fn json(o: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

/// Pushes `app:v1` and `app:v2` to a fresh store.
fn push_app(r: &Registry) {
    r.push(&oci_image(&[b"live guard app v1"]), "app:v1");
    r.push(&oci_image(&[b"live guard app v2"]), "app:v2");
}

/// The guard's two answers next to the writable registry `pid`: an explicit `--gc-only` is
/// refused with the store byte-identical (exit 3); a plain removal removes the tag and defers
/// pruning and GC (exit 0, `gc.status` "deferred", naming the registry).
fn assert_guarded(r: &Registry, pid: u32) {
    let before = snapshot(&r.root);
    let o = r.regclean(&["--gc-only"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("writable registry serves this store"),
        "{}",
        text(&o)
    );
    assert_same(&before, &snapshot(&r.root), "a refused --gc-only");

    let o = r.regclean(&["--json", "app:v1"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let j = json(&o);
    assert_eq!(j["gc"]["status"], "deferred", "{}", j["gc"]);
    let pids: Vec<u64> = j["gc"]["serving"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["pid"].as_u64())
        .collect();
    assert!(pids.contains(&(pid as u64)), "pid {pid} in {}", j["gc"]);
    r.assert_gone(&["app:v1"]);
    r.assert_pull(&["app:v2"]);
}

/// Collection of `r`'s store is allowed (exit 0, `gc.status` "done").
fn assert_collects(r: &Registry) {
    let o = r.regclean(&["--gc-only", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(json(&o)["gc"]["status"], "done", "{}", text(&o));
}

#[test]
fn renamed_registry_binary_is_still_found() {
    if !e2e_available() {
        return;
    }
    let r = store();
    // Harbor's name for its registry binary.
    let bin = r.tmp.path().join("registry_DO_NOT_USE_GC");
    std::fs::copy("/usr/bin/docker-registry", &bin).unwrap();
    let mut cmd = Command::new(&bin);
    cmd.arg("serve").arg(&r.config);
    let live = launch(r, cmd);
    push_app(&live.r);
    assert_guarded(&live.r, live.child.id());
}

#[test]
fn registry_started_with_exec_a_other_name_is_still_found() {
    if !e2e_available() {
        return;
    }
    let r = store();
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(r#"exec -a other-name docker-registry serve "$0""#)
        .arg(&r.config);
    let live = launch(r, cmd);
    let argv0 = std::fs::read(format!("/proc/{}/cmdline", live.child.id())).unwrap();
    assert!(argv0.starts_with(b"other-name\0serve\0"), "{argv0:?}");
    push_app(&live.r);
    assert_guarded(&live.r, live.child.id());
}

#[test]
fn relative_rootdirectory_is_resolved_against_the_registry_cwd() {
    if !e2e_available() {
        return;
    }
    let mut r = store();
    // The registry runs in <tmp>/work with `rootdirectory: var` and config `../config.yml`.
    // `var` exists relative to / too: resolved there it names another directory.
    let work = r.tmp.path().join("work");
    r.root = work.join("var");
    std::fs::create_dir_all(&r.root).unwrap();
    let text = std::fs::read_to_string(&r.config).unwrap().replace(
        &format!("rootdirectory: {}", r.tmp.path().join("root").display()),
        "rootdirectory: var",
    );
    assert!(text.contains("rootdirectory: var\n"), "{text}");
    std::fs::write(&r.config, text).unwrap();
    let mut cmd = serve(Path::new("../config.yml"), &[]);
    cmd.current_dir(&work);
    let live = launch(r, cmd);
    push_app(&live.r);
    assert!(
        live.r
            .root
            .join("docker/registry/v2/repositories/app")
            .is_dir(),
        "the registry stores under its cwd"
    );
    assert_guarded(&live.r, live.child.id());
}

/// The usual config with `storage.maintenance.readonly.enabled: true`.
fn read_only_config(config: &Path) -> String {
    let text = std::fs::read_to_string(config).unwrap();
    assert!(text.contains("\nstorage:\n"), "{text}");
    text.replace(
        "\nstorage:\n",
        "\nstorage:\n  maintenance:\n    readonly:\n      enabled: true\n",
    )
}

#[test]
fn config_edited_to_read_only_after_start_is_still_writable() {
    if !e2e_available() {
        return;
    }
    let r = Registry::start();
    push_app(&r);
    // The process start is known to the clock tick, boot time to the second: edit the config
    // clearly after the start, as an operator would before a restart that has not happened.
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::write(&r.config, read_only_config(&r.config)).unwrap();
    assert_guarded(&r, r.pid().unwrap());
}

#[test]
fn registry_really_started_read_only_allows_collection() {
    if !e2e_available() {
        return;
    }
    let mut r = Registry::start();
    push_app(&r);
    // The environment form that works on 2.8.
    r.serve(&[(
        "REGISTRY_STORAGE_MAINTENANCE_READONLY",
        r#"{"enabled":true}"#,
    )]);
    assert_collects(&r);
    // The config form, written before the registry started.
    std::fs::write(&r.config, read_only_config(&r.config)).unwrap();
    r.serve(&[]);
    assert_collects(&r);
    r.assert_pull(&["app:v1", "app:v2"]);
}

/// A registry serving `config_text` (with `ADDR` replaced by its address) from its own temp
/// dir, with extra environment.
fn other_registry(config_text: &str, env: &[(&str, &str)]) -> Live {
    let r = store();
    let text = config_text.replace("ADDR", &format!("127.0.0.1:{}", r.port));
    std::fs::write(&r.config, text).unwrap();
    let cmd = serve(&r.config, env);
    launch(r, cmd)
}

/// A store with images, whose own registry is stopped.
fn idle_store() -> Registry {
    let mut r = Registry::start();
    push_app(&r);
    r.stop();
    r
}

#[test]
fn registries_on_other_storage_drivers_do_not_defer_collection() {
    if !e2e_available() {
        return;
    }
    let r = idle_store();
    let _inmemory = other_registry(
        "version: 0.1\nstorage:\n  inmemory: {}\nhttp:\n  addr: ADDR\n",
        &[],
    );
    // Configured with this very store, but the environment switches the driver.
    let by_env = format!(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: ADDR\n",
        r.root.display()
    );
    let env_driver = other_registry(&by_env, &[("REGISTRY_STORAGE", "inmemory")]);
    env_driver.r.push(&oci_image(&[b"into memory"]), "mem:v1");
    assert!(
        !repo_path(&r.root, "mem").exists(),
        "REGISTRY_STORAGE=inmemory must keep the registry off this store"
    );
    assert_collects(&r);
}

#[test]
fn registry_whose_root_does_not_exist_does_not_defer_collection() {
    if !e2e_available() {
        return;
    }
    let r = idle_store();
    let missing = tempfile::tempdir().unwrap();
    let missing_root: PathBuf = missing.path().join("not-created-yet");
    let _other = other_registry(
        &format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: ADDR\n",
            missing_root.display()
        ),
        &[],
    );
    assert!(
        !missing_root.exists(),
        "the registry creates its root lazily"
    );
    assert_collects(&r);
}
