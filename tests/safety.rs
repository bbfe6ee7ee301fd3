//! Regression tests for the safety holes of issue 10 that are not about mounts, FIFOs, the
//! live guard's process detection or manifest decoding (those have files of their own): live
//! repository removal and the blob descriptor cache, pruning scope, planted links in
//! `.regclean`, late refusals that must undo, refused runs and dry runs that must not write,
//! and the small input checks.

mod common;
use common::*;
use std::path::Path;
use std::process::Output;

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(o)))
}

fn code(o: &Output) -> Option<i32> {
    o.status.code()
}

/// Leaves what an interrupted run leaves: a tag in `.regclean/trash/<run>/`.
fn plant_leftover_trash(root: &Path) {
    let t = root.join(".regclean/trash/1700000000-42/0.tag/current");
    std::fs::create_dir_all(&t).unwrap();
    std::fs::write(t.join("link"), format!("sha256:{}", "a".repeat(64))).unwrap();
}

// --- item 1: live repository removal and the blob descriptor cache ---

#[test]
fn live_repository_removal_keeps_layers_so_a_repush_still_pulls_after_restart() {
    if !e2e_available() {
        return;
    }
    let mut r = Registry::start();
    let img = oci_image(&[b"old app base", b"old app own layer"]);
    r.push(&img, "old/app:v1");
    r.assert_pull(&["old/app:v1"]);

    // Live: removal now, GC deferred, `_layers` left and reported.
    let o = r.regclean(&["--json", "old/app"]);
    assert_eq!(code(&o), Some(0), "{}", text(&o));
    let j = json(&o);
    assert_eq!(j["gc"]["status"], "deferred", "{j}");
    assert_eq!(
        j["gc"]["layers_left"],
        serde_json::json!(["old/app"]),
        "{j}"
    );
    assert!(
        j["gc"]["reason"].as_str().unwrap().contains("_layers"),
        "{j}"
    );
    assert!(repo_path(&r.root, "old/app/_layers").exists());
    assert!(!repo_path(&r.root, "old/app/_manifests").exists());
    r.assert_gone(&["old/app:v1"]);

    // The registry's in-memory cache still says the layers are in old/app: the re-push skips
    // their upload. With `_layers` gone, no link would be re-created and the image would be
    // broken after the restart.
    r.push(&img, "old/app:v1");
    r.serve(&[]);
    r.assert_pull(&["old/app:v1"]);
    let o = r.regclean(&["--check"]);
    assert_eq!(code(&o), Some(0), "{}", text(&o));
}

#[test]
fn leftover_layers_of_a_live_removal_go_with_the_next_offline_collection() {
    if !e2e_available() {
        return;
    }
    let mut r = Registry::start();
    r.push(&oci_image(&[b"gone base", b"gone own"]), "gone/app:v1");
    r.push(&oci_image(&[b"kept own"]), "kept:v1");
    let o = r.regclean(&["gone/app"]);
    assert_eq!(code(&o), Some(0), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("_layers left"),
        "{}",
        text(&o)
    );
    r.stop();
    let dry = r.regclean(&["--gc-only", "--dry-run", "--json"]);
    assert_eq!(
        json(&dry)["gc"]["layers_removed"],
        serde_json::json!(["gone/app"])
    );
    let o = r.regclean(&["--gc-only", "--json"]);
    assert_eq!(code(&o), Some(0), "{}", text(&o));
    let j = json(&o);
    assert_eq!(
        j["gc"]["layers_removed"],
        serde_json::json!(["gone/app"]),
        "{j}"
    );
    assert!(j["gc"]["freed_blobs"].as_u64().unwrap() >= 3, "{j}");
    assert!(!repo_path(&r.root, "gone").exists());
    r.serve(&[]);
    assert_eq!(r.catalog(), ["kept"]);
    r.assert_pull(&["kept:v1"]);
}

// --- item 4: pruning follows the run's scope ---

#[test]
fn pruning_stays_in_the_repositories_the_run_names_and_spares_digest_pinned_elsewhere() {
    if !e2e_available() {
        return;
    }
    let mut r = Registry::start();
    r.push(&oci_image(&[b"app v1"]), "app:v1");
    r.push(&oci_image(&[b"app pr-1"]), "app:pr-1");
    // An untagged manifest in app (its tag moved) and a digest-pinned deployment elsewhere.
    r.push(&oci_image(&[b"app v2 old"]), "app:v2");
    r.push(&oci_image(&[b"app v2 new"]), "app:v2");
    let pinned = oci_image(&[b"pinned deployment"]);
    r.push(&pinned, "deploy:tmp");
    std::fs::remove_dir_all(repo_path(&r.root, "deploy/_manifests/tags/tmp")).unwrap();
    r.stop();

    let o = r.regclean(&["--json", "app:pr-1"]);
    assert_eq!(code(&o), Some(0), "{}", text(&o));
    let j = json(&o);
    let pruned: Vec<&str> = j["gc"]["pruned"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["repo"].as_str().unwrap())
        .collect();
    assert_eq!(pruned, ["app"], "{j}");
    assert_eq!(
        j["gc"]["prune_scope"]["repositories"],
        serde_json::json!(["app"])
    );
    assert!(repo_path(
        &r.root,
        &format!("deploy/_manifests/revisions/sha256/{}", &pinned.digest[7..])
    )
    .exists());
    r.serve(&[]);
    r.assert_pull(&["app:v1", "app:v2", &format!("deploy@{}", pinned.digest)]);

    // Store-wide pruning is what --gc-only asks for.
    r.stop();
    let o = r.regclean(&["--json", "--gc-only"]);
    assert_eq!(code(&o), Some(0), "{}", text(&o));
    assert_eq!(json(&o)["gc"]["prune_scope"], "store");
    assert!(!repo_path(
        &r.root,
        &format!("deploy/_manifests/revisions/sha256/{}", &pinned.digest[7..])
    )
    .exists());
}

