//! End-to-end: pruning and garbage collection on a real registry store (Debian
//! docker-registry 2.8.2), restarted afterwards; every remaining tag and every child of every
//! remaining index pulls fully, freed blobs are gone from disk.

mod common;
use common::*;

const BASE: &[u8] = b"shared base layer for the gc tests";

fn json(o: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(o)))
}

struct World {
    r: Registry,
    app_v1: ImageDir,
    app_v2_old: ImageDir,
    multi: ImageDir,
    referrer: ImageDir,
    team_app: ImageDir,
}

fn world() -> World {
    let r = Registry::start();
    let app_v1 = oci_image(&[BASE, b"app v1 own layer"]);
    r.push(&app_v1, "app:v1");
    let app_v2_old = oci_image(&[BASE, b"app v2 first push"]);
    r.push(&app_v2_old, "app:v2");
    let app_v2 = oci_image(&[BASE, b"app v2 second push"]);
    r.push(&app_v2, "app:v2"); // overwritten tag: the first push becomes untagged
    let top = std::fs::read(app_v2.dir.join("manifest.json")).unwrap();
    let referrer = push_referrer(&r, "app", &app_v2.digest, top.len());
    let multi = multi_arch(false, BASE, "multi");
    r.push(&multi, "multi:v1");
    r.push(&multi_arch(true, BASE, "list"), "list:v1");
    let team_app = oci_image(&[BASE, b"team app own"]);
    r.push(&team_app, "team/app:v1");
    r.push(&oci_image(&[BASE, b"team app api own"]), "team/app/api:v1");
    World {
        r,
        app_v1,
        app_v2_old,
        multi,
        referrer,
        team_app,
    }
}

/// Tags an index child: the child manifest of `multi:v1` for amd64 becomes `multi:amd64`.
fn tag_child(w: &World) -> String {
    let list: serde_json::Value =
        serde_json::from_slice(&std::fs::read(w.multi.dir.join("manifest.json")).unwrap()).unwrap();
    let child = list["manifests"][0]["digest"].as_str().unwrap().to_string();
    let dir = repo_path(&w.r.root, "multi/_manifests/tags/amd64");
    std::fs::create_dir_all(dir.join("current")).unwrap();
    std::fs::write(dir.join("current/link"), &child).unwrap();
    std::fs::create_dir_all(dir.join(format!("index/sha256/{}", &child[7..]))).unwrap();
    std::fs::write(
        dir.join(format!("index/sha256/{}/link", &child[7..])),
        &child,
    )
    .unwrap();
    child
}

