//! `regclean supervise` with the real registry (Debian's docker-registry 2.8.2, in-memory blob
//! descriptor cache on): online collection with zero failed pulls, a re-push that pulls with
//! no manual restart, and a clean stop on SIGTERM.

mod common;
use common::*;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Starts `regclean supervise -- docker-registry serve CONFIG` fronting `port`; waits until
/// the registry answers through it.
fn supervise(h: &Registry) -> Sup {
    supervise_with(h, &[], &[])
}

/// An empty storage root and a registry handle (config written, nothing started) for it.
fn fresh() -> (tempfile::TempDir, std::path::PathBuf, Registry) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let port = free_port();
    let mut h = Registry::external(port, &root);
    h.config = write_config(h.tmp.path(), &root, &format!("127.0.0.1:{port}"));
    (tmp, root, h)
}

#[test]
fn online_collection_frees_the_disk_with_zero_failed_pulls_and_a_repush_pulls_again() {
    if !e2e_available() {
        return;
    }
    let (_tmp, root, h) = fresh();
    let port = h.port;
    let mut sup = supervise(&h);

    let v1 = oci_image(&[b"supervised base", b"app v1 own layer"]);
    let v2 = oci_image(&[b"supervised base", b"app v2 own layer"]);
    h.push(&v1, "app:v1");
    h.push(&v2, "app:v2");
    let v1_own = v1.blobs[1].clone(); // config 0, layers 1.. (the base is shared)
    let v1_layer = v1
        .blobs
        .iter()
        .find(|b| !v2.blobs.contains(b) && **b != v1.digest)
        .unwrap()
        .clone();
    assert!(blob_exists(&root, &v1_layer));

    // A client pulling app:v2 continuously, without retries, through the whole cycle.
    let puller = Puller::start(port, "app:v2");
    puller.wait_for_ok(5);

    // `docker exec registry regclean app:v1`, from another process: removal now, collection
    // online through the supervisor.
    let before = puller.ok();
    let o = h.regclean(&["--json", "app:v1"]);
    let during = puller.ok() - before;
    assert_eq!(o.status.code(), Some(0), "{}\n{}", text(&o), log_of(&h));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let c = &j["supervisor"];
    assert_eq!(c["exit_code"], 0, "{c}");
    assert!(
        c["report"]["gc"]["freed_bytes"].as_u64().unwrap() > 0,
        "{c}"
    );
    assert!(!blob_exists(&root, &v1_layer), "v1's own layer is freed");
    assert!(!blob_exists(&root, &v1_own) || v2.blobs.contains(&v1_own));
    assert!(during > 0, "pulls went on during the cycle");

    puller.wait_for_total(50);
    let (ok, failed, errors) = puller.finish();
    assert_eq!(failed, 0, "failed pulls (of {ok}): {errors:?}");

    // A re-push of the removed image, with no manual restart: the fresh registry child has an
    // empty cache, so the layers are uploaded and linked again.
    h.push(&v1, "app:v1");
    h.assert_pull(&["app:v1", "app:v2"]);
    assert!(
        blob_exists(&root, &v1_layer),
        "the re-push uploaded the layer again"
    );
    let check = h.regclean(&["--check"]);
    assert_eq!(check.status.code(), Some(0), "{}", text(&check));
    // gc_only_next_to_the_supervisor_was_refused: an explicit collection is the cycle's.
    let o = h.regclean(&["--json", "--gc-only"]);
    assert_eq!(o.status.code(), Some(0), "{}\n{}", text(&o), log_of(&h));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["supervisor"]["exit_code"], 0, "{j}");
    h.assert_pull(&["app:v1", "app:v2"]);

    // SIGTERM stops the supervisor and the registry within 10 s, exit 0.
    let t = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sup.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = loop {
        if let Some(s) = sup.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "still running after 10 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "{}", log_of(&h));
    assert!(h.get("/v2/").is_err(), "nothing serves any more");
}

/// The children of `pid` (from /proc/PID/task/*/children).
fn children_of(pid: u32) -> Vec<i32> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let p = t.unwrap().path().join("children");
        if let Ok(s) = std::fs::read_to_string(p) {
            out.extend(s.split_whitespace().filter_map(|x| x.parse::<i32>().ok()));
        }
    }
    out
}

