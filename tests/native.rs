//! The native collector (`--collector native`, issue 11): it sweeps exactly what the
//! registry's own collector sweeps (differential tests on generated stores and on the
//! real-registry scenario), removes the `_layers` links of what it sweeps, purges old uploads,
//! survives SIGKILL at any point, refuses malformed blob directories, and `auto` picks it only
//! when no registry binary is found.

mod common;
use common::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime};

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(o)))
}

fn v2(root: &Path) -> PathBuf {
    root.join("docker/registry/v2")
}

/// A generated store with a registry config beside it; returns (dir, root).
fn generated(seed: &str, repos: &str, tags: &str) -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    genstore(
        &root,
        &[
            "--repos",
            repos,
            "--tags",
            tags,
            "--seed",
            seed,
            "--multiarch-percent",
            "40",
        ],
    );
    write_config(t.path(), &root, "127.0.0.1:1");
    (t, root)
}

/// A byte-identical copy of `root` (with its own config beside it); returns (dir, root).
fn copy_store(root: &Path) -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let copy = t.path().join("root");
    let st = Command::new("cp")
        .arg("-a")
        .arg(root)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(st.success());
    write_config(t.path(), &copy, "127.0.0.1:1");
    (t, copy)
}

/// The blob directories of the store (`xx/<hex>`), as both collectors see them.
fn blob_dirs(root: &Path) -> BTreeSet<String> {
    let sha = v2(root).join("blobs/sha256");
    let mut out = BTreeSet::new();
    let Ok(fans) = std::fs::read_dir(&sha) else {
        return out;
    };
    for fan in fans {
        let fan = fan.unwrap();
        for b in std::fs::read_dir(fan.path()).unwrap() {
            let b = b.unwrap();
            out.insert(format!(
                "{}/{}",
                fan.file_name().to_string_lossy(),
                b.file_name().to_string_lossy()
            ));
        }
    }
    out
}

fn blob_exists(root: &Path, hex: &str) -> bool {
    v2(root)
        .join(format!("blobs/sha256/{}/{hex}/data", &hex[..2]))
        .is_file()
}

/// Every `_layers` link of the store as (repository, hex).
fn layer_links(root: &Path) -> BTreeSet<(String, String)> {
    let repos = v2(root).join("repositories");
    let mut out = BTreeSet::new();
    for e in walkdir::WalkDir::new(&repos) {
        let e = e.unwrap();
        let p = e.path();
        if p.parent().and_then(|x| x.file_name()) != Some("sha256".as_ref()) {
            continue;
        }
        let sha = p.parent().unwrap();
        if sha.parent().and_then(|x| x.file_name()) != Some("_layers".as_ref()) {
            continue;
        }
        let repo = sha
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .strip_prefix(&repos)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        out.insert((repo, e.file_name().to_string_lossy().into_owned()));
    }
    out
}

/// The `repositories/` tree without `_layers` (what pruning and removal leave).
fn repos_without_layers(root: &Path) -> Vec<(String, Vec<u8>)> {
    snapshot(&v2(root).join("repositories"))
        .into_iter()
        .filter(|(p, _)| !p.split('/').any(|c| c == "_layers"))
        .collect()
}

