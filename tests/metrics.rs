//! `--metrics-file`: Prometheus text, written atomically, the last success kept across
//! failures, never written through a planted symlink.

mod common;
use common::*;
use std::path::Path;

fn value(text: &str, metric: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{metric} ")))
        .unwrap_or_else(|| panic!("no {metric} in:\n{text}"))
        .parse()
        .unwrap()
}

fn run(root: &Path, metrics: &Path, args: &[&str]) -> std::process::Output {
    regclean()
        .arg("--root")
        .arg(root)
        .args(["--config", "/dev/null", "--collector", "native"])
        .arg("--metrics-file")
        .arg(metrics)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn metrics_file_reports_the_run_and_keeps_the_last_success_across_failures() {
    let (t, root) = fixture("sample");
    let metrics = t.path().join("regclean.prom");
    let tag = tags_of(&root, "team0/app0")[0].clone();
    let o = run(&root, &metrics, &[&format!("team0/app0:{tag}")]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let m = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        m.contains("# TYPE regclean_last_success_timestamp_seconds gauge"),
        "{m}"
    );
    let success = value(&m, "regclean_last_success_timestamp_seconds");
    assert!(success > 1.7e9, "{m}");
    assert_eq!(value(&m, "regclean_last_exit_code"), 0.0);
    assert_eq!(value(&m, "regclean_tags_removed"), 1.0);
    assert!(value(&m, "regclean_bytes_freed") > 0.0, "{m}");
    assert!(
        m.contains("regclean_phase_duration_seconds{phase=\"scan\"}"),
        "{m}"
    );

    // A failing run (a missing tag): exit 1 recorded, the last success kept.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let o = run(&root, &metrics, &["team0/app0:no-such-tag"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let m = std::fs::read_to_string(&metrics).unwrap();
    assert_eq!(value(&m, "regclean_last_exit_code"), 1.0);
    assert_eq!(
        value(&m, "regclean_last_success_timestamp_seconds"),
        success
    );
    assert!(value(&m, "regclean_last_run_timestamp_seconds") > success);

    // --check: findings by kind (an orphan attachment planted for it).
    let sig = format!("sha256-{}.sig", "ab".repeat(32));
    let src = repo_path(
        &root,
        &format!(
            "team0/app1/_manifests/tags/{}",
            tags_of(&root, "team0/app1")[0]
        ),
    );
    let dst = repo_path(&root, &format!("team0/app1/_manifests/tags/{sig}"));
    std::fs::create_dir_all(dst.join("current")).unwrap();
    std::fs::copy(src.join("current/link"), dst.join("current/link")).unwrap();
    let o = regclean()
        .arg("--root")
        .arg(&root)
        .args(["--config", "/dev/null", "--check", "--metrics-file"])
        .arg(&metrics)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let m = std::fs::read_to_string(&metrics).unwrap();
    assert_eq!(
        value(&m, "regclean_check_findings{kind=\"orphan_attachment\"}"),
        1.0,
        "{m}"
    );
}

#[test]
fn a_symlink_planted_at_the_metrics_path_is_replaced_not_written_through() {
    let (t, root) = fixture("sample");
    let outside = t.path().join("outside");
    std::fs::write(&outside, "precious").unwrap();
    let metrics = t.path().join("regclean.prom");
    std::os::unix::fs::symlink(&outside, &metrics).unwrap();
    let o = run(&root, &metrics, &["--dry-run", "team0/app0"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "precious");
    assert!(!std::fs::symlink_metadata(&metrics)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(std::fs::read_to_string(&metrics)
        .unwrap()
        .contains("regclean_last_exit_code 0"));
}
