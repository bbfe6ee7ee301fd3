//! End-to-end policy file on a real registry: scoped rules, protect, exclude, semver order,
//! per-policy untagged handling, limits, and bad files refused before anything changes.

mod common;
use common::*;

const POLICY: &str = r#"
version: 1
protect: ["**:latest"]
limits: {max_delete_percent: LIMIT}
policies:
  - repositories: ["team0/**"]
    exclude: ["team0/keepme"]
    keep:
      - last: 2
      - tags: '^release-'
      - pushed_within: 15d
    untagged: delete
  - repositories: ["svc/*"]
    keep: [{last: 2, order: semver}]
    untagged: keep
"#;

fn write_policy(r: &Registry, limit: u32) -> std::path::PathBuf {
    let p = r.tmp.path().join(format!("policy-{limit}.yml"));
    std::fs::write(&p, POLICY.replace("LIMIT", &limit.to_string())).unwrap();
    p
}

#[test]
fn a_policy_file_applies_the_first_matching_policy_and_leaves_the_rest_untouched() {
    if !e2e_available() {
        return;
    }
    let mut r = Registry::start();
    let base: &[u8] = b"policy base";
    let img = |s: &str| oci_image(&[base, s.as_bytes()]);
    for i in 1..=5u64 {
        r.push(&img(&format!("build {i}")), &format!("team0/app:build-{i}"));
        pushed(&r.root, "team0/app", &format!("build-{i}"), 60 - 10 * i);
    }
    r.push(&img("build 5"), "team0/app:latest");
    pushed(&r.root, "team0/app", "latest", 400);
    r.push(&img("release 1"), "team0/app:release-1");
    pushed(&r.root, "team0/app", "release-1", 400);
    // Excluded, and no other policy matches: untouched, its untagged manifest too.
    r.push(&img("keepme old"), "team0/keepme:v1");
    let keepme_untagged = img("keepme old").digest;
    r.push(&img("keepme new"), "team0/keepme:v1");
    pushed(&r.root, "team0/keepme", "v1", 400);
    for (i, tag) in ["1.0.0", "1.2.0", "v1.10.0", "2.0.0-rc.1", "latest"]
        .iter()
        .enumerate()
    {
        r.push(&img(&format!("svc {tag}")), &format!("svc/api:{tag}"));
        // The oldest push is the highest version: order: semver ignores push times.
        pushed(&r.root, "svc/api", tag, 10 + 10 * i as u64);
    }
    // An untagged manifest in svc/api (untagged: keep): it stays.
    r.push(&img("svc old 1.2.0"), "svc/api:tmp");
    let svc_untagged = img("svc old 1.2.0").digest;
    std::fs::remove_dir_all(repo_path(&r.root, "svc/api/_manifests/tags/tmp")).unwrap();
    r.push(&img("misc"), "misc:old");
    pushed(&r.root, "misc", "old", 900);
    r.stop();

    // Over the limit: 5 of the 12 tags in scope is 41.7% > 30%: refused, nothing changed.
    let before = full_snapshot(&r.root);
    let o = r.regclean(&["--policy", write_policy(&r, 30).to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        text(&o).contains("5 of the 12 tags") && text(&o).contains("max_delete_percent"),
        "{}",
        text(&o)
    );
    assert_same(&before, &full_snapshot(&r.root), "a refused policy run");
    // A bad file: exit 2 naming the file and the line, nothing changed.
    let bad = r.tmp.path().join("bad.yml");
    std::fs::write(
        &bad,
        "version: 1\npolicies:\n  - repositories: [app]\n    keep:\n      - last: 0\n",
    )
    .unwrap();
    let o = r.regclean(&["--policy", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("bad.yml") && err.contains("line 5") && err.contains("last: 0"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert_same(&before, &full_snapshot(&r.root), "a bad policy file");
    // Flags and a policy file exclude each other.
    let o = r.regclean(&["--policy", bad.to_str().unwrap(), "--keep-last", "3"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));

    // The dry run says, per tag kept, which rule kept it.
    let policy = write_policy(&r, 50);
    let dry = r.regclean(&["--dry-run", "--policy", policy.to_str().unwrap()]);
    assert_eq!(dry.status.code(), Some(0), "{}", text(&dry));
    let out = String::from_utf8_lossy(&dry.stdout);
    for s in [
        "keep tag build-5 [policy 1: newest #1]",
        "keep tag build-4 [policy 1: newest #2]",
        "keep tag release-1 [policy 1: matches '^release-']",
        "keep tag latest [protected by '**:latest']",
        "[policy 1: beyond the 2 newest and older than 15days]",
        "would remove tag build-3 (",
        "keep tag 2.0.0-rc.1 [policy 2: #1 by semver]",
        "keep tag v1.10.0 [policy 2: #2 by semver]",
        "would remove tag 1.2.0 (",
        "[policy 2: beyond the first 2 by semver]",
    ] {
        assert!(out.contains(s), "dry run lacks '{s}':\n{out}");
    }
    assert!(!out.contains("misc") && !out.contains("keepme"), "{out}");

    // The real run, with the policy from the environment (as the entrypoint hook passes it).
    let o = regclean()
        .arg("--root")
        .arg(&r.root)
        .arg("--config")
        .arg(&r.config)
        .env("REGCLEAN_POLICY", &policy)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(
        tags_of(&r.root, "team0/app"),
        ["build-4", "build-5", "latest", "release-1"]
    );
    assert_eq!(
        tags_of(&r.root, "svc/api"),
        ["2.0.0-rc.1", "latest", "v1.10.0"]
    );
    assert_eq!(tags_of(&r.root, "team0/keepme"), ["v1"]);
    assert_eq!(tags_of(&r.root, "misc"), ["old"]);
    r.serve(&[]);
    r.assert_pull(&[
        "team0/app:build-4",
        "team0/app:build-5",
        "team0/app:latest",
        "team0/app:release-1",
        "svc/api:2.0.0-rc.1",
        "svc/api:v1.10.0",
        "svc/api:latest",
        "team0/keepme:v1",
        "misc:old",
    ]);
    r.assert_gone(&[
        "team0/app:build-1",
        "team0/app:build-3",
        "svc/api:1.0.0",
        "svc/api:1.2.0",
    ]);
    for (repo, d) in [
        ("svc/api", &svc_untagged),
        ("team0/keepme", &keepme_untagged),
    ] {
        let (status, _) = r.get(&format!("/v2/{repo}/manifests/{d}")).unwrap();
        assert_eq!(status, 200, "untagged {d} in {repo} stays");
    }
}

#[test]
fn the_entrypoint_hook_runs_a_policy_file_from_the_environment() {
    let (t, root) = fixture("sample");
    let all = tags_of(&root, "team0/app0");
    for (i, tag) in all.iter().enumerate() {
        pushed(&root, "team0/app0", tag, 10 + i as u64);
    }
    let before_app1 = tags_of(&root, "team0/app1");
    let policy = t.path().join("policy.yml");
    std::fs::write(
        &policy,
        "version: 1\nprotect: ['**:latest']\npolicies:\n  - repositories: [team0/app0]\n    keep: [{last: 1}]\n",
    )
    .unwrap();
    let hook = concat!(env!("CARGO_MANIFEST_DIR"), "/docker/regclean-hook");
    let o = std::process::Command::new("sh")
        .arg(hook)
        .arg("true")
        .env("REGCLEAN_BIN", env!("CARGO_BIN_EXE_regclean"))
        .env("REGCLEAN_POLICY", &policy)
        .env("REGCLEAN_ARGS", "--collector native")
        .env("REGCLEAN_SUPERVISE", "false")
        .env("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", &root)
        .env("REGISTRY_CONFIGURATION_PATH", "/dev/null")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("clean done"), "{}", text(&o));
    let newest = all.iter().find(|t| *t != "latest").unwrap().clone();
    let mut want = vec![newest];
    if all.iter().any(|t| t == "latest") {
        want.push("latest".into());
    }
    want.sort();
    assert_eq!(tags_of(&root, "team0/app0"), want);
    assert_eq!(
        tags_of(&root, "team0/app1"),
        before_app1,
        "no policy: untouched"
    );
}
