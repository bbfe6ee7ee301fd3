//! The image, tested in real containers (podman from Debian, no image pulled): a local
//! stand-in for registry:2 built FROM scratch out of Debian's docker-registry and
//! busybox-static, the project's real Dockerfile final stage built on top of it with the
//! static binary from the host, then `podman exec regclean`, the entrypoint hook at restart,
//! pulls with skopeo, PID 1 and `podman stop`. The compile stage (FROM rust) is the only part
//! not built here: no base image can be pulled.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

const REGISTRY_CONFIG: &str = "version: 0.1
log:
  fields:
    service: registry
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: /var/lib/registry
http:
  addr: :5000
  headers:
    X-Content-Type-Options: [nosniff]
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
";

/// registry:2's /entrypoint.sh.
const ENTRYPOINT: &str = r#"#!/bin/sh
set -e
case "$1" in
    *.yaml|*.yml) set -- registry serve "$@" ;;
    serve|garbage-collect|help|-*) set -- registry "$@" ;;
esac
exec "$@"
"#;

/// The stand-in's Containerfile; `CONFIG` is where the base keeps its config.
const STANDIN: &str = r#"FROM scratch
COPY rootfs/ /
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
VOLUME ["/var/lib/registry"]
EXPOSE 5000
ENTRYPOINT ["/entrypoint.sh"]
CMD ["CONFIG"]
"#;

/// registry:2 keeps its config here; registry:3 at /etc/distribution/config.yml.
const V2_CONFIG: &str = "/etc/docker/registry/config.yml";
const V3_CONFIG: &str = "/etc/distribution/config.yml";

fn podman_available() -> bool {
    let ok = Command::new("sh")
        .arg("-c")
        .arg("command -v podman && command -v runc && test -x /bin/busybox")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if ok {
        return e2e_available();
    }
    if std::env::var("REGCLEAN_ALLOW_SKIP_E2E").as_deref() == Ok("1") {
        eprintln!("skipping: podman, runc or busybox-static missing and REGCLEAN_ALLOW_SKIP_E2E=1");
        return false;
    }
    panic!(
        "podman, runc and busybox-static are required (apt-get install podman runc busybox-static)"
    );
}

/// podman with all state in one temp directory and the flags this host needs.
struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    fn new() -> Podman {
        Podman {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.arg("--root").arg(self.dir.path().join("root"));
        c.arg("--runroot").arg(self.dir.path().join("runroot"));
        c.args([
            "--runtime",
            "runc",
            "--storage-driver",
            "vfs",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
        ]);
        c.env("TMPDIR", self.dir.path());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(o.status.success(), "podman {args:?}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

/// The static regclean binary: REGCLEAN_STATIC_BIN, else built here (own target dir, so no
/// lock is shared with the running `cargo test`).
fn static_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("REGCLEAN_STATIC_BIN") {
            return PathBuf::from(p);
        }
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let o = Command::new(env!("CARGO"))
            .current_dir(manifest)
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .args([
                "build",
                "--release",
                "--target",
                "x86_64-unknown-linux-gnu",
                "--bin",
                "regclean",
                "--target-dir",
            ])
            .arg(manifest.join("target/static"))
            .output()
            .unwrap();
        assert!(o.status.success(), "static build: {}", text(&o));
        manifest.join("target/static/x86_64-unknown-linux-gnu/release/regclean")
    })
    .clone()
}

fn copy_with_libs(bin: &Path, rootfs: &Path, as_path: &str) {
    let dest = rootfs.join(as_path.trim_start_matches('/'));
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::copy(bin, &dest).unwrap();
    let ldd = Command::new("ldd").arg(bin).output().unwrap();
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let lib = line.split_whitespace().find(|w| w.starts_with('/'));
        if let Some(lib) = lib {
            let d = rootfs.join(lib.trim_start_matches('/'));
            std::fs::create_dir_all(d.parent().unwrap()).unwrap();
            std::fs::copy(lib, d).unwrap();
        }
    }
}

