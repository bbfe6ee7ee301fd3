//! `--check`: one damaged store per finding kind (fixture copies damaged on purpose), the
//! registry's own -m damage named exactly, and a clean store reported clean. The check never
//! writes to the store.

mod common;
use common::*;
use std::path::{Path, PathBuf};

fn v2(root: &Path) -> PathBuf {
    root.join("docker/registry/v2")
}

fn blob_dir(root: &Path, d: &str) -> PathBuf {
    let hex = &d[7..];
    v2(root).join(format!("blobs/sha256/{}/{hex}", &hex[..2]))
}

fn current(root: &Path, repo: &str, tag: &str) -> String {
    std::fs::read_to_string(repo_path(
        root,
        &format!("{repo}/_manifests/tags/{tag}/current/link"),
    ))
    .unwrap()
}

fn manifest(root: &Path, d: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(blob_dir(root, d).join("data")).unwrap()).unwrap()
}

/// The first tag of the fixture whose manifest is (or is not) an index.
fn find_tag(root: &Path, index: bool) -> (String, String, String) {
    for repo in [
        "team0/app0",
        "team0/app1",
        "team0/app2",
        "team0/app3",
        "team0/app4",
        "team0/app5",
        "team1/app0",
        "team1/app1",
        "svc8",
        "org0/group/deep9",
        "team0/app6",
        "team0/app6/api",
    ] {
        for e in std::fs::read_dir(repo_path(root, &format!("{repo}/_manifests/tags"))).unwrap() {
            let tag = e.unwrap().file_name().into_string().unwrap();
            let d = current(root, repo, &tag);
            if manifest(root, &d).get("manifests").is_some() == index {
                return (repo.to_string(), tag, d);
            }
        }
    }
    panic!(
        "the fixture has no {} tag",
        if index { "index" } else { "image" }
    );
}

/// Runs --check --json; returns (exit code, findings).
fn check(root: &Path, extra: &[&str]) -> (Option<i32>, Vec<serde_json::Value>) {
    let before = snapshot(root);
    let had_state = root.join(".regclean").exists();
    let o = run_on(root, &[&["--check", "--json"][..], extra].concat());
    assert_same(&before, &snapshot(root), "--check wrote to the store");
    assert_eq!(
        root.join(".regclean").exists(),
        had_state,
        "--check created its state directory"
    );
    let j: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", text(&o)));
    (o.status.code(), j["findings"].as_array().unwrap().clone())
}

fn assert_finding(root: &Path, extra: &[&str], kind: &str, repo: &str, tag: Option<&str>) {
    let (code, f) = check(root, extra);
    assert_eq!(code, Some(1), "{kind}: {f:?}");
    assert!(
        f.iter().any(|x| x["kind"] == kind
            && x["repo"] == repo
            && (tag.is_none() || x["tag"] == tag.unwrap())
            && x["advice"].as_str().is_some_and(|a| !a.is_empty())),
        "no {kind} for {repo}:{tag:?} in {f:#?}"
    );
}

#[test]
fn the_sample_store_is_clean() {
    let (_t, root) = fixture("sample");
    let (code, f) = check(&root, &[]);
    assert_eq!(code, Some(0), "{f:#?}");
    let (code, f) = check(&root, &["--verify-content"]);
    assert_eq!(code, Some(0), "{f:#?}");
}

#[test]
fn tag_link_missing_and_malformed() {
    let (_t, root) = fixture("sample");
    let (repo, tag, _) = find_tag(&root, false);
    std::fs::remove_file(repo_path(
        &root,
        &format!("{repo}/_manifests/tags/{tag}/current/link"),
    ))
    .unwrap();
    assert_finding(&root, &[], "tag_link_missing", &repo, Some(&tag));
    std::fs::write(
        repo_path(&root, &format!("{repo}/_manifests/tags/{tag}/current/link")),
        "sha256:xyz",
    )
    .unwrap();
    assert_finding(&root, &[], "tag_link_malformed", &repo, Some(&tag));
}

#[test]
fn tag_revision_missing() {
    let (_t, root) = fixture("sample");
    let (repo, tag, d) = find_tag(&root, false);
    std::fs::remove_dir_all(repo_path(
        &root,
        &format!("{repo}/_manifests/revisions/sha256/{}", &d[7..]),
    ))
    .unwrap();
    assert_finding(&root, &[], "tag_revision_missing", &repo, Some(&tag));
}

#[test]
fn manifest_blob_missing_and_unparsable() {
    let (_t, root) = fixture("sample");
    let (repo, tag, d) = find_tag(&root, false);
    let data = blob_dir(&root, &d).join("data");
    std::fs::write(&data, "{ not a manifest").unwrap();
    assert_finding(&root, &[], "manifest_unparsable", &repo, Some(&tag));
    std::fs::remove_dir_all(blob_dir(&root, &d)).unwrap();
    assert_finding(&root, &[], "manifest_blob_missing", &repo, Some(&tag));
}

#[test]
fn child_revision_missing_is_the_delete_untagged_damage() {
    let (_t, root) = fixture("sample");
    let (repo, tag, d) = find_tag(&root, true);
    let child = manifest(&root, &d)["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::remove_dir_all(repo_path(
        &root,
        &format!("{repo}/_manifests/revisions/sha256/{}", &child[7..]),
    ))
    .unwrap();
    assert_finding(&root, &[], "child_revision_missing", &repo, Some(&tag));
}

