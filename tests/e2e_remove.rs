//! End-to-end: removal of tags and repositories on a real registry (Debian docker-registry
//! 2.8.2) serving the store, images pushed with skopeo, every remaining tag pulled back fully.

mod common;
use common::*;

const BASE: &[u8] = b"shared base layer, pushed to several repositories";

/// The store every test here starts from.
fn populated() -> Registry {
    let r = Registry::start();
    r.push(&oci_image(&[BASE, b"app v1"]), "app:v1");
    r.push(&oci_image(&[BASE, b"app v2"]), "app:v2");
    r.push(&oci_image(&[BASE, b"app pr-1"]), "app:pr-1");
    r.push(&oci_image(&[BASE, b"app pr-2"]), "app:pr-2");
    r.push(&multi_arch(false, BASE, "multi"), "multi:v1");
    r.push(&multi_arch(true, BASE, "list"), "list:v1");
    r.push(&oci_image(&[BASE, b"team app"]), "team/app:v1");
    r.push(&oci_image(&[BASE, b"team app api"]), "team/app/api:v1");
    r.push(&oci_image(&[b"old repo layer"]), "old/repo:v1");
    r
}

#[test]
fn removes_tags_and_repositories_while_the_registry_serves_and_everything_else_still_pulls() {
    if !e2e_available() {
        return;
    }
    let r = populated();
    let o = r.regclean(&["app:pr-*", "team/app", "old/repo"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("removed tag pr-1"), "{out}");
    assert!(out.contains("2 tag(s) and 2 repositories removed"), "{out}");

    r.assert_gone(&["app:pr-1", "app:pr-2", "team/app:v1", "old/repo:v1"]);
    r.assert_pull(&["app:v1", "app:v2", "multi:v1", "list:v1", "team/app/api:v1"]);
    // Next to the serving registry, removed repositories keep their `_layers` (its blob
    // descriptor cache would otherwise break re-pushes), so 2.8 still lists them until the
    // next offline collection. The nested repository survives its parent's removal.
    assert_eq!(
        r.catalog(),
        [
            "app",
            "list",
            "multi",
            "old/repo",
            "team/app",
            "team/app/api"
        ]
    );
    assert!(!repo_path(&r.root, "team/app/_manifests").exists());
    assert!(repo_path(&r.root, "team/app/_layers").exists());
    assert!(repo_path(&r.root, "team/app/api/_manifests").exists());
    let mut r = r;
    r.stop();
    let o = r.regclean(&["--gc-only", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    r.serve(&[]);
    assert_eq!(r.catalog(), ["app", "list", "multi", "team/app/api"]);
    assert!(
        !repo_path(&r.root, "old").exists(),
        "empty parent directories go"
    );
    assert!(!repo_path(&r.root, "team/app/_layers").exists());
    r.assert_pull(&["app:v1", "app:v2", "multi:v1", "list:v1", "team/app/api:v1"]);
    // Nothing of regclean's lies under repositories/ or blobs/.
    let trash = r.root.join(".regclean/trash");
    assert_eq!(
        std::fs::read_dir(&trash).unwrap().count(),
        0,
        "trash emptied"
    );
}

#[test]
fn last_tag_removal_keeps_the_repository_and_its_tags_dir() {
    if !e2e_available() {
        return;
    }
    let r = populated();
    let o = r.regclean(&["old/repo:v1"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    r.assert_gone(&["old/repo:v1"]);
    assert!(
        repo_path(&r.root, "old/repo/_manifests/tags").is_dir(),
        "tags/ itself stays"
    );
    assert!(
        repo_path(&r.root, "old/repo/_layers").is_dir(),
        "the repository stays"
    );
    assert!(r.catalog().contains(&"old/repo".to_string()));
    // The registry accepts a new push to the same repository afterwards.
    r.push(&oci_image(&[b"again"]), "old/repo:v2");
    r.assert_pull(&["old/repo:v2", "app:v1"]);
}

#[test]
fn missing_targets_fail_unless_ignored_and_a_dry_run_changes_nothing() {
    if !e2e_available() {
        return;
    }
    let r = populated();
    let before = snapshot(&r.root);
    let o = r.regclean(&["--dry-run", "app:pr-1", "team/**"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("would remove tag pr-1"));
    assert_same(&before, &snapshot(&r.root), "dry run changed the store");

    let o = r.regclean(&["app:nosuch", "app:pr-1"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("app:nosuch"),
        "{}",
        text(&o)
    );
    r.assert_gone(&["app:pr-1"]); // the other target was still processed
    let o = r.regclean(&["--ignore-missing", "app:pr-1"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    r.assert_pull(&["app:v1", "app:pr-2"]);
}