fn n(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Runs the same request on two copies, one per collector, and compares what is left.
fn differential(seed: &str, request: &[&str]) {
    let (_t, root) = generated(seed, "40", "6");
    let (_tn, native) = copy_store(&root);
    let (_tr, registry) = copy_store(&root);
    let before = blob_dirs(&root);

    let o = run_on(
        &native,
        &[&["--json", "--collector", "native"][..], request].concat(),
    );
    assert_eq!(o.status.code(), Some(0), "seed {seed}: {}", text(&o));
    let gn = json(&o)["gc"].clone();
    let o = run_on(
        &registry,
        &[
            &[
                "--json",
                "--collector",
                "registry",
                "--registry-bin",
                REGISTRY_BIN,
            ][..],
            request,
        ]
        .concat(),
    );
    assert_eq!(o.status.code(), Some(0), "seed {seed}: {}", text(&o));
    let gr = json(&o)["gc"].clone();

    assert_eq!(gn["collector"], "native", "{gn}");
    assert_eq!(gr["collector"], "registry", "{gr}");
    assert_eq!(gr["prediction_exact"], true, "seed {seed}: {gr}");
    assert!(
        n(&gn["predicted_blobs"]) > 0,
        "seed {seed}: nothing to sweep"
    );
    assert_eq!(
        gn["freed_blobs"], gn["predicted_blobs"],
        "seed {seed}: {gn}"
    );
    assert_eq!(
        gn["freed_bytes"], gn["predicted_bytes"],
        "seed {seed}: {gn}"
    );
    assert_eq!(gn["prediction_exact"], true, "seed {seed}: {gn}");
    assert_eq!(gn["freed_blobs"], gr["freed_blobs"], "seed {seed}");
    assert_eq!(gn["freed_bytes"], gr["freed_bytes"], "seed {seed}");

    let (left_n, left_r) = (blob_dirs(&native), blob_dirs(&registry));
    if left_n != left_r {
        let only_n: Vec<_> = left_n.difference(&left_r).take(5).collect();
        let only_r: Vec<_> = left_r.difference(&left_n).take(5).collect();
        panic!("seed {seed}: blobs left differ: only native {only_n:?}, only registry {only_r:?}");
    }
    assert_eq!(
        before.len() - left_n.len(),
        n(&gn["freed_blobs"]) as usize,
        "seed {seed}: freed_blobs counts the blob directories gone"
    );
    assert_same(
        &repos_without_layers(&registry),
        &repos_without_layers(&native),
        &format!("seed {seed}: the same removal and pruning"),
    );
    // 2.8's collector leaves every link; the native one removes exactly those of swept blobs.
    let links_r = layer_links(&registry);
    let links_n = layer_links(&native);
    let kept: BTreeSet<_> = links_r
        .iter()
        .filter(|(_, hex)| blob_exists(&registry, hex))
        .cloned()
        .collect();
    assert!(kept.len() < links_r.len(), "seed {seed}: no link to remove");
    if links_n != kept {
        let stale: Vec<_> = links_n.difference(&kept).take(5).collect();
        let lost: Vec<_> = kept.difference(&links_n).take(5).collect();
        panic!("seed {seed}: native links: left to missing blobs {stale:?}, removed of remaining blobs {lost:?}");
    }
    assert_eq!(
        n(&gn["layer_links"]) as usize,
        links_r.len() - links_n.len(),
        "seed {seed}: layer_links reported"
    );
}

#[test]
fn native_sweep_equals_the_registrys_on_generated_stores() {
    if !e2e_available() {
        return;
    }
    differential("21", &["--gc-only"]);
    differential("22", &["team0/**:build-*", "svc8"]);
    differential("23", &["**:v1.*"]);
}

// --- the real-registry scenario (as tests/e2e_gc.rs `world()`) ---

const BASE: &[u8] = b"shared base layer for the native gc tests";

struct World {
    r: Registry,
    app_v1: ImageDir,
    multi: ImageDir,
    referrer: ImageDir,
    team_app: ImageDir,
}

/// Multi-arch OCI index, Docker manifest list, a tagged index child, a referrer, nested
/// repositories, shared layers, an overwritten tag.
fn world() -> (World, String) {
    let r = Registry::start();
    let app_v1 = oci_image(&[BASE, b"app v1 own layer"]);
    r.push(&app_v1, "app:v1");
    r.push(&oci_image(&[BASE, b"app v2 first push"]), "app:v2");
    let app_v2 = oci_image(&[BASE, b"app v2 second push"]);
    r.push(&app_v2, "app:v2");
    let top = std::fs::read(app_v2.dir.join("manifest.json")).unwrap();
    let referrer = push_referrer(&r, "app", &app_v2.digest, top.len());
    let multi = multi_arch(false, BASE, "multi");
    r.push(&multi, "multi:v1");
    r.push(&multi_arch(true, BASE, "list"), "list:v1");
    let team_app = oci_image(&[BASE, b"team app own"]);
    r.push(&team_app, "team/app:v1");
    r.push(&oci_image(&[BASE, b"team app api own"]), "team/app/api:v1");
    // Tag the amd64 child of multi:v1 as multi:amd64.
    let list: serde_json::Value =
        serde_json::from_slice(&std::fs::read(multi.dir.join("manifest.json")).unwrap()).unwrap();
    let child = list["manifests"][0]["digest"].as_str().unwrap().to_string();
    let dir = repo_path(&r.root, "multi/_manifests/tags/amd64");
    let idx = dir.join(format!("index/sha256/{}", &child[7..]));
    std::fs::create_dir_all(dir.join("current")).unwrap();
    std::fs::create_dir_all(&idx).unwrap();
    std::fs::write(dir.join("current/link"), &child).unwrap();
    std::fs::write(idx.join("link"), &child).unwrap();
    (
        World {
            r,
            app_v1,
            multi,
            referrer,
            team_app,
        },
        child,
    )
}

#[test]
fn native_collection_of_the_real_registry_scenario_leaves_everything_pullable() {
    if !e2e_available() {
        return;
    }
    let (mut w, child) = world();
    w.r.stop();
    let request = ["app:v1", "team/app", "multi:v1"];
    // The registry's collector on a copy, for the differential.
    let (_tc, copy) = copy_store(&w.r.root);

    let dry = w.r.regclean(
        &[
            &["--json", "--dry-run", "--collector", "native"][..],
            &request,
        ]
        .concat(),
    );
    assert_eq!(dry.status.code(), Some(0), "{}", text(&dry));
    let predicted = json(&dry)["gc"].clone();
    let o =
        w.r.regclean(&[&["--json", "--collector", "native"][..], &request].concat());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let gc = json(&o)["gc"].clone();
    assert_eq!(gc["collector"], "native", "{gc}");
    assert_eq!(gc["status"], "done", "{gc}");
    assert!(n(&gc["freed_blobs"]) > 0, "{gc}");
    assert_eq!(gc["freed_blobs"], gc["predicted_blobs"], "{gc}");
    assert_eq!(gc["freed_bytes"], gc["predicted_bytes"], "{gc}");
    assert_eq!(
        gc["predicted_blobs"], predicted["predicted_blobs"],
        "dry run predicted it"
    );
    assert_eq!(gc["predicted_bytes"], predicted["predicted_bytes"]);

    let o = run_on(
        &copy,
        &[
            &[
                "--json",
                "--collector",
                "registry",
                "--registry-bin",
                REGISTRY_BIN,
            ][..],
            &request,
        ]
        .concat(),
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let gr = json(&o)["gc"].clone();
    assert_eq!(gr["prediction_exact"], true, "{gr}");
    assert_eq!(
        n(&gr["registry_dry_run_blobs"]),
        n(&gc["freed_blobs"]),
        "the registry's dry-run list has the native sweep's size"
    );
    assert_eq!(
        blob_dirs(&w.r.root),
        blob_dirs(&copy),
        "the native collector left exactly what the registry's left"
    );
    for (repo, hex) in layer_links(&w.r.root) {
        assert!(
            blob_exists(&w.r.root, &hex),
            "{repo} links swept blob {hex}"
        );
    }
    for d in [&w.app_v1.digest, &w.team_app.digest, &w.multi.digest] {
        assert!(!blob_exists(&w.r.root, &d[7..]), "{d} must be swept");
    }
    for d in [sha(BASE), child, w.referrer.digest.clone()] {
        assert!(blob_exists(&w.r.root, &d[7..]), "{d} must stay");
    }

    w.r.serve(&[]);
    w.r.assert_pull(&["app:v2", "list:v1", "multi:amd64", "team/app/api:v1"]);
    let (status, _) =
        w.r.get(&format!("/v2/app/manifests/{}", w.referrer.digest))
            .unwrap();
    assert_eq!(status, 200, "the referrer of a kept manifest stays");
    w.r.assert_gone(&["app:v1", "multi:v1", "team/app:v1"]);
    // Re-pushed after the restart, the removed images pull again.
    w.r.push(&w.app_v1, "app:v1");
    w.r.push(&w.team_app, "team/app:v1");
    w.r.push(&w.multi, "multi:v1");
    w.r.assert_pull(&["app:v1", "team/app:v1", "multi:v1", "multi:amd64"]);
    w.r.stop();
    w.r.serve(&[]);
    w.r.assert_pull(&["app:v1", "team/app:v1", "multi:v1", "app:v2", "list:v1"]);
}

// --- crash safety ---

/// Writes an upload directory as the registry does (`data`, `startedat` in RFC 3339).
fn write_upload(root: &Path, repo: &str, uuid: &str, started: SystemTime, data: &[u8]) {
    let dir = repo_path(root, &format!("{repo}/_uploads/{uuid}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("data"), data).unwrap();
    std::fs::write(
        dir.join("startedat"),
        humantime::format_rfc3339_seconds(started).to_string(),
    )
    .unwrap();
}

fn days_ago(d: u64) -> SystemTime {
    SystemTime::now() - Duration::from_secs(d * 86_400)
}

/// Entries in regclean's trash (every `take` is one entry in one of the run's shard
/// directories `sNN` until the trash is deleted; other files of a run count as one each).
fn trash_entries(root: &Path) -> usize {
    let Ok(runs) = std::fs::read_dir(root.join(".regclean/trash")) else {
        return 0;
    };
    let is_shard = |name: &str| {
        name.len() == 3 && name.starts_with('s') && name[1..].bytes().all(|b| b.is_ascii_digit())
    };
    runs.filter_map(|r| std::fs::read_dir(r.ok()?.path()).ok())
        .flatten()
        .filter_map(Result::ok)
        .map(|e| match e.file_name().to_str() {
            Some(name) if is_shard(name) => std::fs::read_dir(e.path()).map_or(0, |d| d.count()),
            _ => 1,
        })
        .sum()
}

/// Runs regclean on `root` single-threaded and SIGKILLs it once its trash holds `at`
/// entries. Returns whether the kill landed before the run ended by itself.
fn kill_at(root: &Path, args: &[&str], at: usize) -> bool {
    let mut c = regclean()
        .arg("--root")
        .arg(root)
        .arg("--config")
        .arg(root.parent().unwrap().join("config.yml"))
        .args(args)
        .env("RAYON_NUM_THREADS", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if c.try_wait().unwrap().is_some() {
            return false;
        }
        if trash_entries(root) >= at {
            c.kill().unwrap();
            c.wait().unwrap();
            return true;
        }
        assert!(Instant::now() < deadline, "regclean hangs");
        std::thread::sleep(Duration::from_micros(300));
    }
}

/// Kills `args` at several points on copies of `root` and reruns: each must end in the same
/// store as an uninterrupted run.
fn crash_and_rerun(root: &Path, args: &[&str]) {
    let (_tr, reference) = copy_store(root);
    let o = run_on(&reference, &[&["--json"][..], args].concat());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let j = json(&o);
    let gc = &j["gc"];
    assert_eq!(gc["collector"], "native");
    assert!(n(&gc["uploads_purged"]) > 0, "{gc}");
    let pruned: usize = gc["pruned"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["revisions"].as_array().unwrap().len() + p["history"].as_array().unwrap().len())
        .sum();
    let total = j["removals"].as_array().unwrap().len()
        + pruned
        + n(&gc["layer_links"]) as usize
        + n(&gc["uploads_purged"]) as usize
        + n(&gc["freed_blobs"]) as usize;
    let want = snapshot(&reference.join("docker"));
    let mut landed = 0;
    // From the first removal to the last blob, and the trash deletion after it.
    for at in [1, total / 6, total / 3, total / 2, total * 4 / 5, total] {
        let (_tk, killed) = copy_store(root);
        if kill_at(&killed, args, at.max(1)) {
            landed += 1;
        }
        let o = run_on(&killed, args);
        assert_eq!(
            o.status.code(),
            Some(0),
            "rerun after a kill at {at}/{total}: {}",
            text(&o)
        );
        assert_same(
            &want,
            &snapshot(&killed.join("docker")),
            &format!("killed at trash entry {at}/{total}, then rerun"),
        );
        assert_eq!(trash_entries(&killed), 0, "the rerun empties the trash");
    }
    assert!(
        landed >= 4,
        "only {landed} kills landed before the run ended"
    );
}

#[test]
fn a_native_collection_killed_at_any_point_and_rerun_ends_in_the_same_store() {
    let (_t, root) = generated("31", "40", "6");
    for (i, repo) in ["team0/app1", "svc8", "team1/app2"].iter().enumerate() {
        write_upload(&root, repo, &format!("old-{i}"), days_ago(9), &[b'u'; 4096]);
    }
    crash_and_rerun(&root, &["--collector", "native", "--gc-only"]);
    crash_and_rerun(
        &root,
        &[
            "--collector",
            "native",
            "--ignore-missing",
            "team0/app1:v1.*",
            "svc8",
            "team1/app2",
        ],
    );
    // A pattern: after a kill, the rerun's pattern no longer matches where tags went, so the
    // killed run's pruning scope is read back from its trash.
    crash_and_rerun(&root, &["--collector", "native", "**:v1.*"]);
}

// --- bad input ---

/// A blob directory beside the sample's, made malformed by `make`; returns its path relative
/// to `docker/registry/v2`.
fn refuses_bad_blob(what: &str, make: impl Fn(&Path) -> String) {
    let (_t, root) = fixture("sample");
    let rel = make(&v2(&root));
    let before = full_snapshot(&root);
    let o = run_on(&root, &["--gc-only", "--collector", "native"]);
    assert_eq!(o.status.code(), Some(3), "{what}: {}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.lines()
            .any(|l| l.contains("BadBlob") && l.contains(&rel)),
        "{what}: no line names BadBlob at {rel}: {err}"
    );
    assert_same(
        &before,
        &full_snapshot(&root),
        &format!("{what}: refused, nothing changed"),
    );

    let o = run_on(&root, &["--check", "--json"]);
    assert_ne!(o.status.code(), Some(0), "{what}: {}", text(&o));
    let j = json(&o);
    let found = j["findings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["kind"] == "bad_blob" && f["detail"].as_str().unwrap_or("").contains(&rel));
    assert!(
        found,
        "{what}: --check has no bad_blob finding at {rel}: {j}"
    );
    assert_same(
        &before,
        &full_snapshot(&root),
        &format!("{what}: --check writes nothing"),
    );
}

const HEX: &str = "ab00000000000000000000000000000000000000000000000000000000000001";

#[test]
fn malformed_blob_directories_refuse_native_collection_and_are_checked() {
    refuses_bad_blob("no data", |v2| {
        std::fs::create_dir_all(v2.join(format!("blobs/sha256/ab/{HEX}"))).unwrap();
        format!("blobs/sha256/ab/{HEX}")
    });
    refuses_bad_blob("data a directory", |v2| {
        std::fs::create_dir_all(v2.join(format!("blobs/sha256/ab/{HEX}/data"))).unwrap();
        format!("blobs/sha256/ab/{HEX}")
    });
    refuses_bad_blob("data a symlink", |v2| {
        let d = v2.join(format!("blobs/sha256/ab/{HEX}"));
        std::fs::create_dir_all(&d).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", d.join("data")).unwrap();
        format!("blobs/sha256/ab/{HEX}")
    });
    refuses_bad_blob("not a digest", |v2| {
        let d = v2.join("blobs/sha256/ab/ab-not-a-digest");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("data"), "x").unwrap();
        "blobs/sha256/ab/ab-not-a-digest".to_string()
    });
    refuses_bad_blob("wrong fan-out", |v2| {
        let d = v2.join(format!("blobs/sha256/cd/{HEX}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("data"), "x").unwrap();
        format!("blobs/sha256/cd/{HEX}")
    });
    refuses_bad_blob("not a fan-out directory", |v2| {
        let d = v2.join("blobs/sha256/abc");
        std::fs::create_dir_all(&d).unwrap();
        "blobs/sha256/abc".to_string()
    });
}

// --- uploads ---

/// The sample with an 8-day-old and a 2-hour-old upload, and `purging` (YAML lines under
/// `storage.maintenance`, if any) in its registry config.
fn with_uploads(purging: &str) -> (tempfile::TempDir, PathBuf) {
    let (t, root) = fixture("sample");
    write_upload(&root, "svc8", "old", days_ago(8), &[b'o'; 3000]);
    write_upload(
        &root,
        "team0/app1",
        "young",
        SystemTime::now() - Duration::from_secs(2 * 3600),
        &[b'y'; 500],
    );
    if !purging.is_empty() {
        let cfg = t.path().join("config.yml");
        let text = std::fs::read_to_string(&cfg).unwrap().replacen(
            "storage:\n",
            &format!("storage:\n  maintenance:\n    uploadpurging:\n{purging}"),
            1,
        );
        std::fs::write(&cfg, text).unwrap();
    }
    (t, root)
}

fn upload_exists(root: &Path, repo: &str, uuid: &str) -> bool {
    repo_path(root, &format!("{repo}/_uploads/{uuid}")).exists()
}

fn purge(purging: &str) -> (PathBuf, serde_json::Value, tempfile::TempDir) {
    let (t, root) = with_uploads(purging);
    let o = run_on(&root, &["--gc-only", "--collector", "native", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{purging}: {}", text(&o));
    (root, json(&o)["gc"].clone(), t)
}

#[test]
fn uploads_older_than_the_registrys_purging_age_are_purged_with_their_bytes() {
    // Default age 168h: the 8-day-old upload goes, the young one stays.
    let (root, gc, _t) = purge("");
    assert_eq!(gc["uploads_purged"], 1, "{gc}");
    assert_eq!(gc["uploads_bytes"], 3000, "{gc}");
    assert!(!upload_exists(&root, "svc8", "old"));
    assert!(upload_exists(&root, "team0/app1", "young"));

    let (root, gc, _t) = purge("      enabled: false\n");
    assert_eq!(gc["uploads_purged"], 0, "{gc}");
    assert!(upload_exists(&root, "svc8", "old"));
    assert!(upload_exists(&root, "team0/app1", "young"));

    let (root, gc, _t) = purge("      enabled: true\n      age: 1h\n");
    assert_eq!(gc["uploads_purged"], 2, "{gc}");
    assert_eq!(gc["uploads_bytes"], 3500, "{gc}");
    assert!(!upload_exists(&root, "svc8", "old"));
    assert!(!upload_exists(&root, "team0/app1", "young"));

    let (_t, root) = with_uploads("      age: soon\n");
    let before = full_snapshot(&root);
    let o = run_on(&root, &["--gc-only", "--collector", "native"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("uploadpurging.age"),
        "{}",
        text(&o)
    );
    assert_same(
        &before,
        &full_snapshot(&root),
        "an invalid age changes nothing",
    );
}

// --- auto ---

#[test]
fn auto_uses_the_registrys_collector_when_found_and_native_otherwise() {
    if !e2e_available() {
        return;
    }
    // An explicitly named binary that is missing is an error, not a fallback.
    let (_t, root) = fixture("sample");
    let before = full_snapshot(&root);
    let o = run_on(
        &root,
        &["team0/app0:latest", "--registry-bin", "/nonexistent"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("/nonexistent"),
        "{}",
        text(&o)
    );
    assert_same(&before, &full_snapshot(&root), "nothing changed");

    // No registry binary on PATH: native.
    let empty = tempfile::tempdir().unwrap();
    let o = regclean()
        .arg("--root")
        .arg(&root)
        .arg("--config")
        .arg(root.parent().unwrap().join("config.yml"))
        .args(["--json", "team0/app0:latest"])
        .env("PATH", empty.path())
        .env_remove("REGCLEAN_COLLECTOR")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let gc = json(&o)["gc"].clone();
    assert_eq!(gc["collector"], "native", "{gc}");
    assert_eq!(gc["status"], "done", "{gc}");
    assert!(n(&gc["freed_blobs"]) > 0, "{gc}");

    // Found on PATH: the registry's.
    let (_t, root) = fixture("sample");
    let o = regclean()
        .arg("--root")
        .arg(&root)
        .arg("--config")
        .arg(root.parent().unwrap().join("config.yml"))
        .args(["--json", "team0/app0:latest"])
        .env_remove("REGCLEAN_COLLECTOR")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let gc = json(&o)["gc"].clone();
    assert_eq!(gc["collector"], "registry", "{gc}");
    assert!(
        gc["registry_summary"]
            .as_str()
            .unwrap_or("")
            .contains("blobs marked"),
        "{gc}"
    );
}