// --- item 6: planted links in .regclean ---

#[test]
fn planted_links_in_the_state_directory_are_never_written_through() {
    if !e2e_available() {
        return;
    }
    let (t, root) = fixture("sample");
    let outside = t.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let victim = outside.join("victim.yml");
    let hard = outside.join("hardlinked");
    std::fs::write(&victim, "precious: true\n").unwrap();
    std::fs::write(&hard, "precious hard-linked bytes\n").unwrap();
    std::fs::create_dir_all(root.join(".regclean")).unwrap();
    std::os::unix::fs::symlink(&victim, root.join(".regclean/gc-config.yml")).unwrap();
    std::fs::hard_link(&hard, root.join(".regclean/lock")).unwrap();
    let before = full_snapshot(&outside);

    for args in [
        &["--dry-run", "team1/app0"][..],
        &["team1/app0"][..],
        &["--gc-only"][..],
    ] {
        // No config file: the collector gets a generated config (formerly written to
        // .regclean/gc-config.yml through the planted symlink).
        let o = regclean()
            .arg("--root")
            .arg(&root)
            .args(["--config", "/dev/null"])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(code(&o), Some(0), "{args:?}: {}", text(&o));
        assert_same(&before, &full_snapshot(&outside), "outside files untouched");
    }
}

// --- item 8: a late refusal undoes everything ---

#[test]
fn refused_cross_check_after_removal_puts_everything_back_and_exits_3() {
    let (t, root) = fixture("sample");
    // The registry's dry run lists a blob a remaining tag needs: team0/app1's manifest.
    let fake = refusing_registry(t.path(), &root);
    let before = full_snapshot(&root);
    let o = run_on(
        &root,
        &[
            "--json",
            "--registry-bin",
            fake.to_str().unwrap(),
            "team1/app0",
            "team0/app0:latest",
        ],
    );
    assert_eq!(code(&o), Some(3), "{}", text(&o));
    let j = json(&o);
    assert_eq!(j["gc"]["status"], "refused", "{j}");
    assert_eq!(j["rolled_back"], true, "{j}");
    assert!(!String::from_utf8_lossy(&o.stderr).contains("REAL RUN"));
    assert_same(
        &before,
        &full_snapshot(&root),
        "exit 3 means nothing was changed",
    );
}

// --- items 9 and 10: refused runs and dry runs write nothing ---

#[test]
fn refused_and_early_failing_runs_leave_the_root_byte_identical() {
    let (t, root) = fixture("sample");
    plant_leftover_trash(&root);
    let before = full_snapshot(&root);

    // A missing registry binary: found out before any change (exit 1).
    let o = run_on(
        &root,
        &["team1/app0", "--registry-bin", "/nonexistent/registry"],
    );
    assert_eq!(code(&o), Some(1), "{}", text(&o));
    assert_same(&before, &full_snapshot(&root), "missing binary");

    // A hazard refuses collection (exit 3): an `_`-prefixed file under repositories/.
    let hazard = root.join("docker/registry/v2/repositories/_oops");
    std::fs::write(&hazard, "x").unwrap();
    let before = full_snapshot(&root);
    for args in [&["--gc-only"][..], &["team1/app0"][..]] {
        let o = run_on(&root, args);
        assert_eq!(code(&o), Some(3), "{args:?}: {}", text(&o));
        assert_same(&before, &full_snapshot(&root), "hazard refusal");
    }
    std::fs::remove_file(&hazard).unwrap();

    // The lock held by someone else (exit 3).
    let before = full_snapshot(&root);
    let mut holder = std::process::Command::new("flock")
        .arg(&root)
        .args(["sleep", "30"])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let o = run_on(&root, &["team1/app0"]);
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(code(&o), Some(3), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("holds the lock"),
        "{}",
        text(&o)
    );
    assert_same(&before, &full_snapshot(&root), "lock refusal");
    drop(t);
}

