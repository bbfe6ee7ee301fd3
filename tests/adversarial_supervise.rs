//! Adversarial review of `regclean supervise` (round 13).

mod common;
use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn setup() -> (tempfile::TempDir, Registry) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let port = free_port();
    let mut h = Registry::external(port, &root);
    h.config = write_config(h.tmp.path(), &root, &format!("127.0.0.1:{port}"));
    (tmp, h)
}

/// `regclean supervise --drain DRAIN -- CMD... CONFIG`, with `env`, an optional soft
/// RLIMIT_NOFILE; waits for /v2/ through the proxy.
fn sup_cmd(
    h: &Registry,
    drain: &str,
    cmd: &[&str],
    env: &[(&str, &str)],
    nofile: Option<u64>,
) -> Sup {
    let log = std::fs::File::create(h.tmp.path().join("supervisor.log")).unwrap();
    let mut c = regclean();
    c.envs(env.iter().copied())
        .arg("supervise")
        .arg("--drain")
        .arg(drain)
        .arg("--")
        .args(cmd)
        .arg(&h.config)
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    if let Some(n) = nofile {
        unsafe {
            c.pre_exec(move || {
                let (_, hard) =
                    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                        .unwrap();
                nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, n, hard)
                    .map_err(std::io::Error::from)
            });
        }
    }
    serving(h, c.spawn().unwrap())
}

fn sup(h: &Registry) -> Sup {
    sup_cmd(h, "5s", &["docker-registry", "serve"], &[], None)
}

fn term(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
}

fn wait_exit(c: &mut Child, secs: u64) -> Option<std::process::ExitStatus> {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(secs) {
        if let Some(s) = c.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Deterministic incompressible-ish bytes.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn children_of(pid: u32) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in rd {
            let p = t.unwrap().path().join("children");
            if let Ok(s) = std::fs::read_to_string(p) {
                out.extend(s.split_whitespace().filter_map(|x| x.parse::<i32>().ok()));
            }
        }
    }
    out
}

fn alive(pid: i32) -> bool {
    // A zombie counts as dead.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// Defect 1. A pull in flight when the supervisor gets SIGTERM: the registry drains it
/// (finishes writing the response), exits, and the supervisor exits at once — with the last
/// megabytes of the response still in its proxy buffers. The client gets a truncated blob.
#[test]
fn sigterm_cut_a_pull_in_flight_short() {
    if !e2e_available() {
        return;
    }
    let (_t, h) = setup();
    let mut s = sup_cmd(&h, "60s", &["docker-registry", "serve"], &[], None);
    let layer = noise(32 << 20, 1);
    let img = oci_image(&[&layer]);
    h.push(&img, "big:v1");
    let d = sha(&layer);

    let mut c = TcpStream::connect(("127.0.0.1", h.port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    // A small receive buffer: a slow client, as over a WAN.
    write!(
        c,
        "GET /v2/big/blobs/{d} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(c);
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
        if line == "\r\n" {
            break;
        }
    }
    assert_eq!(len, layer.len());
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut termed = false;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                eprintln!("read error after {} bytes: {e}", got.len());
                break;
            }
        };
        got.extend_from_slice(&buf[..n]);
        if !termed && got.len() > (1 << 20) {
            term(s.0.id());
            termed = true;
        }
        // ~8 MB/s: the registry finishes writing (into the kernel's buffers) well within
        // the 60 s drain.
        std::thread::sleep(Duration::from_millis(8));
    }
    let st = wait_exit(&mut s.0, 70);
    assert_eq!(
        got.len(),
        layer.len(),
        "truncated pull during a graceful stop (supervisor {st:?}): {}",
        log_of(&h)
    );
    assert_eq!(sha(&got), d);
}