#[test]
fn blob_missing_and_layer_link_missing() {
    let (_t, root) = fixture("sample");
    let (repo, tag, d) = find_tag(&root, false);
    let m = manifest(&root, &d);
    let layer = m["layers"].as_array().unwrap().last().unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::remove_dir_all(repo_path(
        &root,
        &format!("{repo}/_layers/sha256/{}", &layer[7..]),
    ))
    .unwrap();
    assert_finding(&root, &[], "layer_link_missing", &repo, Some(&tag));
    std::fs::remove_dir_all(blob_dir(&root, &layer)).unwrap();
    assert_finding(&root, &[], "blob_missing", &repo, Some(&tag));
}

#[test]
fn corrupt_blob_content_needs_verify_content() {
    let (_t, root) = fixture("sample");
    let (_, _, d) = find_tag(&root, false);
    let layer = manifest(&root, &d)["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let data = blob_dir(&root, &layer).join("data");
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();
    assert_eq!(
        check(&root, &[]).0,
        Some(0),
        "structure alone cannot see it"
    );
    let (code, f) = check(&root, &["--verify-content"]);
    assert_eq!(code, Some(1));
    assert!(
        f.iter()
            .any(|x| x["kind"] == "blob_corrupt" && x["digest"] == layer.as_str()),
        "{f:#?}"
    );
}

#[test]
fn hazards_leftover_trash_and_stale_uploads() {
    let (_t, root) = fixture("sample");
    std::fs::write(repo_path(&root, "team0/_junk"), "x").unwrap();
    assert_finding(&root, &[], "hazard", "", None);
    std::fs::remove_file(repo_path(&root, "team0/_junk")).unwrap();

    std::fs::create_dir_all(root.join(".regclean/trash/1700000000-42/0.tag")).unwrap();
    assert_finding(&root, &[], "leftover_trash", "", None);
    std::fs::remove_dir_all(root.join(".regclean")).unwrap();

    let up = repo_path(&root, "svc8/_uploads/0b6c3a1e-uuid");
    std::fs::create_dir_all(&up).unwrap();
    std::fs::write(up.join("startedat"), "2026-01-01T00:00:00Z").unwrap();
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3 * 86_400);
    std::fs::File::open(&up).unwrap().set_modified(old).unwrap();
    assert_finding(&root, &[], "stale_upload", "svc8", None);
}

#[test]
fn targets_restrict_the_check_and_missing_targets_fail() {
    let (_t, root) = fixture("sample");
    let (repo, tag, _) = find_tag(&root, false);
    std::fs::remove_file(repo_path(
        &root,
        &format!("{repo}/_manifests/tags/{tag}/current/link"),
    ))
    .unwrap();
    let other = if repo == "svc8" { "team1/app1" } else { "svc8" };
    assert_eq!(check(&root, &[other]).0, Some(0));
    assert_finding(
        &root,
        &[&format!("{repo}:{tag}")],
        "tag_link_missing",
        &repo,
        Some(&tag),
    );
    let o = run_on(&root, &["--check", "nosuch/repo"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let o = run_on(&root, &["--check", "--keep-last", "3", "svc8"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    // A policy file is read for its protect list (the advice on orphan attachments), and
    // nothing else: the check stays read-only and still finds the missing link.
    let t = tempfile::tempdir().unwrap();
    let policy = t.path().join("p.yml");
    std::fs::write(
        &policy,
        "version: 1\nprotect: ['**:latest']\npolicies:\n  - repositories: ['**']\n    keep: [{last: 1}]\n",
    )
    .unwrap();
    let (code, findings) = check(&root, &["--policy", policy.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(
        findings.iter().any(|f| f["kind"] == "tag_link_missing"),
        "{findings:?}"
    );
}

#[test]
fn check_names_exactly_what_the_registrys_delete_untagged_broke() {
    if !e2e_available() {
        return;
    }
    let mut r = Registry::start();
    let base: &[u8] = b"check base";
    r.push(&oci_image(&[base, b"single"]), "single:v1");
    r.push(&multi_arch(false, base, "oci"), "multi:v1");
    r.push(&multi_arch(true, base, "docker"), "list:v1");
    r.push(&oci_image(&[base, b"overwritten"]), "single:v2");
    r.push(&oci_image(&[base, b"overwriting"]), "single:v2");
    r.stop();
    let copy = tempfile::tempdir().unwrap();
    let croot = copy.path().join("root");
    assert!(std::process::Command::new("cp")
        .arg("-a")
        .arg(&r.root)
        .arg(&croot)
        .status()
        .unwrap()
        .success());
    write_config(copy.path(), &croot, "127.0.0.1:1");

    let (code, f) = check(&r.root, &[]);
    assert_eq!(code, Some(0), "undamaged: {f:#?}");
    let o = std::process::Command::new("docker-registry")
        .args(["garbage-collect", "--delete-untagged"])
        .arg(&r.config)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let (code, f) = check(&r.root, &[]);
    assert_eq!(code, Some(1));
    let mut broken: Vec<String> = f
        .iter()
        .filter(|x| x["kind"] == "child_revision_missing")
        .map(|x| {
            format!(
                "{}:{}",
                x["repo"].as_str().unwrap(),
                x["tag"].as_str().unwrap()
            )
        })
        .collect();
    broken.sort();
    broken.dedup();
    assert_eq!(broken, ["list:v1", "multi:v1"], "{f:#?}");
    assert_eq!(
        f.iter()
            .filter(|x| x["kind"] == "child_revision_missing")
            .count(),
        4,
        "two children each: {f:#?}"
    );
    assert!(
        f.iter().all(|x| x["repo"] != "single"),
        "single-platform images are intact: {f:#?}"
    );

    // regclean's own clean of the undamaged copy leaves the check clean.
    let o = run_on(
        &croot,
        &["--gc-only", "--registry-bin", "/usr/bin/docker-registry"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let (code, f) = check(&croot, &[]);
    assert_eq!(code, Some(0), "{f:#?}");
}
