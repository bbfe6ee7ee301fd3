//! Faults: symlinks planted in the store, malformed links, a concurrent run, SIGKILL in the
//! middle of a large removal. Each must end with a clear message, the documented exit code,
//! and nothing lost.

mod common;
use common::*;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

fn code(o: &std::process::Output) -> Option<i32> {
    o.status.code()
}

/// A directory outside the store with a file that must survive.
fn outside(t: &Path) -> std::path::PathBuf {
    let o = t.join("outside");
    std::fs::create_dir_all(o.join("_manifests/tags/v1/current")).unwrap();
    std::fs::write(o.join("precious"), "do not delete").unwrap();
    o
}

#[test]
fn symlinks_inside_the_store_are_never_followed() {
    let (t, root) = fixture("sample");
    let out = outside(t.path());
    // A symlinked tag, a symlinked repository, and a symlink inside a repository's _uploads.
    symlink(&out, repo_path(&root, "team0/app0/_manifests/tags/evil")).unwrap();
    symlink(&out, repo_path(&root, "linked")).unwrap();
    std::fs::create_dir_all(repo_path(&root, "svc8/_uploads/u1")).unwrap();
    symlink(&out, repo_path(&root, "svc8/_uploads/u1/data")).unwrap();

    // With collection, the symlinks are hazards: refused, nothing changed.
    let before = snapshot(&root);
    let o = run_on(&root, &["team0/app0:*", "svc8"]);
    assert_eq!(code(&o), Some(3), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Symlink"),
        "{}",
        text(&o)
    );
    assert_same(&before, &snapshot(&root), "refused run changed the store");
    // Removal only.
    let o = run_on(
        &root,
        &["--no-gc", "--json", "team0/app0:*", "svc8", "linked"],
    );
    assert_eq!(
        code(&o),
        Some(1),
        "'linked' is not a repository: {}",
        text(&o)
    );
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let odd: Vec<&str> = j["oddities"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["kind"] == "symlink")
        .map(|x| x["path"].as_str().unwrap())
        .collect();
    assert!(odd.contains(&"repositories/linked"), "{odd:?}");
    assert!(
        odd.contains(&"repositories/team0/app0/_manifests/tags/evil"),
        "{odd:?}"
    );
    assert!(!j["removals"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["name"] == "evil"));
    assert_eq!(
        std::fs::read_to_string(out.join("precious")).unwrap(),
        "do not delete"
    );
    assert!(out.join("_manifests/tags/v1/current").is_dir());
    assert!(
        !repo_path(&root, "svc8").exists(),
        "svc8 and its _uploads symlink were removed"
    );
}

#[test]
fn a_symlinked_store_directory_is_refused() {
    let (t, root) = fixture("sample");
    let v2 = root.join("docker/registry/v2");
    let moved = t.path().join("real-v2");
    std::fs::rename(&v2, &moved).unwrap();
    symlink(&moved, &v2).unwrap();
    let o = run_on(&root, &["svc8"]);
    assert_eq!(code(&o), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("symlink"),
        "{}",
        text(&o)
    );
    assert!(moved.join("repositories/svc8/_manifests").exists());
}