/// Defect 2. The proxy costs 8 descriptors per connection (client, server, two clones, two
/// pipes) and keeps the soft RLIMIT_NOFILE it was given (1024 in a default Docker 25+
/// container), while the registry (Go) raises its own soft limit to the hard one. ~130 idle
/// keep-alive connections and the registry is unreachable through the supervisor.
#[test]
fn many_idle_connections_locked_out_new_clients() {
    if !e2e_available() {
        return;
    }
    let (_t, h) = setup();
    let s = sup_cmd(&h, "5s", &["docker-registry", "serve"], &[], Some(1024));
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(TcpStream::connect(("127.0.0.1", h.port)).unwrap());
    }
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let r = {
        let mut c = TcpStream::connect(("127.0.0.1", h.port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(c, "GET /v2/ HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        let _ = c.read_to_string(&mut out);
        out
    };
    // CPU the supervisor burns meanwhile (accept() failing with EMFILE in a tight loop).
    let ticks = |pid: u32| -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let f: Vec<&str> = s.rsplit(')').next().unwrap().split_whitespace().collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    };
    let a = ticks(s.0.id());
    std::thread::sleep(Duration::from_secs(1));
    let cpu = ticks(s.0.id()) - a;
    drop(idle);
    assert!(
        r.starts_with("HTTP/1.1 200") || r.starts_with("HTTP/1.0 200"),
        "with 200 idle connections open, a new client got {r:?} after {:?} (supervisor CPU {cpu} ticks/s): {}",
        t.elapsed(),
        log_of(&h)
    );
}

/// Defect 3. When the fresh writable child cannot start at the end of a cycle, the
/// supervisor goes on serving read-only for good: every later push fails, nothing restarts it.
#[test]
fn a_failed_writable_restart_left_the_registry_read_only_for_good() {
    if !e2e_available() {
        return;
    }
    let (_t, h) = setup();
    let marker = h.tmp.path().join("fail-writable");
    let script = fake_registry(
        h.tmp.path(),
        &format!(
            "if [ -z \"$REGISTRY_STORAGE_MAINTENANCE_READONLY\" ] && [ -e {} ]; then echo 'writable start fails' >&2; exit 3; fi\nexec docker-registry \"$@\"",
            marker.display()
        ),
    );
    let mut s = sup_cmd(&h, "5s", &[script.to_str().unwrap(), "serve"], &[], None);
    h.push(&oci_image(&[b"a1"]), "a:v1");
    h.push(&oci_image(&[b"b1"]), "b:v1");
    std::fs::write(&marker, "").unwrap();
    let o = h.regclean(&["--json", "a:v1"]);
    assert_ne!(
        o.status.code(),
        Some(0),
        "the run reports the failure: {}",
        text(&o)
    );
    // A transient failure: the next start would work.
    std::fs::remove_file(&marker).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let exited = s.0.try_wait().unwrap();
    let c1 = oci_image(&[b"c1"]);
    let push = Command::new("skopeo")
        .args([
            "copy",
            "--all",
            "--dest-tls-verify=false",
            "-q",
            "--retry-times",
            "0",
        ])
        .arg(format!("dir:{}", c1.dir.display()))
        .arg(format!("docker://127.0.0.1:{}/c:v1", h.port))
        .output()
        .unwrap();
    assert!(
        exited.is_some() || push.status.success(),
        "the supervisor still runs, and serves read-only: {}\n{}",
        text(&push),
        log_of(&h)
    );
}

/// Defect 4. Pull times are read from the notification's timestamp cut to 19 characters, so
/// its UTC offset is dropped: a registry in TZ=Asia/Tokyo records every pull 9 hours in the
/// future (and America/* ones hours in the past).
#[test]
fn pull_times_ignored_the_timestamp_offset() {
    if !e2e_available() {
        return;
    }
    let (_t, h) = setup();
    let _s = sup_cmd(
        &h,
        "5s",
        &["docker-registry", "serve"],
        &[("TZ", "Asia/Tokyo")],
        None,
    );
    h.push(&oci_image(&[b"tz layer"]), "tz:v1");
    h.assert_pull(&["tz:v1"]);
    let t = Instant::now();
    let rec = loop {
        let conn = rusqlite_like(&h.root);
        if let Some(v) = conn {
            break v;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "{}", log_of(&h));
        std::thread::sleep(Duration::from_millis(200));
    };
    let now = std::time::SystemTime::now();
    let skew = match rec.duration_since(now) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    };
    assert!(skew.abs() < 120, "the pull is recorded {skew} s from now");
}

/// The recorded pull time of tag tz:v1, if any.
fn rusqlite_like(root: &Path) -> Option<std::time::SystemTime> {
    let a = regclean::activity::load(root).ok()??;
    a.tag("tz", "v1", None)
}

