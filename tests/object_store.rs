//! End-to-end on object storage (issue 14): Debian's docker-registry 2.8.2 on its `s3` driver,
//! against SeaweedFS's S3 gateway (a real distributed store: master, volume server, filer) on
//! loopback. The real-registry scenario is pushed with skopeo, cleaned by regclean through the
//! bucket, and every remaining tag is pulled back; removed blobs are checked gone from the
//! bucket through SeaweedFS's filer (not through regclean's own client).

mod common;
use common::*;

const BASE: &[u8] = b"shared base layer for the s3 tests";

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

/// The filesystem scenario of `e2e_gc`, on the bucket: shared layers, an overwritten tag, a
/// referrer (OCI `subject`), an OCI index and a Docker manifest list, nested repositories.
fn world(weed: &Seaweed) -> World {
    let r = Registry::start_s3(weed);
    let app_v1 = oci_image(&[BASE, b"app v1 own layer"]);
    r.push(&app_v1, "app:v1");
    let app_v2_old = oci_image(&[BASE, b"app v2 first push"]);
    r.push(&app_v2_old, "app:v2");
    let app_v2 = oci_image(&[BASE, b"app v2 second push"]);
    r.push(&app_v2, "app:v2"); // overwritten: the first push becomes untagged
                               // A referrer of app:v2, left untagged (its temporary tag removed by regclean alone).
    let referrer = {
        let top = std::fs::read(app_v2.dir.join("manifest.json")).unwrap();
        let mut b = Builder::new();
        let m = b.image("amd64", &[b"signature payload"], false);
        let m = m.replacen(
            r#""layers""#,
            &format!(
                r#""subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":{}}},"layers""#,
                app_v2.digest,
                top.len()
            ),
            1,
        );
        let img = b.finish(&m);
        r.push(&img, "app:tmp-referrer");
        let o = r.regclean(&["--no-gc", "app:tmp-referrer"]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        img
    };
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

#[test]
fn s3_full_clean_frees_exactly_the_unneeded_blobs_and_everything_left_pulls() {
    if !e2e_available() {
        return;
    }
    let Some(weed) = Seaweed::start() else { return };
    let mut w = world(&weed);
    let bucket = w.r.s3.clone().unwrap();
    assert!(
        bucket.has_blob(&w.app_v1.digest),
        "the push reached the bucket"
    );
    w.r.stop();
    // The registry's own pushes left empty upload directories, on which its upload purger
    // panics (distribution/distribution#4590).
    let hazards = bucket.purger_hazards();
    assert!(
        hazards.iter().any(|d| d.contains("/_uploads/")),
        "{hazards:?}"
    );
    // `--check` names each of them (and changes nothing).
    let before = bucket.keys();
    let o = w.r.regclean(&["--check", "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let empty: Vec<String> = json(&o)["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "empty_directory")
        .map(|f| f["detail"].as_str().unwrap().to_string())
        .collect();
    // One finding per empty tree, named by its top: every hazard is below one of them.
    for h in &hazards {
        let dir = format!("repositories/{h}/");
        assert!(
            empty
                .iter()
                .any(|d| dir.starts_with(d.split(':').next().unwrap())),
            "{h} not reported: {empty:?}"
        );
    }
    assert!(empty.len() <= hazards.len(), "{empty:?}");
    assert_eq!(bucket.keys(), before);
    let o = w.r.regclean(&[
        "--json",
        "--registry-stopped",
        "app:v1",
        "team/app",
        "multi:v1",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let j = json(&o);
    assert_eq!(
        bucket.purger_hazards(),
        Vec::<String>::new(),
        "no empty directory is left where registry 2.x's upload purger would panic"
    );
    assert!(j["deleted"]["dirs"].as_u64().unwrap() > 0, "{j}");
    let gc = &j["gc"];
    assert_eq!(gc["status"], "done", "{gc}");
    assert_eq!(gc["collector"], "native", "{gc}");
    assert_eq!(gc["prediction_exact"], true, "{gc}");
    assert_eq!(gc["freed_blobs"], gc["predicted_blobs"], "{gc}");
    assert!(gc["freed_bytes"].as_u64().unwrap() > 0, "{gc}");
    assert!(j["object_requests"].as_u64().unwrap() > 0, "{j}");
    assert!(j["root"].as_str().unwrap().starts_with("s3://"), "{j}");

    for (what, d) in [
        ("app:v1 top", &w.app_v1.digest),
        ("app:v2 first push", &w.app_v2_old.digest),
        ("team/app", &w.team_app.digest),
        ("multi index", &w.multi.digest),
    ] {
        assert!(
            !bucket.has_blob(d),
            "{what} {d} must be gone from the bucket"
        );
    }
    assert!(!bucket.has_blob(&sha(b"app v1 own layer")));
    assert!(!bucket.has_blob(&sha(b"multi-arm64-layer")));
    assert!(!bucket.has_blob(&sha(b"multi-amd64-layer")));
    for d in [
        sha(BASE),
        w.referrer.digest.clone(),
        sha(b"signature payload"),
        sha(b"team app api own"),
    ] {
        assert!(bucket.has_blob(&d), "{d} must stay");
    }
    // team/app went, its nested repository team/app/api stayed, with its layer links.
    assert!(!bucket.has("repositories/team/app/_manifests/tags/v1/current/link"));
    assert!(bucket.has("repositories/team/app/api/_manifests/tags/v1/current/link"));
    assert!(!bucket.has(&format!(
        "repositories/team/app/_layers/sha256/{}/link",
        &sha(BASE)[7..]
    )));

    // A second collection finds nothing.
    let o = w.r.regclean(&["--json", "--gc-only", "--registry-stopped"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let gc = json(&o)["gc"].clone();
    assert_eq!(gc["predicted_blobs"], 0, "{gc}");
    assert_eq!(
        json(&o)["gc"]["pruned"].as_array().map(Vec::len),
        Some(0),
        "{gc}"
    );

    w.r.serve(&[]);
    // A removed repository leaves the catalog (no emptied _layers or _manifests directory
    // left). `multi` lost its only tag and every key it had was collected: whether the
    // registry still lists it depends on whether the store keeps its emptied directories
    // (AWS S3 has none; SeaweedFS cleans some up by itself), so it is not asserted.
    let catalog: Vec<String> = w.r.catalog().into_iter().filter(|n| n != "multi").collect();
    assert_eq!(catalog, ["app", "list", "team/app/api"]);
    assert_eq!(listed_tags(&w.r, "multi"), Vec::<String>::new());
    w.r.assert_pull(&["app:v2", "list:v1", "team/app/api:v1"]);
    w.r.assert_gone(&["app:v1", "multi:v1", "team/app:v1"]);
    let (status, _) =
        w.r.get(&format!("/v2/app/manifests/{}", w.referrer.digest))
            .unwrap();
    assert_eq!(
        status, 200,
        "the untagged referrer of a kept manifest stays"
    );
    let o = w.r.regclean(&["--check"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

/// The tags the registry lists for `repo` (an empty "directory" left on the store must not
/// show up as a tag).
fn listed_tags(r: &Registry, repo: &str) -> Vec<String> {
    let (status, body) = r.get(&format!("/v2/{repo}/tags/list")).unwrap();
    if status != 200 {
        return Vec::new();
    }
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut t: Vec<String> = v["tags"]
        .as_array()
        .map(|a| a.iter().map(|x| x.as_str().unwrap().to_string()).collect())
        .unwrap_or_default();
    t.sort();
    t
}

#[test]
fn s3_pruning_without_registry_stopped_is_refused_and_removal_alone_keeps_layers_for_a_repush() {
    if !e2e_available() {
        return;
    }
    let Some(weed) = Seaweed::start() else { return };
    let w = world(&weed);
    let bucket = w.r.s3.clone().unwrap();
    let before = bucket.keys();

    // The registry serves: no guard can see it, so collection needs the operator's word.
    let o = w.r.regclean(&["app:v1"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("--registry-stopped"), "{}", text(&o));
    // A dry run and a refusal write nothing at all (not even the lock object).
    let o =
        w.r.regclean(&["-n", "--registry-stopped", "app:v1", "team/app"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(
        bucket.keys(),
        before,
        "nothing written by a refused run or a dry run"
    );

    // Removal alone while the registry serves: the tag and the repository go, the
    // repository's _layers stay (its blob descriptors are cached), nested repositories stay.
    let o = w.r.regclean(&["--no-gc", "app:v1", "team/app"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    w.r.assert_gone(&["app:v1", "team/app:v1"]);
    assert_eq!(listed_tags(&w.r, "app"), ["v2"]);
    assert!(bucket.has(&format!(
        "repositories/team/app/_layers/sha256/{}/link",
        &sha(BASE)[7..]
    )));
    assert!(
        bucket.has_blob(&w.app_v1.digest),
        "no blob is collected by a removal"
    );
    assert!(!bucket.has(".regclean/lock"), "the lock object is released");
    w.r.assert_pull(&["app:v2", "team/app/api:v1", "multi:v1", "list:v1"]);
    // Re-push of the removed repository with the registry's cache warm: pulls.
    w.r.push(&w.team_app, "team/app:v1");
    w.r.assert_pull(&["team/app:v1"]);
}

#[test]
fn s3_a_second_run_is_refused_by_the_lock_object_until_it_goes() {
    if !e2e_available() {
        return;
    }
    let Some(weed) = Seaweed::start() else { return };
    let w = world(&weed);
    let bucket = w.r.s3.clone().unwrap();
    bucket.put_root(
        ".regclean/lock",
        br#"{"token":"other","host":"maintenance-host","pid":4242}"#,
    );
    let before = bucket.keys();
    let o = w.r.regclean(&["--no-gc", "app:v1"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("maintenance-host") && err.contains("--wait"),
        "{err}"
    );
    assert_eq!(bucket.keys(), before, "the refused run changed nothing");
    // --wait waits for the holder.
    let waiter = std::thread::spawn({
        let cfg = w.r.config.clone();
        move || {
            regclean()
                .env_remove("AWS_CA_BUNDLE")
                .arg("--config")
                .arg(cfg)
                .args(["--wait", "--no-gc", "app:v1"])
                .output()
                .unwrap()
        }
    });
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(
        !waiter.is_finished(),
        "--wait waits while the lock object exists"
    );
    bucket.delete_root(".regclean/lock");
    let o = waiter.join().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    w.r.assert_gone(&["app:v1"]);
    assert!(!bucket.has(".regclean/lock"));
}

/// Blobs the registry's own `garbage-collect --dry-run` would delete on the bucket.
fn registry_dry_run(r: &Registry) -> Vec<String> {
    let o = std::process::Command::new("docker-registry")
        .env_remove("AWS_CA_BUNDLE")
        .args(["garbage-collect", "--dry-run"])
        .arg(&r.config)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let mut v: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.split("blob eligible for deletion: ").nth(1))
        .map(|d| d.trim().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn s3_predicted_sweep_equals_the_registrys_own_dry_run_on_the_bucket() {
    if !e2e_available() {
        return;
    }
    let Some(weed) = Seaweed::start() else { return };
    let mut w = world(&weed);
    // Repositories removed while the registry serves (their _layers stay): their blobs are
    // unreferenced for the registry's collector too (it marks every revision, tagged or not).
    let o = w.r.regclean(&["--no-gc", "app:v1", "multi", "list"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    w.r.stop();
    let theirs = registry_dry_run(&w.r);
    assert!(!theirs.is_empty(), "the removals left blobs to collect");
    // Without pruning, regclean predicts exactly the registry's own sweep...
    let o = w.r.regclean(&[
        "-n",
        "--json",
        "--gc-only",
        "--keep-untagged",
        "--registry-stopped",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let j = json(&o);
    assert_eq!(
        j["gc"]["predicted_blobs"].as_u64(),
        Some(theirs.len() as u64),
        "{j}\nregistry: {theirs:?}"
    );
    // ...and sweeps exactly that: afterwards the registry finds nothing more to delete.
    let bucket = w.r.s3.clone().unwrap();
    let o = w.r.regclean(&[
        "--json",
        "--gc-only",
        "--keep-untagged",
        "--registry-stopped",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    for d in &theirs {
        assert!(!bucket.has_blob(d), "{d} swept");
    }
    assert_eq!(registry_dry_run(&w.r), Vec::<String>::new());
    w.r.serve(&[]);
    w.r.assert_pull(&["app:v2", "team/app:v1", "team/app/api:v1"]);
}

/// A generated store (shared layers, multi-arch indexes, nested repositories, history)
/// uploaded to a new bucket; returns the registry handle (not serving) and the bucket.
fn generated(weed: &Seaweed) -> Registry {
    let mut r = Registry::start_s3(weed);
    r.stop();
    let t = tempfile::tempdir().unwrap();
    genstore(&t.path().join("root"), &["--size", "small", "--seed", "7"]);
    weed.upload(r.s3.as_ref().unwrap(), &t.path().join("root"));
    r
}

#[test]
fn s3_removing_every_repository_leaves_no_empty_directory_for_the_upload_purger() {
    if !e2e_available() {
        return;
    }
    let Some(weed) = Seaweed::start() else { return };
    let mut r = Registry::start_s3(&weed);
    r.push(&oci_image(&[BASE, b"only"]), "only:v1");
    r.push(&oci_image(&[BASE, b"team app"]), "team/app:v1");
    r.stop();
    let bucket = r.s3.clone().unwrap();
    let o = r.regclean(&["--registry-stopped", "only", "team/app"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // Not even `repositories/` is left empty: the purger's first listing would panic on it.
    assert_eq!(bucket.purger_hazards(), Vec::<String>::new());
    assert_eq!(
        bucket
            .keys()
            .iter()
            .filter(|(k, _)| k.starts_with("docker/"))
            .count(),
        0
    );
    r.serve(&[]);
    assert_eq!(r.catalog(), Vec::<String>::new());
    r.push(&oci_image(&[BASE, b"again"]), "only:v2");
    r.pull("only:v2").unwrap();
}

#[test]
fn s3_a_run_killed_mid_delete_is_finished_by_the_next() {
    if !e2e_available() {
        return;
    }
    let Some(weed) = Seaweed::start() else { return };
    let args = [
        "--registry-stopped",
        "--ignore-missing",
        "team0/*:build-*",
        "team1/app0",
        "team2/*",
    ];
    // The reference: one uninterrupted run, on a store with empty directories where the
    // registry's upload purger panics (what a registry leaves after pushes, and a removal
    // killed between its deletes and its directory deletes): they go.
    let reference = generated(&weed);
    let b = reference.s3.as_ref().unwrap();
    for planted in [
        "docker/registry/v2/repositories/team1/app1/_uploads/u1/hashstates/sha256/0",
        "docker/registry/v2/repositories/ghost/app/_uploads/u2/startedat",
        // Not walked by the purger (`_manifests`), but listed by the catalog.
        "docker/registry/v2/repositories/team3/gone/_manifests/revisions/x",
    ] {
        b.put_root(planted, b"x");
        b.delete_root(planted);
    }
    assert_eq!(
        b.purger_hazards(),
        [
            "ghost/app/_uploads/u2",
            "team1/app1/_uploads/u1/hashstates/sha256",
        ]
    );
    let o = reference.regclean(&args);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let want = reference.s3.as_ref().unwrap().keys();
    assert!(!want.is_empty());
    // `team1/app0` went: its directory with it (the registry's upload purger panics on an
    // empty one).
    assert_eq!(
        reference.s3.as_ref().unwrap().purger_hazards(),
        Vec::<String>::new()
    );
    // Killed as each delete phase starts (the earlier phases done, this one maybe begun), then
    // run again: the same bucket.
    for phase in [
        "tag history entries",
        "tag links",
        "manifest revisions",
        "layer links",
        "unreferenced blob",
    ] {
        let r = generated(&weed);
        let bucket = r.s3.clone().unwrap();
        let full = bucket.keys();
        let mut c = regclean()
            .arg("--config")
            .arg(&r.config)
            .args(args)
            .env("RUST_LOG", "regclean=info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut seen = String::new();
        {
            use std::io::BufRead;
            let err = std::io::BufReader::new(c.stderr.take().unwrap());
            for line in err.lines() {
                let line = line.unwrap();
                seen.push_str(&line);
                seen.push('\n');
                if line.contains(phase) {
                    c.kill().unwrap();
                    break;
                }
            }
        }
        let status = c.wait().unwrap();
        assert!(
            seen.contains(phase),
            "the run never reached '{phase}' ({status}): {seen}"
        );
        let at = phase;
        let mid = bucket.keys();
        eprintln!(
            "killed at '{at}': {} keys before, {} at the kill, {} after a whole run",
            full.len(),
            mid.len(),
            want.len()
        );
        // The lock object of the killed run stays until it is stale; take it as an operator
        // would after checking no run is alive.
        bucket.delete_root(".regclean/lock");
        let o = r.regclean(&args);
        assert_eq!(
            o.status.code(),
            Some(0),
            "after a kill at '{at}': {}",
            text(&o)
        );
        let got: Vec<(String, u64)> = bucket
            .keys()
            .into_iter()
            .filter(|(k, _)| !k.starts_with(".regclean/"))
            .collect();
        assert_eq!(
            got.len(),
            want.len(),
            "killed at '{at}' ({} keys before, {} at the kill)",
            full.len(),
            mid.len()
        );
        assert_eq!(got, want, "killed at '{at}'");
        assert_eq!(
            bucket.purger_hazards(),
            Vec::<String>::new(),
            "killed at '{at}': empty directories left where the registry's upload purger panics"
        );
    }
    // What remains is whole: every remaining tag pulls.
    let mut r = reference;
    r.serve(&[]);
    let catalog = r.catalog();
    assert!(
        !catalog
            .iter()
            .any(|n| n.starts_with("team3") || n.starts_with("ghost")),
        "{catalog:?}"
    );
    let o = r.regclean(&["--check"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

#[test]
fn s3_supervisor_collects_in_its_read_only_cycle_with_zero_failed_pulls() {
    if !e2e_available() {
        return;
    }
    let Some(weed) = Seaweed::start() else { return };
    let mut r = Registry::start_s3(&weed);
    r.stop();
    let bucket = r.s3.clone().unwrap();
    // The supervisor's state (control socket, pull activity) in a local directory: a bucket
    // has none here.
    let state = r.tmp.path().join("state");
    let _sup = supervise_with(
        &r,
        &[],
        &[
            ("REGCLEAN_STATE_DIR", state.to_str().unwrap()),
            ("REGCLEAN_SOLE_REGISTRY", "true"),
        ],
    );
    let v1 = oci_image(&[BASE, b"supervised s3 v1 own"]);
    let v2 = oci_image(&[BASE, b"supervised s3 v2 own"]);
    let v3 = oci_image(&[BASE, b"supervised s3 v3 own, never pulled"]);
    r.push(&v1, "app:v1");
    r.push(&v2, "app:v2");
    r.push(&v3, "app:v3");
    let v1_own = sha(b"supervised s3 v1 own");
    assert!(bucket.has_blob(&v1_own));

    // A client pulling app:v2 without retries through the whole cycle.
    let puller = Puller::start(r.port, "app:v2");
    puller.wait_for_ok(3);
    let run_in = |dir: &std::path::Path, args: &[&str]| {
        regclean()
            .env("REGCLEAN_STATE_DIR", dir)
            .arg("--config")
            .arg(&r.config)
            .args(args)
            .output()
            .unwrap()
    };
    let run = |args: &[&str]| run_in(&state, args);
    // Where no supervisor of this bucket listens, and with --gc-while-serving next to it,
    // collection is refused as without a supervisor: exit 3, nothing changed.
    let elsewhere = r.tmp.path().join("elsewhere");
    for (dir, args) in [
        (elsewhere.as_path(), &["app:v3"][..]),
        (state.as_path(), &["--gc-while-serving", "app:v3"][..]),
    ] {
        let before = bucket.keys();
        let o = run_in(dir, args);
        assert_eq!(o.status.code(), Some(3), "{args:?}: {}", text(&o));
        assert_eq!(bucket.keys(), before, "{args:?} changed the bucket");
    }
    // Without --registry-stopped: removal now, collection in the supervisor's read-only
    // cycle (no refusal: the supervisor is the guard).
    let o = run(&["--json", "app:v1"]);
    assert_eq!(o.status.code(), Some(0), "{}\n{}", text(&o), log_of(&r));
    let j = json(&o);
    assert_eq!(j["gc"]["status"], "deferred", "{}", j["gc"]);
    let c = &j["supervisor"];
    assert_eq!(c["exit_code"], 0, "{c}");
    assert!(
        c["report"]["gc"]["freed_bytes"].as_u64().unwrap() > 0,
        "{c}"
    );
    assert!(c["readonly_ms"].as_u64().is_some(), "{c}");
    assert!(!bucket.has_blob(&v1_own), "v1's own layer is freed");
    assert!(bucket.has_blob(&sha(BASE)), "the shared base stays");
    assert_eq!(bucket.purger_hazards(), Vec::<String>::new());
    puller.wait_for_total(20);
    let (ok, failed, errors) = puller.finish();
    assert_eq!(failed, 0, "failed pulls (of {ok}): {errors:?}");

    // Pull activity recorded by the supervisor serves policies on the bucket: v2 was pulled,
    // v3 never.
    let policy = r.tmp.path().join("policy.yml");
    std::fs::write(
        &policy,
        "version: 1\npolicies:\n  - repositories: [app]\n    keep: [{pulled_within: 1d}]\n",
    )
    .unwrap();
    let o = run(&["--dry-run", "--policy", policy.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("keep tag v2"), "{out}");
    assert!(out.contains("would remove tag v3"), "{out}");

    // An explicit collection next to the supervisor is its cycle's too.
    let o = run(&["--json", "--gc-only"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(json(&o)["supervisor"]["exit_code"], 0, "{}", text(&o));

    // A re-push of the removed image pulls with no manual restart (a fresh registry child).
    r.push(&v1, "app:v1");
    r.assert_pull(&["app:v1", "app:v2", "app:v3"]);
    assert!(
        bucket.has_blob(&v1_own),
        "the re-push uploaded the layer again"
    );
}

#[test]
fn s3_the_entrypoint_hook_collects_at_start_only_as_the_sole_registry() {
    if !e2e_available() {
        return;
    }
    let Some(weed) = Seaweed::start() else { return };
    let mut r = Registry::start_s3(&weed);
    r.push(&oci_image(&[BASE, b"hook v1 own"]), "app:v1");
    r.push(&oci_image(&[BASE, b"hook v2 own"]), "app:v2");
    r.stop();
    let bucket = r.s3.clone().unwrap();
    let hook = concat!(env!("CARGO_MANIFEST_DIR"), "/docker/regclean-hook");
    // The registry's config is the entrypoint's argument, as in the image (`true` stands in
    // for the registry, which the hook would exec).
    let start = |sole: &str| {
        std::process::Command::new("sh")
            .arg(hook)
            .arg("true")
            .arg(&r.config)
            .env("REGCLEAN_BIN", env!("CARGO_BIN_EXE_regclean"))
            .env("REGCLEAN_TARGETS", "app:v1")
            .env("REGCLEAN_SUPERVISE", "false")
            .env("REGCLEAN_SOLE_REGISTRY", sole)
            .env("REGCLEAN_STATE_DIR", r.tmp.path().join("state"))
            .output()
            .unwrap()
    };
    // Not said to be the only registry: the clean is refused (other hosts may serve the
    // bucket), loudly, and the registry starts anyway; nothing changed.
    let before = bucket.keys();
    let o = start("false");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("CLEAN FAILED with exit code 3"),
        "{}",
        text(&o)
    );
    assert_eq!(bucket.keys(), before);
    // Said so: removal and collection before the registry serves.
    let o = start("true");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("clean done"), "{}", text(&o));
    assert!(!bucket.has_blob(&sha(b"hook v1 own")));
    assert!(bucket.has_blob(&sha(b"hook v2 own")));
    r.serve(&[]);
    r.assert_pull(&["app:v2"]);
    r.assert_gone(&["app:v1"]);
}

#[test]
fn s3_two_supervisors_both_told_they_are_alone_collect_nothing() {
    if !e2e_available() {
        return;
    }
    let Some(weed) = Seaweed::start() else { return };
    let mut r = Registry::start_s3(&weed);
    r.stop();
    let bucket = r.s3.clone().unwrap();
    // Two replicas of one deployment on one bucket, each told it is the only registry (each
    // on its own host: its own state directory).
    let port2 = free_port();
    let mut r2 = Registry::external(port2, &r.tmp.path().join("unused"));
    r2.config = r.tmp.path().join("replica.yml");
    std::fs::write(
        &r2.config,
        std::fs::read_to_string(&r.config).unwrap().replace(
            &format!("127.0.0.1:{}", r.port),
            &format!("127.0.0.1:{port2}"),
        ),
    )
    .unwrap();
    let (s1, s2) = (r.tmp.path().join("host1"), r.tmp.path().join("host2"));
    let env = |dir: &std::path::Path| {
        [
            ("REGCLEAN_STATE_DIR", dir.to_str().unwrap().to_string()),
            ("REGCLEAN_SOLE_REGISTRY", "true".to_string()),
        ]
    };
    let (e1, e2) = (env(&s1), env(&s2));
    let e1r: Vec<(&str, &str)> = e1.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let e2r: Vec<(&str, &str)> = e2.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let _sup1 = supervise_with(&r, &[], &e1r);
    let mut sup2 = supervise_with(&r2, &[], &e2r);
    r.push(&oci_image(&[BASE, b"replicated v1 own"]), "app:v1");
    r.push(&oci_image(&[BASE, b"replicated v2 own"]), "app:v2");
    let run = |args: &[&str]| {
        regclean()
            .env("REGCLEAN_STATE_DIR", &s1)
            .arg("--config")
            .arg(&r.config)
            .args(args)
            .output()
            .unwrap()
    };
    // The removal is done (removal alone is safe next to serving registries); the cycle sees
    // the other supervisor's heartbeat and collects nothing.
    let o = run(&["--json", "app:v1"]);
    assert_eq!(o.status.code(), Some(1), "{}\n{}", text(&o), log_of(&r));
    let err = json(&o)["supervisor"]["error"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        err.contains("another supervisor serves this bucket"),
        "{}",
        text(&o)
    );
    assert!(
        bucket.has_blob(&sha(b"replicated v1 own")),
        "collected next to a writable replica"
    );
    // The replica stops (SIGTERM: its heartbeat goes with it): collection goes ahead.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sup2.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    sup2.0.wait().unwrap();
    let o = run(&["--json", "--gc-only"]);
    assert_eq!(o.status.code(), Some(0), "{}\n{}", text(&o), log_of(&r));
    assert!(!bucket.has_blob(&sha(b"replicated v1 own")));
    r.assert_pull(&["app:v2"]);
}