#[test]
fn malformed_links_are_reported_and_removal_still_works() {
    let (_t, root) = fixture("sample");
    let cur = repo_path(&root, "team0/app1/_manifests/tags/latest/current/link");
    std::fs::write(&cur, "sha256:NOT-A-DIGEST\n").unwrap();
    let empty = repo_path(&root, "team0/app2/_manifests/tags/latest/current/link");
    std::fs::write(&empty, "").unwrap();
    let rev_dir = repo_path(&root, "team0/app3/_manifests/revisions/sha256");
    let first = std::fs::read_dir(&rev_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::write(first.join("link"), "garbage").unwrap();

    let o = run_on(
        &root,
        &[
            "--no-gc",
            "--json",
            "team0/app1:latest",
            "team0/app2:latest",
        ],
    );
    assert_eq!(code(&o), Some(0), "{}", text(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let bad: Vec<&str> = j["oddities"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["kind"] == "malformed_link")
        .map(|x| x["path"].as_str().unwrap())
        .collect();
    assert_eq!(bad.len(), 3, "{bad:?}");
    assert!(
        bad.iter()
            .any(|p| p.contains("team0/app3/_manifests/revisions")),
        "{bad:?}"
    );
    assert!(!cur.exists() && !empty.exists());
    assert_eq!(
        j["removals"][0].get("manifest"),
        None,
        "no digest claimed for a malformed link"
    );
}

#[test]
fn a_second_concurrent_run_is_refused_with_exit_3_or_waits() {
    let (_t, root) = fixture("sample");
    // First run: take the lock as regclean does (an flock on the root directory) and hold it.
    let f = std::fs::File::open(&root).unwrap();
    let held = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).unwrap();
    let before = snapshot(&root);
    let o = run_on(&root, &["svc8"]);
    assert_eq!(code(&o), Some(3), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("another regclean"),
        "{}",
        text(&o)
    );
    assert_same(&before, &snapshot(&root), "store changed");

    let mut c = regclean();
    c.arg("--root")
        .arg(&root)
        .arg("--config")
        .arg(root.parent().unwrap().join("config.yml"))
        .args(["--wait", "svc8"]);
    let child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        repo_path(&root, "svc8").exists(),
        "--wait must wait for the lock"
    );
    drop(held);
    let o = child.wait_with_output().unwrap();
    assert_eq!(code(&o), Some(0), "{}", text(&o));
    assert!(!repo_path(&root, "svc8").exists());
}

#[test]
fn an_interrupted_repository_removal_is_finished_by_the_next_run() {
    // State after a kill between renaming _manifests and _layers: _layers without _manifests.
    let (t, root) = fixture("sample");
    std::fs::rename(
        repo_path(&root, "team1/app0/_manifests"),
        t.path().join("gone"),
    )
    .unwrap();
    let o = run_on(&root, &["team1/app0"]);
    assert_eq!(code(&o), Some(0), "{}", text(&o));
    assert!(!repo_path(&root, "team1/app0").exists());
}

/// All tags of the store as `repo:tag`, by walking the tree (independent of regclean).
fn all_tags(root: &Path) -> Vec<String> {
    let repos = root.join("docker/registry/v2/repositories");
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(&repos) {
        let e = e.unwrap();
        if e.file_name() == "current" {
            let tag_dir = e.path().parent().unwrap();
            let repo = tag_dir
                .parent()
                .unwrap()
                .parent()
                .unwrap()
                .parent()
                .unwrap();
            let name = repo
                .strip_prefix(&repos)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            out.push(format!(
                "{name}:{}",
                tag_dir.file_name().unwrap().to_string_lossy()
            ));
        }
    }
    out.sort();
    out
}

#[test]
fn sigkill_in_the_middle_of_a_large_removal_leaves_a_served_store_and_the_rerun_finishes() {
    if !e2e_available() {
        return;
    }
    let mut reg = Registry::start();
    genstore(&reg.root, &["--repos", "300", "--tags", "8", "--seed", "3"]);
    reg.serve(&[]); // restart on the generated store
    let targets = ["team1*/**", "team2*/**:build-*", "svc*"];
    let mut child = reg_cmd(&reg, &targets)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill as soon as the first rename into the trash is visible.
    let trash = reg.root.join(".regclean/trash");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let busy = std::fs::read_dir(&trash)
            .ok()
            .into_iter()
            .flatten()
            .flatten()
            .any(|run| {
                std::fs::read_dir(run.path())
                    .map(|mut d| d.next().is_some())
                    .unwrap_or(false)
            });
        if busy || Instant::now() > deadline {
            break;
        }
        std::thread::yield_now();
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert!(
        status.code().is_none(),
        "regclean must have been killed mid-run, it finished first"
    );

    // Every tag still on disk is served: its manifest resolves and its blobs exist.
    let tags = all_tags(&reg.root);
    assert!(!tags.is_empty());
    for t in &tags {
        let (repo, tag) = t.split_once(':').unwrap();
        let (status, body) = reg.get(&format!("/v2/{repo}/manifests/{tag}")).unwrap();
        assert_eq!(status, 200, "{t} after SIGKILL: {body}");
    }
    // A sample of them pull fully (every blob, digests verified).
    let sample: Vec<&str> = tags.iter().step_by(97).map(String::as_str).collect();
    reg.assert_pull(&sample);

    // The rerun empties the trash and finishes the job.
    let o = reg.regclean(
        &["--json"]
            .iter()
            .chain(targets.iter())
            .copied()
            .collect::<Vec<_>>(),
    );
    assert_eq!(code(&o), Some(0), "{}", text(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(j["leftover_trash_runs"].as_u64().unwrap() >= 1, "{j}");
    assert_eq!(std::fs::read_dir(&trash).unwrap().count(), 0);
    let left = all_tags(&reg.root);
    assert!(
        !left.iter().any(|t| t.starts_with("team1")
            || t.starts_with("svc")
            || (t.starts_with("team2") && t.contains(":build-"))),
        "{left:?}"
    );
    assert!(left
        .iter()
        .any(|t| t.starts_with("team2") && t.ends_with(":latest")));
    let sample: Vec<&str> = left.iter().step_by(53).map(String::as_str).collect();
    reg.assert_pull(&sample);
    reg.stop();
}

fn reg_cmd(reg: &Registry, args: &[&str]) -> std::process::Command {
    let mut c = regclean();
    c.arg("--root")
        .arg(&reg.root)
        .arg("--config")
        .arg(&reg.config)
        .args(args);
    c
}