#[test]
fn dry_run_leaves_the_root_byte_identical_and_creates_no_state_directory() {
    let (_t, root) = fixture("sample");
    let before = full_snapshot(&root);
    for args in [
        &["--dry-run", "team1/app0", "team0/app0:latest"][..],
        &["--dry-run", "--gc-only"][..],
        &["--dry-run", "--all", "--keep-last", "1"][..],
    ] {
        let o = run_on(&root, args);
        assert_eq!(code(&o), Some(0), "{args:?}: {}", text(&o));
    }
    assert!(!root.join(".regclean").exists());
    assert_same(&before, &full_snapshot(&root), "dry run");

    // With leftover trash, a dry run leaves it too.
    plant_leftover_trash(&root);
    let before = full_snapshot(&root);
    let o = run_on(&root, &["--dry-run", "team1/app0"]);
    assert_eq!(code(&o), Some(0), "{}", text(&o));
    assert_same(
        &before,
        &full_snapshot(&root),
        "dry run with leftover trash",
    );
}

// --- small ones ---

#[test]
fn generated_gc_config_quotes_a_hostile_root_path() {
    if !e2e_available() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("a: b #c [x");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/sample");
    assert!(std::process::Command::new("cp")
        .arg("-a")
        .arg(&src)
        .arg(&root)
        .status()
        .unwrap()
        .success());
    let o = regclean()
        .arg("--root")
        .arg(&root)
        .args(["--config", "/dev/null", "--json", "team1/app0"])
        .output()
        .unwrap();
    assert_eq!(code(&o), Some(0), "{}", text(&o));
    let j = json(&o);
    assert_eq!(j["gc"]["status"], "done", "{j}");
    assert!(j["gc"]["freed_blobs"].as_u64().unwrap() > 0, "{j}");
    assert_eq!(j["gc"]["prediction_exact"], true, "{j}");
}

#[test]
fn symlinked_storage_root_is_followed_at_the_root_only() {
    let (t, root) = fixture("sample");
    let link = t.path().join("link-root");
    std::os::unix::fs::symlink(&root, &link).unwrap();
    let o = regclean()
        .arg("--root")
        .arg(&link)
        .args(["--config", "/dev/null", "-v", "--no-gc", "team1/app0"])
        .output()
        .unwrap();
    assert_eq!(code(&o), Some(0), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("is a symlink to"),
        "{}",
        text(&o)
    );
    assert!(!repo_path(&root, "team1/app0").exists());
}

#[test]
fn rootdirectory_that_is_not_a_string_is_a_usage_error() {
    let t = tempfile::tempdir().unwrap();
    for (v, what) in [
        ("123", "a number"),
        ("[a, b]", "a list"),
        ("{x: 1}", "a mapping"),
    ] {
        let cfg = t.path().join("config.yml");
        std::fs::write(
            &cfg,
            format!("version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {v}\n"),
        )
        .unwrap();
        let o = regclean()
            .arg("--config")
            .arg(&cfg)
            .arg("app")
            .output()
            .unwrap();
        assert_eq!(code(&o), Some(2), "{v}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("rootdirectory") && err.contains(what),
            "{}",
            text(&o)
        );
        assert_eq!(err.lines().count(), 1, "one line: {err}");
    }
}

#[test]
fn non_utf8_config_and_fifo_config_are_usage_errors_not_hangs() {
    let t = tempfile::tempdir().unwrap();
    let cfg = t.path().join("config.yml");
    std::fs::write(&cfg, b"version: 0.1\n# caf\xe9\n").unwrap();
    let o = regclean()
        .arg("--config")
        .arg(&cfg)
        .arg("app")
        .output()
        .unwrap();
    assert_eq!(code(&o), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not UTF-8"),
        "{}",
        text(&o)
    );

    let fifo = t.path().join("fifo.yml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let mut child = regclean()
        .arg("--config")
        .arg(&fifo)
        .arg("app")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("regclean blocked on a FIFO config");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let o = child.wait_with_output().unwrap();
    assert_eq!(code(&o), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not a regular file"),
        "{}",
        text(&o)
    );
}

#[test]
fn ignore_missing_logs_missing_targets_at_info_not_error() {
    let (_t, root) = fixture("sample");
    let o = run_on(
        &root,
        &[
            "--ignore-missing",
            "--no-gc",
            "nosuch/repo",
            "team1/app0:nosuch",
        ],
    );
    assert_eq!(code(&o), Some(0), "{}", text(&o));
    assert!(
        !String::from_utf8_lossy(&o.stderr).contains("ERROR"),
        "{}",
        text(&o)
    );
    let o = run_on(&root, &["--no-gc", "nosuch/repo"]);
    assert_eq!(code(&o), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("ERROR"),
        "{}",
        text(&o)
    );
}

#[test]
fn planted_symlink_state_directory_is_named_and_never_followed() {
    let (t, root) = fixture("sample");
    let outside = t.path().join("outside");
    std::fs::create_dir_all(outside.join("trash/1-1/0.tag")).unwrap();
    std::os::unix::fs::symlink(&outside, root.join(".regclean")).unwrap();
    let before = full_snapshot(t.path());
    for (args, want) in [
        (&["--dry-run", "team1/app0"][..], 3),
        (&["team1/app0"][..], 3),
        (&["--check"][..], 1),
    ] {
        let o = run_on(&root, args);
        assert_eq!(code(&o), Some(want), "{args:?}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(".regclean is a symlink or not a directory"),
            "{}",
            text(&o)
        );
        assert_same(
            &before,
            &full_snapshot(t.path()),
            "nothing followed or changed",
        );
    }
}
