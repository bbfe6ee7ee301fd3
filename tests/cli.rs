//! The command-line contract on the bundled sample store (copied to a temp dir): validation,
//! root resolution, refusals, exit codes, output.

mod common;
use common::*;
use std::path::Path;

fn code(o: &std::process::Output) -> Option<i32> {
    o.status.code()
}

#[test]
fn invalid_target_is_rejected_before_anything_is_touched() {
    let (_t, root) = fixture("sample");
    let before = snapshot(&root);
    let o = run_on(&root, &["team0/app0:latest", "Team/Bad"]);
    assert_eq!(code(&o), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("invalid target 'Team/Bad'"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line per invalid target: {err}");
    assert_same(&before, &snapshot(&root), "store changed");
    assert!(
        !root.join(".regclean").exists(),
        "validation comes before the lock"
    );
}

#[test]
fn root_without_a_registry_tree_is_a_usage_error() {
    let t = tempfile::tempdir().unwrap();
    let o = regclean()
        .arg("--root")
        .arg(t.path())
        .arg("--config")
        .arg("/dev/null")
        .arg("app")
        .output()
        .unwrap();
    assert_eq!(code(&o), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("is not a registry storage root"),
        "{}",
        text(&o)
    );
    let o = regclean()
        .arg("--root")
        .arg(t.path().join("nope"))
        .arg("--config")
        .arg("/dev/null")
        .arg("app")
        .output()
        .unwrap();
    assert_eq!(code(&o), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("nope"),
        "{}",
        text(&o)
    );
}

#[test]
fn unsupported_driver_is_refused_with_exit_3_and_s3_with_a_root_is_a_usage_error() {
    let (t, root) = fixture("sample");
    let s3 = t.path().join("s3.yml");
    std::fs::write(
        &s3,
        "version: 0.1\nstorage:\n  s3:\n    bucket: images\n    region: eu-west-1\n",
    )
    .unwrap();
    let o = regclean()
        .arg("--config")
        .arg(&s3)
        .arg("--root")
        .arg(&root)
        .arg("team0/app0")
        .output()
        .unwrap();
    assert_eq!(code(&o), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("storage driver is 's3'"),
        "{}",
        text(&o)
    );
    let cfg = t.path().join("gcs.yml");
    std::fs::write(&cfg, "version: 0.1\nstorage:\n  gcs:\n    bucket: images\n").unwrap();
    let o = regclean()
        .arg("--config")
        .arg(&cfg)
        .arg("--root")
        .arg(&root)
        .arg("team0/app0")
        .output()
        .unwrap();
    assert_eq!(code(&o), Some(3), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("storage driver 'gcs'"),
        "{}",
        text(&o)
    );
    let o = regclean()
        .env("REGISTRY_STORAGE", "azure")
        .arg("--root")
        .arg(&root)
        .arg("--config")
        .arg(t.path().join("config.yml"))
        .arg("team0/app0")
        .output()
        .unwrap();
    assert_eq!(code(&o), Some(3), "{}", text(&o));
    assert!(repo_path(&root, "team0/app0/_manifests").exists());
}

#[test]
fn root_comes_from_the_environment_then_the_config() {
    let (t, root) = fixture("sample");
    let cfg = t.path().join("config.yml"); // rootdirectory: <root>
    let o = regclean()
        .arg("--config")
        .arg(&cfg)
        .args(["-n", "team0/app0"])
        .output()
        .unwrap();
    assert_eq!(code(&o), Some(0), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("registry config"),
        "{}",
        text(&o)
    );
    let o = regclean()
        .env("REGISTRY_CONFIGURATION_PATH", &cfg)
        .env(
            "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY",
            "/nonexistent/elsewhere",
        )
        .args(["-n", "team0/app0"])
        .output()
        .unwrap();
    assert_eq!(
        code(&o),
        Some(2),
        "env root beats the config's: {}",
        text(&o)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/elsewhere"));
    let _ = root;
}

#[test]
fn nested_repository_survives_its_parents_removal() {
    let (_t, root) = fixture("sample");
    let o = run_on(&root, &["team0/app6"]);
    assert_eq!(code(&o), Some(0), "{}", text(&o));
    let parent = repo_path(&root, "team0/app6");
    let mut left: Vec<String> = std::fs::read_dir(&parent)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["api"]);
    assert!(repo_path(&root, "team0/app6/api/_manifests/tags/latest/current/link").is_file());
}

#[test]
fn parent_only_namespace_is_not_a_repository() {
    let (_t, root) = fixture("sample");
    let before = snapshot(&root);
    let o = run_on(&root, &["--no-gc", "team0"]);
    assert_eq!(code(&o), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("'team0/**'"),
        "{}",
        text(&o)
    );
    assert_same(&before, &snapshot(&root), "store changed");
}

#[test]
fn pattern_matching_nothing_is_not_an_error() {
    let (_t, root) = fixture("sample");
    let o = run_on(&root, &["nothing/*", "team0/app0:zz-*"]);
    assert_eq!(code(&o), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("pattern 'nothing/*' matched nothing"), "{out}");
    assert!(
        out.contains("pattern 'team0/app0:zz-*' matched nothing"),
        "{out}"
    );
}

#[test]
fn json_report_has_the_same_facts() {
    let (_t, root) = fixture("sample");
    let o = run_on(&root, &["--json", "team0/app0:latest", "svc8", "nosuch:v1"]);
    assert_eq!(code(&o), Some(1), "{}", text(&o));
    let j: serde_json::Value =
        serde_json::from_slice(&o.stdout).expect("one JSON object on stdout");
    assert_eq!(j["exit_code"], 1);
    let rem = j["removals"].as_array().unwrap();
    assert_eq!(rem.len(), 2);
    assert_eq!(rem[0]["repo"], "svc8");
    assert_eq!(rem[0]["kind"], "repository");
    assert_eq!(rem[1]["kind"], "tag");
    assert_eq!(rem[1]["name"], "latest");
    assert!(rem[1]["manifest"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(j["missing"][0]["target"], "nosuch:v1");
    assert_eq!(j["dry_run"], false);
}

#[test]
fn json_error_is_json_too() {
    let t = tempfile::tempdir().unwrap();
    let o = regclean()
        .arg("--root")
        .arg(t.path())
        .args(["--config", "/dev/null", "--json", "app"])
        .output()
        .unwrap();
    assert_eq!(code(&o), Some(2));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["exit_code"], 2);
}

#[test]
fn help_documents_exit_codes() {
    let o = regclean().arg("--help").output().unwrap();
    assert_eq!(code(&o), Some(0));
    let h = String::from_utf8_lossy(&o.stdout);
    for s in ["EXIT CODES", "refused as unsafe", "--dry-run", "'team/**'"] {
        assert!(h.contains(s), "{s} missing from --help");
    }
    let o = regclean().arg("--no-such-flag").output().unwrap();
    assert_eq!(code(&o), Some(2));
}

#[test]
fn sample_store_is_untouched_by_the_readme_command() {
    // README's first command copies fixtures/sample before running; the fixture itself must
    // stay as committed. (Guards against a test or example pointing at the fixture directly.)
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/sample");
    assert!(!fixture.join(".regclean").exists());
}

#[test]
fn progress_lines_only_on_a_terminal() {
    let (t, root) = fixture("sample");
    let piped = run_on(&root, &["--dry-run", "team0/app0"]);
    assert!(
        !String::from_utf8_lossy(&piped.stderr).contains("scanning"),
        "{}",
        text(&piped)
    );
    // `script` (util-linux) gives regclean a terminal.
    let cmd = format!(
        "{} --root {} --config {} --dry-run team0/app0",
        env!("CARGO_BIN_EXE_regclean"),
        root.display(),
        t.path().join("config.yml").display()
    );
    let o = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("regclean: scanning"),
        "{}",
        text(&o)
    );
}

#[test]
fn supervise_on_the_s3_driver_without_a_usable_state_directory_is_exit_2_naming_both() {
    let t = tempfile::tempdir().unwrap();
    let cfg = t.path().join("s3.yml");
    std::fs::write(
        &cfg,
        "version: 0.1\nstorage:\n  s3:\n    bucket: images\n    region: eu-west-1\n    rootdirectory: /reg\n",
    )
    .unwrap();
    // A bucket has no directory here for the control socket and the pull activity: a local
    // one is needed, and this one cannot be created (a file is in the way).
    let blocked = t.path().join("file");
    std::fs::write(&blocked, b"").unwrap();
    let o = regclean()
        .arg("supervise")
        .arg("--config")
        .arg(&cfg)
        .env("REGCLEAN_STATE_DIR", blocked.join("state"))
        .env("REGCLEAN_SOLE_REGISTRY", "true")
        .args(["--", "true"])
        .output()
        .unwrap();
    assert_eq!(code(&o), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("s3://images/reg")
            && err.contains("REGCLEAN_STATE_DIR")
            && err.contains("file/state/s3-"),
        "{err}"
    );
    // Without REGCLEAN_SOLE_REGISTRY other registries may serve the bucket: a schedule, whose
    // cleans collect in the cycle, is refused.
    let o = regclean()
        .arg("supervise")
        .arg("--config")
        .arg(&cfg)
        .args(["--schedule", "0 3 * * *", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(code(&o), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("REGCLEAN_SOLE_REGISTRY=true"),
        "{}",
        text(&o)
    );
}

#[test]
fn s3_settings_errors_are_exit_2_one_line_naming_the_key() {
    let t = tempfile::tempdir().unwrap();
    let cfg = t.path().join("s3.yml");
    std::fs::write(
        &cfg,
        "version: 0.1\nstorage:\n  s3:\n    region: eu-west-1\n",
    )
    .unwrap();
    let o = regclean()
        .arg("--config")
        .arg(&cfg)
        .arg("app")
        .output()
        .unwrap();
    assert_eq!(code(&o), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("storage.s3.bucket") && err.lines().count() == 1,
        "{err}"
    );
    // The environment overrides the file, as for the registry.
    let o = regclean()
        .arg("--config")
        .arg(&cfg)
        .env("REGISTRY_STORAGE_S3_BUCKET", "b")
        .env("REGISTRY_STORAGE_S3_V4AUTH", "false")
        .arg("app")
        .output()
        .unwrap();
    assert_eq!(code(&o), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("v4auth"),
        "{}",
        text(&o)
    );
}
