//! `regclean-genstore`: writes a faithful synthetic registry store for tests and benchmarks.
//!
//! Faithful means what the registry itself would have written: real sha256 digests of every
//! blob's content, 71-byte link files, the two-character blob fan-out, revision links for every
//! manifest (index children included), `_layers` links for every config and layer, tag history
//! under `index/`, tag push times (mtime of `current/link`) spread over months, nested
//! repositories (`team3/app1` beside `team3/app1/api`), multi-arch indexes, layers shared across
//! repositories, and untagged history (overwritten tags). The same seed gives the same
//! digests; push times are relative to the moment of generation.
//!
//! Usage: regclean-genstore --out DIR [--size small|medium|large] [--repos N] [--tags N]
//!                          [--seed N] [--multiarch-percent P]

use rayon::prelude::*;
use sha2::{Digest as _, Sha256};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

struct Opts {
    out: PathBuf,
    repos: usize,
    tags: usize,
    seed: u64,
    multiarch_percent: u64,
}

fn usage() -> ! {
    eprintln!("usage: regclean-genstore --out DIR [--size small|medium|large] [--repos N] [--tags N] [--seed N] [--multiarch-percent P]");
    std::process::exit(2)
}

fn parse_opts() -> Opts {
    let mut o = Opts {
        out: PathBuf::new(),
        repos: 20,
        tags: 10,
        seed: 1,
        multiarch_percent: 30,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--out" => o.out = PathBuf::from(val()),
            "--size" => match val().as_str() {
                "small" => (o.repos, o.tags) = (20, 10),
                "medium" => (o.repos, o.tags) = (500, 20),
                "large" => (o.repos, o.tags) = (5000, 20),
                _ => usage(),
            },
            "--repos" => o.repos = val().parse().unwrap_or_else(|_| usage()),
            "--tags" => o.tags = val().parse().unwrap_or_else(|_| usage()),
            "--seed" => o.seed = val().parse().unwrap_or_else(|_| usage()),
            "--multiarch-percent" => {
                o.multiarch_percent = val().parse().unwrap_or_else(|_| usage())
            }
            _ => usage(),
        }
    }
    if o.out.as_os_str().is_empty() {
        usage()
    }
    o
}

/// splitmix64: a tiny deterministic generator (no dependency needed for this).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

struct Store {
    v2: PathBuf,
    files: AtomicU64,
    blob_bytes: AtomicU64,
}

#[derive(Clone)]
struct Blob {
    hex: String,
    size: usize,
}

impl Store {
    fn write(&self, path: &Path, data: &[u8]) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, data).unwrap();
        self.files.fetch_add(1, Ordering::Relaxed);
    }

    fn blob(&self, data: &[u8]) -> Blob {
        let hex = hex(&Sha256::digest(data));
        let p = self
            .v2
            .join(format!("blobs/sha256/{}/{}/data", &hex[..2], hex));
        if !p.exists() {
            self.write(&p, data);
            self.blob_bytes
                .fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        Blob {
            hex,
            size: data.len(),
        }
    }

    fn link(&self, repo: &str, rel: &str, b: &Blob) {
        let p = self
            .v2
            .join(format!("repositories/{repo}/{rel}/sha256/{}/link", b.hex));
        if !p.exists() {
            self.write(&p, format!("sha256:{}", b.hex).as_bytes());
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn desc(media: &str, b: &Blob) -> String {
    format!(
        r#"{{"mediaType":"{media}","digest":"sha256:{}","size":{}}}"#,
        b.hex, b.size
    )
}

/// One image manifest (config + one own layer + two shared layers) in `repo`.
fn image(st: &Store, rng: &mut Rng, repo: &str, pool: &[Blob], arch: &str) -> Blob {
    let config = st.blob(
        format!(
            r#"{{"architecture":"{arch}","os":"linux","created":"{}","repo":"{repo}"}}"#,
            rng.next()
        )
        .as_bytes(),
    );
    let n = 256 + rng.below(1792) as usize;
    let own = st.blob(&rng.bytes(n));
    let a = &pool[rng.below(pool.len() as u64) as usize];
    let b = &pool[rng.below(pool.len() as u64) as usize];
    let mut layers = vec![a.clone(), own];
    if a.hex != b.hex {
        layers.insert(1, b.clone());
    }
    let m = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{},"layers":[{}]}}"#,
        desc(OCI_CONFIG, &config),
        layers
            .iter()
            .map(|l| desc(OCI_LAYER, l))
            .collect::<Vec<_>>()
            .join(",")
    );
    let mb = st.blob(m.as_bytes());
    st.link(repo, "_layers", &config);
    for l in &layers {
        st.link(repo, "_layers", l);
    }
    st.link(repo, "_manifests/revisions", &mb);
    mb
}

