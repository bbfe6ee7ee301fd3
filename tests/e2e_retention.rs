//! End-to-end retention on a real registry: after a retention run plus GC, exactly the
//! expected tags remain and pull fully (multi-arch ones included).

mod common;
use common::*;

#[test]
fn keep_last_older_than_and_keep_leave_exactly_the_expected_tags_pullable() {
    if !e2e_available() {
        return;
    }
    let mut r = Registry::start();
    let base: &[u8] = b"retention base";
    for (i, tag) in ["b1", "b2", "b3", "b4", "b5"].iter().enumerate() {
        let img = oci_image(&[base, format!("app {tag}").as_bytes()]);
        r.push(&img, &format!("app:{tag}"));
        if *tag == "b5" {
            r.push(&img, "app:alias"); // shares b5's manifest
        }
        pushed(&r.root, "app", tag, 50 - 10 * i as u64); // b1 50 days ago ... b5 10 days ago
    }
    r.push(&oci_image(&[base, b"release"]), "app:v1.0");
    pushed(&r.root, "app", "v1.0", 400);
    pushed(&r.root, "app", "alias", 300);
    for (i, tag) in ["m1", "m2", "m3"].iter().enumerate() {
        r.push(&multi_arch(i % 2 == 0, base, tag), &format!("multi:{tag}"));
        pushed(&r.root, "multi", tag, 30 - 10 * i as u64); // m1 30 days ... m3 10 days
    }
    r.push(&oci_image(&[b"fresh"]), "fresh:new");
    r.stop();

    let dry = r.regclean(&[
        "--dry-run",
        "--keep-last",
        "2",
        "--older-than",
        "15d",
        "--keep",
        "^v",
        "--all",
    ]);
    assert_eq!(dry.status.code(), Some(0), "{}", text(&dry));
    let out = String::from_utf8_lossy(&dry.stdout);
    for s in [
        "keep tag v1.0 [matches '^v']",
        "keep tag b5 [newest #1]",
        "keep tag b4 [newest #2]",
        "would remove tag alias",
        "would remove tag m1",
        "keep tag m2 [newest #2]",
        "would free",
    ] {
        assert!(out.contains(s), "dry run lacks '{s}':\n{out}");
    }

    let o = r.regclean(&[
        "--json",
        "--keep-last",
        "2",
        "--older-than",
        "15d",
        "--keep",
        "^v",
        "--all",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["gc"]["status"], "done", "{}", j["gc"]);
    assert_eq!(tags_of(&r.root, "app"), ["b4", "b5", "v1.0"]);
    assert_eq!(tags_of(&r.root, "multi"), ["m2", "m3"]);
    assert_eq!(tags_of(&r.root, "fresh"), ["new"]);
    r.serve(&[]);
    r.assert_pull(&[
        "app:b4",
        "app:b5",
        "app:v1.0",
        "multi:m2",
        "multi:m3",
        "fresh:new",
    ]);
    r.assert_gone(&["app:b1", "app:b2", "app:b3", "app:alias", "multi:m1"]);
}

#[test]
fn retention_comes_from_the_environment_for_the_entrypoint_hook() {
    let (_t, root) = fixture("sample");
    // Git does not keep mtimes: give the fixture's tags controlled push times.
    let repos = ["team0/app0", "team0/app1"];
    // Expected survivors: `latest` (protected) and the newest other tag (the first by name,
    // since the i-th tag by name was pushed 10 + i days ago).
    let mut expected = Vec::new();
    for repo in repos {
        let all = tags_of(&root, repo);
        for (i, tag) in all.iter().enumerate() {
            pushed(&root, repo, tag, 10 + i as u64);
        }
        let newest = all.iter().find(|t| *t != "latest").unwrap().clone();
        let mut e = vec![newest, "latest".to_string()];
        e.sort();
        expected.push(e);
    }
    let o = regclean()
        .arg("--root")
        .arg(&root)
        .args(["--config", "/dev/null", "--json", "--no-gc"])
        .env("REGCLEAN_KEEP_LAST", "1")
        .env("REGCLEAN_KEEP", "^latest$")
        .args(repos)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    for (repo, e) in repos.iter().zip(&expected) {
        assert_eq!(&tags_of(&root, repo), e, "{repo}");
    }
}

#[test]
fn retention_without_scope_or_with_keep_last_zero_is_a_usage_error() {
    let (_t, root) = fixture("sample");
    for args in [
        &["--keep-last", "3"][..],
        &["--keep-last", "0", "--all"],
        &["--all"],
        &["--older-than", "90x", "--all"],
        &["--keep", "(", "--keep-last", "1", "--all"],
    ] {
        let o = run_on(&root, args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert_eq!(
            String::from_utf8_lossy(&o.stderr).lines().count(),
            1,
            "{args:?}: {}",
            text(&o)
        );
    }
    let o = regclean()
        .arg("--root")
        .arg(&root)
        .args(["--config", "/dev/null"])
        .env("REGCLEAN_KEEP_LAST", "2")
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(2),
        "env retention alone never cleans everything: {}",
        text(&o)
    );
}