#[test]
fn a_registry_child_that_dies_stops_the_supervisor_with_its_status() {
    if !e2e_available() {
        return;
    }
    let (_tmp, _root, h) = fresh();
    let mut sup = supervise(&h);
    let kids = children_of(sup.0.id());
    assert_eq!(kids.len(), 1, "one registry child: {kids:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(kids[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let t = Instant::now();
    let status = loop {
        if let Some(s) = sup.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the supervisor goes on without a registry"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(128 + 9), "{}", log_of(&h));
    assert!(log_of(&h).contains("died on its own"), "{}", log_of(&h));
}

#[test]
fn a_repository_named_supervise_is_still_removable() {
    let (_t, root) = fixture("sample");
    let repo = repo_path(&root, "team0/app0");
    let dest = repo_path(&root, "supervise");
    std::fs::rename(&repo, &dest).unwrap();
    let o = regclean()
        .arg("--root")
        .arg(&root)
        .args(["--config", "/dev/null", "--no-gc", "--", "supervise"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(!dest.join("_manifests").exists());
}

#[test]
fn the_schedule_runs_the_configured_policy_and_collects_online() {
    if !e2e_available() {
        return;
    }
    let (_tmp, root, h) = fresh();
    let policy = h.tmp.path().join("policy.yml");
    std::fs::write(
        &policy,
        "version: 1\npolicies:\n  - repositories: [app]\n    keep: [{last: 1}]\n",
    )
    .unwrap();
    // A bad schedule is a usage error, one line.
    let o = regclean()
        .args([
            "supervise",
            "--schedule",
            "61 * * * *",
            "--",
            "docker-registry",
            "serve",
        ])
        .arg(&h.config)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("61 * * * *"), "{}", text(&o));

    // Every 2 seconds: the policy file from the environment, as the image passes it.
    let sup = supervise_with(
        &h,
        &["--schedule", "*/2 * * * * *"],
        &[("REGCLEAN_POLICY", policy.to_str().unwrap())],
    );
    let v1 = oci_image(&[b"scheduled v1 own layer"]);
    h.push(&v1, "app:v1");
    pushed(&root, "app", "v1", 3);
    h.push(&oci_image(&[b"scheduled v2 own layer"]), "app:v2");
    let t = Instant::now();
    while blob_exists(&root, &sha(b"scheduled v1 own layer"))
        || !log_of(&h).contains("scheduled clean done: exit 0")
    {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "not collected by the schedule: {}",
            log_of(&h)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(tags_of(&root, "app"), ["v2"]);
    h.assert_pull(&["app:v2"]);
    h.assert_gone(&["app:v1"]);
    let log = log_of(&h);
    assert!(log.contains("scheduled clean done: exit 0"), "{log}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sup.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
}

/// A stand-in for the user's own notification endpoint: counts the POSTs it gets.
fn user_endpoint() -> (u16, Arc<AtomicUsize>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let posts = Arc::new(AtomicUsize::new(0));
    let p = posts.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(c) = c else { continue };
            let p = p.clone();
            std::thread::spawn(move || {
                let mut w = c.try_clone().unwrap();
                let mut r = BufReader::new(c);
                loop {
                    let mut len = 0;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; len];
                    let _ = r.read_exact(&mut body);
                    p.fetch_add(1, Ordering::SeqCst);
                    let _ = write!(w, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
                }
            });
        }
    });
    (port, posts)
}

#[test]
fn pulled_within_keeps_a_pulled_tag_and_a_pulled_digest_and_removes_the_unpulled() {
    if !e2e_available() {
        return;
    }
    let (_tmp, root, h) = fresh();
    let (user_port, posts) = user_endpoint();
    let mut cfg = std::fs::read_to_string(&h.config).unwrap();
    cfg.push_str(&format!(
        "notifications:\n  endpoints:\n    - name: audit\n      url: http://127.0.0.1:{user_port}/events\n      timeout: 2s\n      threshold: 5\n      backoff: 1s\n"
    ));
    std::fs::write(&h.config, cfg).unwrap();
    let policy = h.tmp.path().join("policy.yml");
    std::fs::write(
        &policy,
        "version: 1\npolicies:\n  - repositories: [app]\n    keep: [{last: 1}, {pulled_within: 30d}]\n    untagged: {keep_pulled_within: 30d}\n",
    )
    .unwrap();
    // Without recorded activity such a policy is refused (exit 2), nothing changed.
    std::fs::create_dir_all(root.join("docker/registry/v2/repositories")).unwrap();
    let before = full_snapshot(&root);
    let o = h.regclean(&["--policy", policy.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("regclean supervise"), "{}", text(&o));
    assert_same(
        &before,
        &full_snapshot(&root),
        "refused for lack of activity",
    );

    let _sup = supervise(&h);
    let img = |s: &str| oci_image(&[s.as_bytes()]);
    h.push(&img("pulled"), "app:old-pulled");
    h.push(&img("unpulled"), "app:old-unpulled");
    h.push(&img("newest"), "app:new");
    pushed(&root, "app", "old-pulled", 100);
    pushed(&root, "app", "old-unpulled", 90);
    // Two untagged manifests: one still pulled by digest (a pinned deployment), one not.
    let pinned = img("pinned deployment");
    let stale = img("stale untagged");
    for (i, m) in [&pinned, &stale].iter().enumerate() {
        let t = format!("tmp{i}");
        h.push(m, &format!("app:{t}"));
        std::fs::remove_dir_all(repo_path(&root, &format!("app/_manifests/tags/{t}"))).unwrap();
    }
    // A deployment pinned by digest pulls its manifest by digest (a plain GET: what kubelet
    // does first).
    h.assert_pull(&["app:old-pulled"]);
    let by_digest = format!("/v2/app/manifests/{}", pinned.digest);
    assert_eq!(h.get(&by_digest).unwrap().0, 200);
    // The registry notifies asynchronously: wait for both pulls to be recorded.
    let t = Instant::now();
    loop {
        let a = regclean::activity::load(&root).unwrap();
        let d = regclean::digest::Digest::parse(pinned.digest.as_bytes()).unwrap();
        if a.as_ref().is_some_and(|a| {
            a.tag("app", "old-pulled", None).is_some() && a.digest("app", &d).is_some()
        }) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "pulls not recorded: {}",
            log_of(&h)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let o = h.regclean(&["--policy", policy.to_str().unwrap(), "--dry-run"]);
    assert!(
        text(&o).contains("keep tag old-pulled [policy 1: pulled within 30days]"),
        "{}",
        text(&o)
    );
    let o = h.regclean(&["--policy", policy.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}\n{}", text(&o), log_of(&h));
    assert_eq!(tags_of(&root, "app"), ["new", "old-pulled"]);
    h.assert_pull(&["app:new", "app:old-pulled"]);
    assert_eq!(
        h.get(&by_digest).unwrap().0,
        200,
        "the pinned deployment stays"
    );
    h.assert_gone(&["app:old-unpulled"]);
    let (status, _) = h
        .get(&format!("/v2/app/manifests/{}", stale.digest))
        .unwrap();
    assert_eq!(status, 404, "the untagged manifest nobody pulls is pruned");
    assert!(!blob_exists(&root, &sha(b"stale untagged")));
    assert!(
        posts.load(Ordering::SeqCst) > 0,
        "the user's own endpoint still gets events"
    );
}

/// TLS is the registry's own (`http.tls`): the supervisor relays bytes and never terminates
/// it. Pushes, pulls and an online cycle work through it over HTTPS with the registry's
/// certificate.
#[test]
fn tls_passes_through_the_supervisor_untouched() {
    if !e2e_available() {
        return;
    }
    let (_t, _root, h) = fresh();
    let dir = h.tmp.path().to_path_buf();
    let o = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .output()
        .expect("openssl");
    assert!(o.status.success(), "{}", text(&o));
    let mut cfg = std::fs::read_to_string(&h.config).unwrap();
    cfg.push_str(&format!(
        "  tls:\n    certificate: {}\n    key: {}\n",
        dir.join("cert.pem").display(),
        dir.join("key.pem").display()
    ));
    std::fs::write(&h.config, cfg).unwrap();
    let log = std::fs::File::create(dir.join("supervisor.log")).unwrap();
    let _sup = Sup(regclean()
        .args([
            "supervise",
            "--drain",
            "5s",
            "--",
            "docker-registry",
            "serve",
        ])
        .arg(&h.config)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap());
    // Served over TLS only: the first successful push proves the handshake went through.
    let img = oci_image(&[b"tls base", b"tls v1"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = Command::new("skopeo")
            .args(["copy", "--all", "--dest-tls-verify=false", "-q"])
            .arg(format!("dir:{}", img.dir.display()))
            .arg(format!("docker://127.0.0.1:{}/app:v1", h.port))
            .output()
            .unwrap();
        if o.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no push over TLS: {}\n{}",
            text(&o),
            log_of(&h)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let (status, body) = h.get("/v2/").unwrap_or((0, String::new()));
    assert_ne!(status, 200, "plain HTTP must not be served: {body}");
    h.push(&oci_image(&[b"tls base", b"tls v2"]), "app:v2");
    let o = h.regclean(&["--json", "app:v1"]);
    assert_eq!(o.status.code(), Some(0), "{}\n{}", text(&o), log_of(&h));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["supervisor"]["exit_code"], 0, "the online cycle ran: {j}");
    assert!(
        j["supervisor"]["report"]["gc"]["freed_bytes"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "the cycle freed app:v1's blobs: {j}"
    );
    h.assert_pull(&["app:v2"]);
    assert!(h.pull("app:v1").is_err(), "app:v1 was removed");
}