#[allow(dead_code)]
fn unused(_: Stdio) {}

/// Starts an upload and sends part of a PATCH body, holding the request open (active on the
/// child that serves it). Returns the open stream and the rest of the body to send.
fn hold_upload(h: &Registry, repo: &str, total: usize) -> (TcpStream, usize) {
    let mut c = TcpStream::connect(("127.0.0.1", h.port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        c,
        "POST /v2/{repo}/blobs/uploads/ HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    let mut loc = String::new();
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    assert!(status.contains("202"), "{status}");
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        if let Some(v) = line.strip_prefix("Location: ") {
            loc = v.trim().to_string();
        }
        if line == "\r\n" {
            break;
        }
    }
    let path = loc.split_once("127.0.0.1").map_or(loc.clone(), |(_, p)| {
        p.split_once('/').map(|(_, p)| format!("/{p}")).unwrap()
    });
    write!(c, "PATCH {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: {total}\r\n\r\n").unwrap();
    c.write_all(&vec![7u8; 1000]).unwrap();
    (c, total - 1000)
}

/// SIGTERM while a cycle drains the old writable child: the supervisor exited as soon as the
/// read-only child was gone, leaving the draining writable child behind (orphaned here; killed
/// outright when the supervisor is PID 1) and cutting its request in flight. Now it waits for
/// every child: the upload finishing during the stop gets its answer.
#[test]
fn sigterm_during_a_cycle_left_a_draining_child_behind() {
    if !e2e_available() {
        return;
    }
    let (_t, h) = setup();
    let mut s = sup_cmd(&h, "30s", &["docker-registry", "serve"], &[], None);
    h.push(&oci_image(&[b"x1"]), "x:v1");
    let first = children_of(s.0.id());
    assert_eq!(first.len(), 1);
    let (mut up, rest) = hold_upload(&h, "hold", 1_001_000);
    let root = h.root.clone();
    let config = h.config.clone();
    let run = std::thread::spawn(move || {
        regclean()
            .arg("--root")
            .arg(&root)
            .arg("--config")
            .arg(&config)
            .args(["--json", "x:v1"])
            .output()
            .unwrap()
    });
    // The read-only child starts; the writable one is told to stop and drains our PATCH.
    let t = Instant::now();
    while children_of(s.0.id()).len() < 2 {
        assert!(t.elapsed() < Duration::from_secs(20), "{}", log_of(&h));
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs(1));
    term(s.0.id());
    // The client finishes its PATCH while the supervisor stops: the draining child must still
    // be there to answer it.
    std::thread::sleep(Duration::from_millis(500));
    let sent = up.write_all(&vec![7u8; rest]);
    let mut resp = String::new();
    let _ = BufReader::new(&up).read_line(&mut resp);
    let st = wait_exit(&mut s.0, 40).expect("the supervisor stops");
    let w_alive = alive(first[0]);
    let o = run.join().unwrap();
    // Clean up an orphan, if any.
    if w_alive {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(first[0]),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        !w_alive && sent.is_ok() && resp.contains("202"),
        "supervisor exited {st:?} while the writable child (alive after: {w_alive}) still drained; the upload in flight got {sent:?} / {resp:?}\n{}",
        log_of(&h)
    );
}

/// SIGKILL of the supervisor: its registries go too.
#[test]
fn sigkill_of_the_supervisor_takes_the_children() {
    if !e2e_available() {
        return;
    }
    let (_t, h) = setup();
    let mut s = sup(&h);
    let kids = children_of(s.0.id());
    assert_eq!(kids.len(), 1);
    s.0.kill().unwrap();
    s.0.wait().unwrap();
    let t = Instant::now();
    while kids.iter().any(|k| alive(*k)) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "registry child survives"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Two regclean runs at once: both get their cycle, both exit 0, both images are freed, and
/// the survivors pull.
#[test]
fn concurrent_triggers_both_collect() {
    if !e2e_available() {
        return;
    }
    let (_t, h) = setup();
    let _s = sup(&h);
    for r in ["a", "b", "c"] {
        h.push(
            &oci_image(&[format!("{r} own layer").as_bytes()]),
            &format!("{r}:v1"),
        );
    }
    let run = |target: &'static str| {
        let (root, config) = (h.root.clone(), h.config.clone());
        std::thread::spawn(move || {
            regclean()
                .arg("--root")
                .arg(&root)
                .arg("--config")
                .arg(&config)
                .args(["--json", "--wait", target])
                .output()
                .unwrap()
        })
    };
    let (ra, rb) = (run("a:v1"), run("b:v1"));
    let (oa, ob) = (ra.join().unwrap(), rb.join().unwrap());
    assert_eq!(oa.status.code(), Some(0), "{}\n{}", text(&oa), log_of(&h));
    assert_eq!(ob.status.code(), Some(0), "{}\n{}", text(&ob), log_of(&h));
    let gone = |s: &str| {
        let hex = &sha(s.as_bytes())[7..];
        !h.root
            .join(format!(
                "docker/registry/v2/blobs/sha256/{}/{hex}/data",
                &hex[..2]
            ))
            .exists()
    };
    assert!(gone("a own layer") && gone("b own layer"));
    h.assert_pull(&["c:v1"]);
    let c = h.regclean(&["--check"]);
    assert_eq!(c.status.code(), Some(0), "{}", text(&c));
}

/// Pushes going on through a cycle: every push skopeo reports as done pulls fully afterwards,
/// the store checks clean, and a failed push succeeds when repeated.
#[test]
fn pushes_across_a_cycle_leave_a_consistent_store() {
    if !e2e_available() {
        return;
    }
    let (_t, h) = setup();
    let _s = sup(&h);
    h.push(&oci_image(&[b"victim layer"]), "victim:v1");
    let port = h.port;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let st = stop.clone();
    let pusher = std::thread::spawn(move || {
        let mut res = Vec::new();
        let mut i = 0u64;
        while !st.load(std::sync::atomic::Ordering::SeqCst) || i < 4 {
            let layer = noise(3 << 20, 100 + i);
            let img = oci_image(&[&layer, format!("small {i}").as_bytes()]);
            let o = Command::new("skopeo")
                .args([
                    "copy",
                    "--all",
                    "--preserve-digests",
                    "--dest-tls-verify=false",
                    "-q",
                    "--retry-times",
                    "0",
                ])
                .arg(format!("dir:{}", img.dir.display()))
                .arg(format!("docker://127.0.0.1:{port}/p:t{i}"))
                .output()
                .unwrap();
            res.push((
                i,
                o.status.success(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
                img,
            ));
            i += 1;
        }
        res
    });
    std::thread::sleep(Duration::from_millis(700));
    let o = h.regclean(&["--json", "victim:v1"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let res = pusher.join().unwrap();
    let failed: Vec<_> = res.iter().filter(|r| !r.1).collect();
    eprintln!(
        "{} pushes, {} failed: {:?}",
        res.len(),
        failed.len(),
        failed.iter().map(|r| &r.2).collect::<Vec<_>>()
    );
    for (i, ok, _, _) in &res {
        if *ok {
            h.assert_pull(&[&format!("p:t{i}")]);
        }
    }
    let c = h.regclean(&["--check"]);
    assert_eq!(c.status.code(), Some(0), "{}", text(&c));
    for (i, ok, _, img) in &res {
        if !*ok {
            h.push(img, &format!("p:t{i}"));
            h.assert_pull(&[&format!("p:t{i}")]);
        }
    }
}

/// A client that connects to the control socket and says nothing blocks every later cycle:
/// the socket is served one request at a time with no read timeout.
#[test]
fn an_idle_control_client_blocked_cycles_forever() {
    if !e2e_available() {
        return;
    }
    let (_t, h) = setup();
    let _s = sup(&h);
    h.push(&oci_image(&[b"idle ctl layer"]), "i:v1");
    let _idle =
        std::os::unix::net::UnixStream::connect(h.root.join(".regclean/supervise.sock")).unwrap();
    let mut run = regclean()
        .arg("--root")
        .arg(&h.root)
        .arg("--config")
        .arg(&h.config)
        .args(["--json", "i:v1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let st = wait_exit(&mut run, 90);
    if st.is_none() {
        let _ = run.kill();
        let _ = run.wait();
    }
    assert!(st.is_some(), "the run still waits for its cycle after 90 s");
}