#[test]
fn full_clean_frees_exactly_the_unneeded_blobs_and_everything_left_pulls() {
    if !e2e_available() {
        return;
    }
    let mut w = world();
    let child = tag_child(&w);
    w.r.stop();
    let o = w.r.regclean(&["--json", "app:v1", "team/app", "multi:v1"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let j = json(&o);
    let gc = &j["gc"];
    assert_eq!(gc["status"], "done", "{gc}");
    assert_eq!(gc["prediction_exact"], true, "{gc}");
    assert_eq!(gc["freed_blobs"], gc["predicted_blobs"], "{gc}");
    assert!(gc["freed_bytes"].as_u64().unwrap() > 0);
    assert!(gc["registry_summary"]
        .as_str()
        .unwrap()
        .contains("blobs marked"));

    // Freed: app:v1's own layer, the overwritten push of app:v2, team/app's own layer, the
    // index of multi:v1 and its arm64 child.
    for (what, d) in [
        ("app:v1 top", &w.app_v1.digest),
        ("app:v2 first push", &w.app_v2_old.digest),
        ("team/app", &w.team_app.digest),
        ("multi index", &w.multi.digest),
    ] {
        assert!(!blob_exists(&w.r.root, d), "{what} {d} must be swept");
    }
    assert!(!blob_exists(&w.r.root, &sha(b"app v1 own layer")));
    assert!(!blob_exists(&w.r.root, &sha(b"multi-arm64-layer")));
    // Kept: the shared base, the tagged child and its layer, the referrer of app:v2.
    for d in [
        sha(BASE),
        child.clone(),
        sha(b"multi-amd64-layer"),
        w.referrer.digest.clone(),
        sha(b"signature payload"),
    ] {
        assert!(blob_exists(&w.r.root, &d), "{d} must stay");
    }

    // A second collection finds nothing and does not run the registry's collector again.
    let o = w.r.regclean(&["--json", "--gc-only"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let gc = json(&o)["gc"].clone();
    assert_eq!(gc["predicted_blobs"], 0, "{gc}");
    assert!(gc.get("registry_summary").is_none(), "{gc}");

    w.r.serve(&[]);
    w.r.assert_pull(&["app:v2", "list:v1", "multi:amd64", "team/app/api:v1"]);
    w.r.assert_gone(&["app:v1", "multi:v1", "team/app:v1"]);
    let (status, _) =
        w.r.get(&format!("/v2/app/manifests/{}", w.referrer.digest))
            .unwrap();
    assert_eq!(
        status, 200,
        "the untagged referrer of a kept manifest stays"
    );
}

#[test]
fn registry_delete_untagged_breaks_multi_arch_images_and_regclean_does_not() {
    if !e2e_available() {
        return;
    }
    let mut w = world();
    w.r.stop();
    // A byte-identical copy of the store for the registry's own -m.
    let copy = tempfile::tempdir().unwrap();
    let croot = copy.path().join("root");
    assert!(std::process::Command::new("cp")
        .arg("-a")
        .arg(&w.r.root)
        .arg(&croot)
        .status()
        .unwrap()
        .success());
    let o = std::process::Command::new("docker-registry")
        .args(["garbage-collect", "--delete-untagged"])
        .arg(&w.r.config)
        .env("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", &croot)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    // regclean on the original store.
    let o = w.r.regclean(&["--gc-only", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(json(&o)["gc"]["prediction_exact"], true);
    w.r.serve(&[]);
    w.r.assert_pull(&[
        "multi:v1",
        "list:v1",
        "app:v1",
        "app:v2",
        "team/app:v1",
        "team/app/api:v1",
    ]);
    assert!(
        !blob_exists(&w.r.root, &w.app_v2_old.digest),
        "the overwritten push was pruned and swept"
    );
    w.r.stop();

    // The registry's -m copy: serve it and watch the multi-arch images fail.
    let mut damaged = Registry::start();
    damaged.stop();
    std::fs::remove_dir_all(&damaged.root).unwrap();
    std::fs::rename(&croot, &damaged.root).unwrap();
    damaged.serve(&[]);
    assert!(
        damaged.pull("multi:v1").is_err(),
        "2.8's -m must break the OCI index (if this passes, the fact changed)"
    );
    assert!(
        damaged.pull("list:v1").is_err(),
        "2.8's -m must break the Docker manifest list"
    );
    damaged.assert_pull(&["app:v1"]);
}

#[test]
fn next_to_a_writable_registry_gc_is_deferred_refused_when_explicit_and_runs_read_only() {
    if !e2e_available() {
        return;
    }
    let mut w = world();
    let o = w.r.regclean(&["--json", "app:v1"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let j = json(&o);
    assert_eq!(j["gc"]["status"], "deferred", "{}", j["gc"]);
    assert!(
        j["gc"]["reason"].as_str().unwrap().contains("restart"),
        "{}",
        j["gc"]
    );
    assert_eq!(j["gc"]["serving"][0]["pid"], w.r.pid().unwrap());
    w.r.assert_gone(&["app:v1"]);
    assert!(
        blob_exists(&w.r.root, &w.app_v1.digest),
        "nothing collected while serving"
    );
    let human = w.r.regclean(&["app:v2", "--dry-run"]);
    assert!(
        String::from_utf8_lossy(&human.stdout).contains("GC: deferred"),
        "{}",
        text(&human)
    );

    let before = snapshot(&w.r.root);
    let o = w.r.regclean(&["--gc-only"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("writable registry serves this store"),
        "{}",
        text(&o)
    );
    assert_same(&before, &snapshot(&w.r.root), "refusal changes nothing");

    // Read-only mode through the environment form that works on 2.8.
    w.r.serve(&[(
        "REGISTRY_STORAGE_MAINTENANCE_READONLY",
        r#"{"enabled":true}"#,
    )]);
    let o = w.r.regclean(&["--gc-only"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("Restart the registry"),
        "{}",
        text(&o)
    );
    assert!(!blob_exists(&w.r.root, &w.app_v1.digest));
    w.r.serve(&[]);
    w.r.assert_pull(&["app:v2", "multi:v1", "list:v1"]);
}

#[test]
fn override_collects_next_to_a_writable_registry() {
    if !e2e_available() {
        return;
    }
    let w = world();
    let o = w.r.regclean(&["--gc-while-serving", "app:v1"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(!blob_exists(&w.r.root, &w.app_v1.digest));
    assert!(String::from_utf8_lossy(&o.stdout).contains("Restart the registry"));
}

fn hazard_refused(w: &World, kind: &str) {
    let before = snapshot(&w.r.root);
    let o = w.r.regclean(&["--gc-only", "--json"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(kind), "{kind} not named: {err}");
    assert_same(&before, &snapshot(&w.r.root), "a refusal changes nothing");
}

#[test]
fn each_hazard_stops_the_collection() {
    if !e2e_available() {
        return;
    }
    let mut w = world();
    w.r.stop();
    // A repository that lost _layers: invisible to 2.8's GC.
    let layers = repo_path(&w.r.root, "team/app/_layers");
    let aside = w.r.tmp.path().join("layers-aside");
    std::fs::rename(&layers, &aside).unwrap();
    hazard_refused(&w, "RepoWithoutLayers");
    std::fs::rename(&aside, &layers).unwrap();
    // An '_' file under repositories/.
    let underscore = repo_path(&w.r.root, "_junk");
    std::fs::write(&underscore, "x").unwrap();
    hazard_refused(&w, "UnderscoreFile");
    std::fs::remove_file(&underscore).unwrap();
    // A '.' directory.
    let dot = repo_path(&w.r.root, ".trash/x/_layers");
    std::fs::create_dir_all(&dot).unwrap();
    hazard_refused(&w, "DotEntry");
    std::fs::remove_dir_all(repo_path(&w.r.root, ".trash")).unwrap();
    // A malformed revision link.
    let rev = repo_path(
        &w.r.root,
        &format!(
            "app/_manifests/revisions/sha256/{}/link",
            &w.app_v1.digest[7..]
        ),
    );
    let good = std::fs::read(&rev).unwrap();
    std::fs::write(&rev, "sha256:bad\n").unwrap();
    hazard_refused(&w, "MalformedLink");
    // Right size, wrong digest.
    std::fs::write(&rev, format!("sha256:{}", "0".repeat(64))).unwrap();
    hazard_refused(&w, "LinkMismatch");
    std::fs::write(&rev, &good).unwrap();
    // A tagged manifest whose blob is missing.
    let hex = &w.team_app.digest[7..];
    let blob = w.r.root.join(format!(
        "docker/registry/v2/blobs/sha256/{}/{hex}",
        &hex[..2]
    ));
    let blob_aside = w.r.tmp.path().join("blob-aside");
    std::fs::rename(&blob, &blob_aside).unwrap();
    hazard_refused(&w, "MissingManifestBlob");
    std::fs::rename(&blob_aside, &blob).unwrap();
    // Clean again: collection proceeds.
    let o = w.r.regclean(&["--gc-only"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    w.r.serve(&[]);
    w.r.assert_pull(&["app:v1", "app:v2", "multi:v1", "list:v1", "team/app:v1"]);
}

#[test]
fn an_index_child_without_a_revision_link_is_a_conflict_not_a_loss() {
    if !e2e_available() {
        return;
    }
    let mut w = world();
    w.r.stop();
    // The 2.8 -m damage in miniature: a tagged index's child lost its revision link, so the
    // registry would sweep the child's layers.
    let list: serde_json::Value =
        serde_json::from_slice(&std::fs::read(w.multi.dir.join("manifest.json")).unwrap()).unwrap();
    let child = list["manifests"][1]["digest"].as_str().unwrap().to_string();
    std::fs::remove_dir_all(repo_path(
        &w.r.root,
        &format!("multi/_manifests/revisions/sha256/{}", &child[7..]),
    ))
    .unwrap();
    let o = w.r.regclean(&["--gc-only"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("remaining tags need"),
        "{}",
        text(&o)
    );
    assert!(blob_exists(&w.r.root, &sha(b"multi-arm64-layer")));
}

#[test]
fn a_failing_a_silent_and_a_missing_gc_binary_are_errors() {
    let (t, root) = fixture("sample");
    let failing = fake_registry(
        t.path(),
        "echo 'failed to garbage collect: boom' >&2; exit 1",
    );
    let o = run_on(
        &root,
        &["--gc-only", "--registry-bin", failing.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("failed to garbage collect: boom"),
        "{}",
        text(&o)
    );

    // 2.8 prints an error for an unknown flag and exits 0 without collecting.
    let silent = fake_registry(t.path(), "echo 'Error: unknown flag: --whatever'; exit 0");
    let o = run_on(
        &root,
        &["--gc-only", "--registry-bin", silent.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("no summary line"),
        "{}",
        text(&o)
    );

    let before = snapshot(&root);
    let o = run_on(
        &root,
        &[
            "team0/app0:latest",
            "--registry-bin",
            "/nonexistent/registry",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("/nonexistent/registry"),
        "{}",
        text(&o)
    );
    assert_same(
        &before,
        &snapshot(&root),
        "a missing binary is found out before any change",
    );
}

#[test]
fn predicted_sweep_equals_the_registrys_dry_run_on_generated_stores() {
    if !e2e_available() {
        return;
    }
    for (seed, targets) in [
        ("11", vec!["team0/**:build-*", "svc8"]),
        ("12", vec!["team1/app2", "org0/**"]),
        ("13", vec!["**:v1.*"]),
    ] {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        genstore(
            &root,
            &[
                "--repos",
                "40",
                "--tags",
                "6",
                "--seed",
                seed,
                "--multiarch-percent",
                "40",
            ],
        );
        let dry = run_on(&root, &[&["--dry-run", "--json"][..], &targets].concat());
        let predicted = json(&dry)["gc"]["predicted_blobs"].as_u64().unwrap();
        let o = run_on(
            &root,
            &[
                &["--json", "--registry-bin", "/usr/bin/docker-registry"][..],
                &targets,
            ]
            .concat(),
        );
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let gc = json(&o)["gc"].clone();
        assert_eq!(gc["prediction_exact"], true, "seed {seed}: {gc}");
        assert_eq!(
            gc["registry_dry_run_blobs"].as_u64().unwrap(),
            predicted,
            "seed {seed}: dry run predicted what the registry swept"
        );
        assert_eq!(
            gc["freed_blobs"].as_u64().unwrap(),
            predicted,
            "seed {seed}"
        );
    }
}