/// A multi-arch index of two images.
fn index(st: &Store, rng: &mut Rng, repo: &str, pool: &[Blob]) -> Blob {
    let kids: Vec<String> = ["amd64", "arm64"]
        .iter()
        .map(|arch| {
            let k = image(st, rng, repo, pool, arch);
            format!(
                r#"{{"mediaType":"{OCI_MANIFEST}","digest":"sha256:{}","size":{},"platform":{{"architecture":"{arch}","os":"linux"}}}}"#,
                k.hex, k.size
            )
        })
        .collect();
    let m = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{}]}}"#,
        kids.join(",")
    );
    let mb = st.blob(m.as_bytes());
    st.link(repo, "_manifests/revisions", &mb);
    mb
}

fn repo_name(i: usize) -> String {
    // Every 7th repository gets a nested child (the parent is itself a repository).
    match i % 10 {
        0..=6 => format!("team{}/app{}", i / 10, i % 10),
        7 => format!("team{}/app{}/api", i / 10, (i - 1) % 10),
        8 => format!("svc{i}"),
        _ => format!("org{}/group/deep{i}", i / 50),
    }
}

fn main() {
    let o = parse_opts();
    let st = Store {
        v2: o.out.join("docker/registry/v2"),
        files: AtomicU64::new(0),
        blob_bytes: AtomicU64::new(0),
    };
    fs::create_dir_all(st.v2.join("repositories")).unwrap();
    let mut rng = Rng(o.seed);
    let pool_size = (o.repos * 2).clamp(16, 200);
    let pool: Vec<Blob> = (0..pool_size).map(|_| st.blob(&rng.bytes(4096))).collect();
    let now = SystemTime::now();
    let stats: Vec<(usize, usize)> = (0..o.repos)
        .into_par_iter()
        .map(|i| {
            let mut rng = Rng(o.seed.wrapping_mul(1_000_003).wrapping_add(i as u64 + 1));
            let repo = repo_name(i);
            let multi = rng.below(100) < o.multiarch_percent;
            let mut manifests = 0;
            for t in 0..o.tags {
                let tag = match t {
                    0 => "latest".to_string(),
                    t if t % 4 == 1 => format!("v1.{t}"),
                    t => format!("build-{t}"),
                };
                let versions = 1 + rng.below(4) as usize; // older versions are untagged history
                let mut last = None;
                for _ in 0..versions {
                    let m = if multi {
                        index(&st, &mut rng, &repo, &pool)
                    } else {
                        image(&st, &mut rng, &repo, &pool, "amd64")
                    };
                    manifests += if multi { 3 } else { 1 };
                    st.link(&repo, &format!("_manifests/tags/{tag}/index"), &m);
                    last = Some(m);
                }
                let cur = st.v2.join(format!(
                    "repositories/{repo}/_manifests/tags/{tag}/current/link"
                ));
                st.write(&cur, format!("sha256:{}", last.unwrap().hex).as_bytes());
                let age = Duration::from_secs(3600 * (1 + rng.below(24 * 180)));
                fs::File::options()
                    .write(true)
                    .open(&cur)
                    .unwrap()
                    .set_modified(now - age)
                    .unwrap();
            }
            (o.tags, manifests)
        })
        .collect();
    let tags: usize = stats.iter().map(|s| s.0).sum();
    let manifests: usize = stats.iter().map(|s| s.1).sum();
    println!(
        "{{\"repos\":{},\"tags\":{tags},\"manifests\":{manifests},\"files\":{},\"blob_bytes\":{}}}",
        o.repos,
        st.files.load(Ordering::Relaxed),
        st.blob_bytes.load(Ordering::Relaxed)
    );
}