/// Builds the registry stand-in (config at `config`) and the project's image on top; returns
/// the image name.
fn build_images(p: &Podman, config: &str) -> String {
    let ctx = p.dir.path().join("standin");
    let rootfs = ctx.join("rootfs");
    copy_with_libs(
        Path::new("/usr/bin/docker-registry"),
        &rootfs,
        "/bin/registry",
    );
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    let cfg = rootfs.join(config.trim_start_matches('/'));
    std::fs::create_dir_all(cfg.parent().unwrap()).unwrap();
    std::fs::write(cfg, REGISTRY_CONFIG).unwrap();
    std::fs::write(rootfs.join("entrypoint.sh"), ENTRYPOINT).unwrap();
    let mut perm = std::fs::metadata(rootfs.join("entrypoint.sh"))
        .unwrap()
        .permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(rootfs.join("entrypoint.sh"), perm).unwrap();
    std::fs::write(ctx.join("Containerfile"), STANDIN.replace("CONFIG", config)).unwrap();
    p.ok(&[
        "build",
        "-q",
        "-t",
        "localhost/registry-standin:2",
        ctx.to_str().unwrap(),
    ]);

    // The project's Dockerfile, fed the host-built static binary.
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ctx = p.dir.path().join("project");
    let bin_dir = ctx.join("target/x86_64-unknown-linux-gnu/release");
    std::fs::create_dir_all(&bin_dir).unwrap();
    std::fs::copy(static_binary(), bin_dir.join("regclean")).unwrap();
    std::fs::copy(manifest.join("Dockerfile"), ctx.join("Dockerfile")).unwrap();
    std::fs::create_dir_all(ctx.join("docker")).unwrap();
    std::fs::copy(
        manifest.join("docker/regclean-hook"),
        ctx.join("docker/regclean-hook"),
    )
    .unwrap();
    p.ok(&[
        "build",
        "-q",
        "--build-arg",
        "REGISTRY_IMAGE=localhost/registry-standin:2",
        "--build-arg",
        "REGCLEAN_BINARY=host",
        "-t",
        "localhost/registry-regclean:test",
        ctx.to_str().unwrap(),
    ]);
    "localhost/registry-regclean:test".to_string()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A registry for pushing and pulling from the host: the container listens on `port`.
fn client(port: u16, data: &Path) -> Registry {
    Registry::external(port, data)
}

fn wait_ready(r: &Registry) {
    for _ in 0..200 {
        if let Ok((200, _)) = r.get("/v2/") {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("registry in the container did not answer");
}

#[test]
fn static_binary_is_statically_linked() {
    if !podman_available() {
        return;
    }
    let o = Command::new("file").arg(static_binary()).output().unwrap();
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(
        s.contains("statically linked") || s.contains("static-pie linked"),
        "{s}"
    );
}

#[test]
fn exec_removes_live_hook_collects_at_restart_and_registry_stays_pid_1() {
    if !podman_available() {
        return;
    }
    for config in [V2_CONFIG, V3_CONFIG] {
        hook_and_exec(config);
    }
}

fn hook_and_exec(config: &str) {
    let p = Podman::new();
    let image = build_images(&p, config);
    let data = p.dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let port = free_port();
    // The policy is in the environment from the start: the first start finds a fresh volume.
    let o = start(
        &p,
        "reg",
        &image,
        port,
        &data,
        &["REGCLEAN_GC=true", "REGCLEAN_SUPERVISE=false"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let r = client(port, &data);
    wait_ready(&r);
    let logs = p.ok(&["logs", "reg"]) + &String::from_utf8_lossy(&p.run(&["logs", "reg"]).stderr);
    assert!(
        logs.contains("holds no registry store yet"),
        "fresh volume start: {logs}"
    );

    let base: &[u8] = b"container base layer";
    let old = oci_image(&[base, b"old layer"]);
    r.push(&old, "app:old");
    r.push(&oci_image(&[base, b"new layer"]), "app:new");
    r.push(&multi_arch(false, base, "ctr"), "multi:v1");

    // docker exec registry regclean app:old: removed live, GC deferred with the documented message.
    let o = p.run(&["exec", "reg", "regclean", "app:old"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("removed tag old")
            && out.contains("GC: deferred")
            && out.contains("restart the container"),
        "{out}"
    );
    r.assert_gone(&["app:old"]);
    let blob = |d: &str| {
        data.join(format!(
            "docker/registry/v2/blobs/sha256/{}/{}/data",
            &d[7..9],
            &d[7..]
        ))
    };
    assert!(
        blob(&old.digest).exists(),
        "nothing collected while serving"
    );
    let o = p.run(&["exec", "reg", "regclean", "--gc-only"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("writable registry serves this store"),
        "{}",
        text(&o)
    );

    // Restart: the hook prunes and collects before the registry serves.
    p.ok(&["restart", "-t", "10", "reg"]);
    wait_ready(&r);
    let logs = String::from_utf8_lossy(&p.run(&["logs", "reg"]).stderr).into_owned();
    assert!(logs.contains("clean done"), "{logs}");
    assert!(!blob(&old.digest).exists(), "collected at restart");
    assert!(!blob(&sha(b"old layer")).exists());
    r.assert_pull(&["app:new", "multi:v1"]);
    r.assert_gone(&["app:old"]);

    if config == V2_CONFIG {
        maintenance_window(&p, &r, &data);
    }

    // The registry is PID 1 after the hook, and stops cleanly.
    let ps = p.ok(&["exec", "reg", "ps"]);
    let pid1 = ps
        .lines()
        .find(|l| l.split_whitespace().next() == Some("1"))
        .unwrap_or("");
    assert!(pid1.contains(&format!("registry serve {config}")), "{ps}");
    let o = p.run(&["stop", "-t", "20", "reg"]);
    assert!(o.status.success(), "{}", text(&o));
    let code = p.ok(&["inspect", "reg", "--format", "{{.State.ExitCode}}"]);
    assert!(
        ["0", "2"].contains(&code.trim()),
        "registry exit code after SIGTERM: {code}"
    );
    let _ = p.run(&["rm", "-f", "reg"]);
}

#[test]
fn the_image_runs_the_supervisor_and_exec_regclean_frees_the_disk_online() {
    if !podman_available() {
        return;
    }
    let p = Podman::new();
    let image = build_images(&p, V2_CONFIG);
    let data = p.dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let port = free_port();
    let o = start(&p, "sup", &image, port, &data, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let r = client(port, &data);
    wait_ready(&r);
    let base: &[u8] = b"supervised container base";
    let old = oci_image(&[base, b"supervised old layer"]);
    r.push(&old, "app:old");
    r.push(&oci_image(&[base, b"supervised new layer"]), "app:new");
    let blob = |d: &str| {
        data.join(format!(
            "docker/registry/v2/blobs/sha256/{}/{}/data",
            &d[7..9],
            &d[7..]
        ))
    };
    assert!(blob(&sha(b"supervised old layer")).exists());

    // docker exec registry regclean app:old: removed, and collected online.
    let o = p.run(&["exec", "sup", "regclean", "app:old"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("removed tag old") && out.contains("Supervisor: collected online"),
        "{out}"
    );
    assert!(
        !blob(&sha(b"supervised old layer")).exists(),
        "freed online"
    );
    assert!(!blob(&old.digest).exists());
    r.assert_pull(&["app:new"]);
    r.assert_gone(&["app:old"]);
    // A re-push pulls again with no restart.
    r.push(&old, "app:old");
    r.assert_pull(&["app:old", "app:new"]);

    // PID 1 is the supervisor; the registry is its child; podman stop ends both, exit 0.
    let ps = p.ok(&["exec", "sup", "ps"]);
    let pid1 = ps
        .lines()
        .find(|l| l.split_whitespace().next() == Some("1"))
        .unwrap_or("");
    assert!(pid1.contains("regclean supervise"), "{ps}");
    assert!(ps.contains(&format!("registry serve {V2_CONFIG}")), "{ps}");
    let o = p.run(&["stop", "-t", "20", "sup"]);
    assert!(o.status.success(), "{}", text(&o));
    let code = p.ok(&["inspect", "sup", "--format", "{{.State.ExitCode}}"]);
    assert_eq!(code.trim(), "0", "exit code after SIGTERM");
    let _ = p.run(&["rm", "-f", "sup"]);
}

#[test]
fn failing_clean_still_starts_the_registry_unless_strict() {
    if !podman_available() {
        return;
    }
    let p = Podman::new();
    let image = build_images(&p, V2_CONFIG);
    let data = p.dir.path().join("data");
    std::fs::create_dir_all(data.join("docker/registry/v2/repositories")).unwrap();
    let port = free_port();
    // An invalid target makes the clean fail (exit 2).
    let run = |name: &str, strict: &str| {
        start(
            &p,
            name,
            &image,
            port,
            &data,
            &["REGCLEAN_TARGETS=Bad/Name", strict],
        )
    };
    let o = run("loose", "REGCLEAN_STRICT=false");
    assert!(o.status.success(), "{}", text(&o));
    let r = client(port, &data);
    wait_ready(&r);
    let logs = String::from_utf8_lossy(&p.run(&["logs", "loose"]).stderr).into_owned();
    assert!(
        logs.contains("CLEAN FAILED with exit code 2") && logs.contains("starts anyway"),
        "{logs}"
    );
    p.ok(&["rm", "-f", "-t", "5", "loose"]);

    let o = run("strict", "REGCLEAN_STRICT=true");
    assert!(o.status.success(), "{}", text(&o));
    let mut code = String::new();
    for _ in 0..100 {
        code = p.ok(&[
            "inspect",
            "strict",
            "--format",
            "{{.State.Status}} {{.State.ExitCode}}",
        ]);
        if code.starts_with("exited") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(code.trim(), "exited 2", "strict mode stops the start");
    let _ = p.run(&["rm", "-f", "strict"]);
}

/// docker/maintenance.sh, with DOCKER pointing at this test's podman.
fn maintenance_window(p: &Podman, r: &Registry, data: &Path) {
    let wrapper = p.dir.path().join("docker-wrapper");
    let c = p.cmd();
    let args: Vec<String> = c
        .get_args()
        .map(|a| format!("'{}'", a.to_string_lossy()))
        .collect();
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\nexec podman {} \"$@\"\n", args.join(" ")),
    )
    .unwrap();
    let mut perm = std::fs::metadata(&wrapper).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(&wrapper, perm).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/maintenance.sh");
    let pr = oci_image(&[b"pull request layer"]);
    r.push(&pr, "app:pr-1");
    let o = Command::new("sh")
        .arg(&script)
        .args(["reg", "app:pr-*"])
        .env("DOCKER", &wrapper)
        .env("TMPDIR", p.dir.path())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", text(&o));
    for s in [
        "1/4 dry run",
        "would remove tag pr-1",
        "2/4 removal",
        "3/4 restart",
        "4/4 integrity check",
        "Check: clean",
        "maintenance: done",
    ] {
        assert!(out.contains(s), "'{s}' missing: {}", text(&o));
    }
    wait_ready(r);
    r.assert_gone(&["app:pr-1"]);
    assert!(
        !data
            .join(format!(
                "docker/registry/v2/blobs/sha256/{}/{}",
                &pr.digest[7..9],
                &pr.digest[7..]
            ))
            .exists(),
        "collected by the restart"
    );
    r.assert_pull(&["app:new", "multi:v1"]);
    // A failing step stops the window and names it.
    let o = Command::new("sh")
        .arg(&script)
        .args(["reg", "Bad/Name"])
        .env("DOCKER", &wrapper)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("FAILED at step 'dry run' (exit 2). Nothing was changed."),
        "{}",
        text(&o)
    );
    assert!(!String::from_utf8_lossy(&o.stdout).contains("2/4"));
}

/// `podman run -d` of `image` as `name`, serving on 127.0.0.1:`port` (host network) with the
/// store in `data` and the given environment.
fn start(p: &Podman, name: &str, image: &str, port: u16, data: &Path, env: &[&str]) -> Output {
    let nofile = format!("nofile={0}:{0}", hard_nofile().min(20000));
    let addr = format!("REGISTRY_HTTP_ADDR=127.0.0.1:{port}");
    let vol = format!("{}:/var/lib/registry", data.display());
    let mut args = vec![
        "run",
        "-d",
        "--name",
        name,
        "--network",
        "host",
        "--ulimit",
        &nofile,
        "--ulimit",
        "nproc=4096:4096",
        "-e",
        &addr,
        "-v",
        &vol,
    ];
    for e in env {
        args.extend(["-e", e]);
    }
    args.push(image);
    p.run(&args)
}

fn hard_nofile() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(_, h)| h)
        .unwrap_or(4096)
}
