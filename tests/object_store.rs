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
    let o = w.r.regclean(&[
        "--json",
        "--registry-stopped",
        "app:v1",
        "team/app",
        "multi:v1",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let j = json(&o);
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
