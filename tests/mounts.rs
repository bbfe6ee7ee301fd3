//! Mount points inside the store (issue 10, item 5): a bind mount of an outside directory on
//! the same file system has the same device number as the store, so only mount identities
//! reveal it. regclean must never delete through one: not in a removal, not in the trash, and
//! it must report it (`--check`) and refuse collection (exit 3). Needs root (`mount --bind`),
//! which CI has.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Bind mounts made under one temp dir; all of them are unmounted on drop (even when the test
/// panics, and wherever a buggy run moved them: the mount table is searched, not the path).
struct Mounts {
    under: PathBuf,
}

impl Mounts {
    fn new(under: &Path) -> Mounts {
        Mounts {
            under: std::fs::canonicalize(under).unwrap(),
        }
    }

    /// `mount --bind src dst` (dst is created).
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

    /// Mount points currently below `under`.
    fn list(&self) -> Vec<PathBuf> {
        let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let mut v: Vec<PathBuf> = table
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(|p| PathBuf::from(p.replace("\\040", " ")))
            .filter(|p| p.starts_with(&self.under) && *p != self.under)
            .collect();
        v.sort();
        v
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        for p in self.list().iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(p).status();
        }
    }
}

/// An outside directory on the store's file system, with files that must survive.
fn outside(t: &Path) -> PathBuf {
    let o = t.join("outside");
    std::fs::create_dir_all(o.join("sub/deeper")).unwrap();
    std::fs::write(o.join("precious"), "do not delete").unwrap();
    std::fs::write(o.join("sub/deeper/also"), "nor this").unwrap();
    o
}

fn assert_outside_intact(o: &Path) {
    assert_eq!(
        std::fs::read_to_string(o.join("precious")).ok().as_deref(),
        Some("do not delete"),
        "a file outside the store was deleted through the bind mount"
    );
    assert_eq!(
        std::fs::read_to_string(o.join("sub/deeper/also"))
            .ok()
            .as_deref(),
        Some("nor this"),
        "a file outside the store was deleted through the bind mount"
    );
}

fn out(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn repository_removal_never_deletes_through_a_bind_mount_in_its_uploads() {
    e2e_available();
    let (t, root) = fixture("sample");
    let o = outside(t.path());
    let m = Mounts::new(t.path());
    let at = repo_path(&root, "svc8/_uploads/x");
    m.bind(&o, &at);

    let r = run_on(&root, &["svc8", "team0/app0:build-2"]);
    assert_outside_intact(&o);
    assert_eq!(r.status.code(), Some(1), "{}", text(&r));
    let all = out(&r);
    assert!(
        all.contains("repositories/svc8/_uploads/x") && all.contains("mount point"),
        "the error must name the mount point: {}",
        text(&r)
    );
    // The removal was not carried out: the mount is where it was, svc8 is whole.
    assert_eq!(m.list(), vec![std::fs::canonicalize(&at).unwrap()]);
    assert!(repo_path(&root, "svc8/_manifests/tags/latest").is_dir());
    assert!(repo_path(&root, "svc8/_layers").is_dir());
    // The rest of the plan went on.
    assert!(!repo_path(&root, "team0/app0/_manifests/tags/build-2").exists());
}

#[test]
fn check_reports_bind_mounts_inside_the_store() {
    e2e_available();
    let (t, root) = fixture("sample");
    let o = outside(t.path());
    let m = Mounts::new(t.path());
    m.bind(&o, &repo_path(&root, "svc8/_uploads/x"));
    m.bind(&o, &root.join("docker/registry/v2/blobs/sha256/zz"));

    let r = run_on(&root, &["--check", "--json"]);
    assert_eq!(r.status.code(), Some(1), "{}", text(&r));
    let j: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    let mounts: Vec<String> = j["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "mount_point")
        .map(|f| f["detail"].as_str().unwrap().to_string())
        .collect();
    for p in ["repositories/svc8/_uploads/x", "blobs/sha256/zz"] {
        assert!(
            mounts.iter().any(|d| d.contains(p)),
            "--check must report the mount at {p}: {mounts:?}"
        );
    }
    assert_outside_intact(&o);
}

#[test]
fn gc_only_refuses_with_a_bind_mount_inside_the_store() {
    e2e_available();
    let (t, root) = fixture("sample");
    let o = outside(t.path());
    let m = Mounts::new(t.path());
    m.bind(&o, &repo_path(&root, "team1/app0/_uploads/x"));
    let before = snapshot(&root);
    let r = run_on(&root, &["--gc-only"]);
    assert_eq!(r.status.code(), Some(3), "{}", text(&r));
    assert!(
        out(&r).contains("repositories/team1/app0/_uploads/x"),
        "the refusal must name the mount point: {}",
        text(&r)
    );
    assert_same(
        &before,
        &snapshot(&root),
        "a refused --gc-only changed the store",
    );
    assert_outside_intact(&o);
}

#[test]
fn trash_emptying_never_crosses_a_bind_mount_left_in_the_trash() {
    e2e_available();
    let (t, root) = fixture("sample");
    let o = outside(t.path());
    let m = Mounts::new(t.path());
    // As an interrupted run would have left it, with a mount inside (made by hand).
    let run = root.join(".regclean/trash/1-1");
    std::fs::create_dir_all(run.join("0.uploads/a")).unwrap();
    std::fs::write(run.join("0.uploads/a/data"), "trash").unwrap();
    let at = run.join("0.uploads/x");
    m.bind(&o, &at);

    let r = run_on(&root, &["--no-gc", "team0/app0:build-2"]);
    assert_outside_intact(&o);
    assert_eq!(r.status.code(), Some(1), "{}", text(&r));
    assert!(
        out(&r).contains(".regclean/trash/1-1/0.uploads/x"),
        "the error must name the mount point: {}",
        text(&r)
    );
    assert!(
        !run.join("0.uploads/a").exists(),
        "the rest of the trash is deleted"
    );
    assert_eq!(m.list(), vec![std::fs::canonicalize(&at).unwrap()]);
    assert!(!repo_path(&root, "team0/app0/_manifests/tags/build-2").exists());
}
