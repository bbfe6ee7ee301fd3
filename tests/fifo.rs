//! FIFOs in the store (issue 10, item 7): reading one blocks forever, lock held. Wherever a
//! FIFO sits (a tag's current/link, a revision link, a manifest's or a layer's blob data),
//! every mode must finish with its documented exit code and a one-line error naming the path:
//! `--check` 1 with a finding; a dry run, a removal run with collection and `--gc-only` 3
//! (a hazard), nothing changed.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs regclean on `root` with `args`, killed (and the test failed) after 60 s.
fn finishes(root: &Path, args: &[&str]) -> Output {
    let mut c = regclean();
    c.arg("--root").arg(root).args(args);
    c.arg("--config")
        .arg(root.parent().unwrap().join("config.yml"));
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!("regclean {args:?} hangs (killed after 60 s): {}", text(&o));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// Replaces the file `p` with a FIFO.
fn fifo_at(p: &Path) {
    std::fs::remove_file(p).unwrap();
    let st = Command::new("mkfifo").arg(p).status().unwrap();
    assert!(st.success());
}

fn v2(root: &Path) -> PathBuf {
    root.join("docker/registry/v2")
}

/// The blob data path of `sha256:<hex>`.
fn blob_data(root: &Path, digest: &str) -> PathBuf {
    let h = &digest[7..];
    v2(root).join(format!("blobs/sha256/{}/{h}/data", &h[..2]))
}

/// The manifest digest that `repo:tag` points at.
fn tag_target(root: &Path, repo: &str, tag: &str) -> String {
    std::fs::read_to_string(repo_path(
        root,
        &format!("{repo}/_manifests/tags/{tag}/current/link"),
    ))
    .unwrap()
}

/// Every mode, each finishing with its documented code and naming `rel` (the FIFO's path
/// relative to `docker/registry/v2`). `check_args` adds e.g. `--verify-content`.
fn every_mode_finishes(root: &Path, rel: &str, check_args: &[&str]) {
    let names = |o: &Output| {
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        all.lines()
            .any(|l| l.contains(rel) && l.contains("not a regular file (fifo)"))
    };
    let mut args = vec!["--check"];
    args.extend_from_slice(check_args);
    let o = finishes(root, &args);
    assert_eq!(o.status.code(), Some(1), "--check: {}", text(&o));
    assert!(names(&o), "--check must name {rel}: {}", text(&o));

    let before = snapshot(root);
    for args in [
        &["--dry-run", "team1/app1:build-2"][..],
        &["team1/app1:build-2"][..],
        &["--gc-only"][..],
    ] {
        let o = finishes(root, args);
        assert_eq!(o.status.code(), Some(3), "{args:?}: {}", text(&o));
        assert!(names(&o), "{args:?} must name {rel}: {}", text(&o));
        assert_same(
            &before,
            &snapshot(root),
            &format!("{args:?} changed the store"),
        );
    }
}

#[test]
fn a_fifo_at_a_tag_current_link_hangs_no_mode() {
    e2e_available();
    let (_t, root) = fixture("sample");
    fifo_at(&repo_path(
        &root,
        "team0/app0/_manifests/tags/latest/current/link",
    ));
    every_mode_finishes(
        &root,
        "repositories/team0/app0/_manifests/tags/latest/current/link",
        &[],
    );
}

#[test]
fn a_fifo_at_a_revision_link_hangs_no_mode() {
    e2e_available();
    let (_t, root) = fixture("sample");
    let d = tag_target(&root, "team0/app0", "latest");
    let rel = format!(
        "repositories/team0/app0/_manifests/revisions/sha256/{}/link",
        &d[7..]
    );
    fifo_at(&v2(&root).join(&rel));
    every_mode_finishes(&root, &rel, &[]);
}

#[test]
fn a_fifo_at_a_manifest_blob_data_hangs_no_mode() {
    e2e_available();
    let (_t, root) = fixture("sample");
    let d = tag_target(&root, "team0/app0", "latest");
    let p = blob_data(&root, &d);
    fifo_at(&p);
    let rel = p
        .strip_prefix(v2(&root))
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    every_mode_finishes(&root, &rel, &[]);
}

#[test]
fn a_fifo_at_a_layer_blob_data_hangs_no_mode_with_verify_content() {
    e2e_available();
    let (_t, root) = fixture("sample");
    let d = tag_target(&root, "team0/app0", "latest");
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob_data(&root, &d)).unwrap()).unwrap();
    // The tag may be an index: descend to an image manifest.
    let m = match m["manifests"].as_array() {
        Some(kids) => {
            let c = kids[0]["digest"].as_str().unwrap();
            serde_json::from_slice(&std::fs::read(blob_data(&root, c)).unwrap()).unwrap()
        }
        None => m,
    };
    let layer = m["layers"][0]["digest"].as_str().unwrap();
    let p = blob_data(&root, layer);
    fifo_at(&p);
    let rel = p
        .strip_prefix(v2(&root))
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    every_mode_finishes(&root, &rel, &["--verify-content"]);
}
