//! Manifests: what each one references, recognised as the registry recognises them (by
//! `mediaType`, or by shape when an OCI manifest omits it), and a store-wide cache of parsed
//! manifests read in parallel.

use crate::digest::Digest;
use crate::fsx::DirFd;
use rayon::prelude::*;
use serde::Deserialize;
use std::collections::HashMap;

/// What kind of manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// OCI image manifest or Docker schema 2 manifest: config and layers.
    Image,
    /// OCI index or Docker manifest list: child manifests.
    Index,
    /// Legacy schema 1: `fsLayers`.
    Schema1,
}

/// A parsed manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Its kind.
    pub kind: Kind,
    /// Blobs it references: config and layers (image, schema 1), or child manifests (index).
    pub refs: Vec<Digest>,
    /// OCI 1.1 `subject`: the manifest this one describes (signature, SBOM, attestation).
    pub subject: Option<Digest>,
}

impl Manifest {
    /// Child manifests (for an index), else nothing.
    pub fn children(&self) -> &[Digest] {
        if self.kind == Kind::Index {
            &self.refs
        } else {
            &[]
        }
    }
}

/// Why a manifest blob could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// No blob data for it.
    MissingBlob,
    /// The blob is not a manifest the registry can parse (the message says why).
    Unparsable(String),
}

#[derive(Deserialize)]
struct Desc {
    digest: String,
}

#[derive(Deserialize)]
struct FsLayer {
    #[serde(rename = "blobSum")]
    blob_sum: String,
}

#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "schemaVersion")]
    schema_version: Option<u32>,
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    config: Option<Desc>,
    layers: Option<Vec<Desc>>,
    manifests: Option<Vec<Desc>>,
    subject: Option<Desc>,
    #[serde(rename = "fsLayers")]
    fs_layers: Option<Vec<FsLayer>>,
}

/// The manifest media types the registry understands.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

fn digest(s: &str) -> Result<Digest, String> {
    Digest::parse(s.as_bytes()).ok_or_else(|| format!("reference '{s}' is not a sha256 digest"))
}

/// Parses a manifest blob.
pub fn parse(bytes: &[u8]) -> Result<Manifest, String> {
    let raw: Raw = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let subject = raw
        .subject
        .as_ref()
        .map(|s| digest(&s.digest))
        .transpose()?;
    let descs = |v: &Option<Vec<Desc>>| -> Result<Vec<Digest>, String> {
        v.iter().flatten().map(|d| digest(&d.digest)).collect()
    };
    let image = |raw: &Raw| -> Result<Manifest, String> {
        let cfg = raw.config.as_ref().ok_or("image manifest without config")?;
        let mut refs = vec![digest(&cfg.digest)?];
        refs.extend(descs(&raw.layers)?);
        Ok(Manifest {
            kind: Kind::Image,
            refs,
            subject,
        })
    };
    let index = |raw: &Raw| -> Result<Manifest, String> {
        Ok(Manifest {
            kind: Kind::Index,
            refs: descs(&raw.manifests)?,
            subject,
        })
    };
    match raw.schema_version {
        Some(1) => {
            let refs = raw
                .fs_layers
                .iter()
                .flatten()
                .map(|l| digest(&l.blob_sum))
                .collect::<Result<_, _>>()?;
            Ok(Manifest {
                kind: Kind::Schema1,
                refs,
                subject: None,
            })
        }
        Some(2) => match raw.media_type.as_deref() {
            Some(OCI_MANIFEST | DOCKER_MANIFEST) => image(&raw),
            Some(OCI_INDEX | DOCKER_LIST) => index(&raw),
            // OCI allows omitting mediaType: recognise by shape, as the registry does.
            None | Some("") if raw.manifests.is_some() => index(&raw),
            None | Some("") if raw.config.is_some() => image(&raw),
            Some(other) => Err(format!("unknown manifest media type '{other}'")),
            None => Err("schemaVersion 2 without mediaType, config or manifests".into()),
        },
        Some(v) => Err(format!("unknown schemaVersion {v}")),
        None => Err("no schemaVersion".into()),
    }
}

/// Parsed manifests of a store, by digest.
#[derive(Debug, Default)]
pub struct Db {
    map: HashMap<Digest, Result<Manifest, Problem>>,
}

impl Db {
    /// Reads and parses the blobs of `digests` (deduplicated) in parallel.
    pub fn load(v2: &DirFd, digests: impl IntoIterator<Item = Digest>) -> Db {
        let mut all: Vec<Digest> = digests.into_iter().collect();
        all.sort_unstable();
        all.dedup();
        let blobs = v2.sub_opt("blobs").ok().flatten();
        let map = all
            .into_par_iter()
            .map(|d| {
                let r = match &blobs {
                    None => Err(Problem::MissingBlob),
                    Some(b) => read_blob(b, &d)
                        .and_then(|bytes| parse(&bytes).map_err(Problem::Unparsable)),
                };
                (d, r)
            })
            .collect();
        Db { map }
    }

    /// Children of loaded indexes that are not loaded yet.
    pub fn unloaded_children(&self) -> Vec<Digest> {
        let mut v: Vec<Digest> = self
            .map
            .values()
            .filter_map(|r| r.as_ref().ok())
            .flat_map(|m| m.children().iter().copied())
            .filter(|c| !self.map.contains_key(c))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Loads more digests into this cache.
    pub fn extend(&mut self, v2: &DirFd, digests: Vec<Digest>) {
        let more = Db::load(v2, digests);
        self.map.extend(more.map);
    }

    /// This cache plus whatever `inv` names that it lacks (after a rescan).
    pub fn completed(mut self, v2: &DirFd, inv: &crate::scan::Inventory) -> Db {
        let mut missing: Vec<Digest> = inv
            .repos
            .iter()
            .flat_map(|r| {
                r.revisions
                    .iter()
                    .copied()
                    .chain(r.tags.iter().filter_map(|t| t.current.digest()))
            })
            .filter(|d| !self.map.contains_key(d))
            .collect();
        while !missing.is_empty() {
            self.extend(v2, missing);
            missing = self.unloaded_children();
        }
        self
    }

    /// Builds a Db from parsed manifests (tests).
    pub fn from_map(map: HashMap<Digest, Result<Manifest, Problem>>) -> Db {
        Db { map }
    }

    /// The parsed manifest, if loaded and usable.
    pub fn get(&self, d: &Digest) -> Option<&Manifest> {
        self.map.get(d).and_then(|r| r.as_ref().ok())
    }

    /// The problem with a manifest, if it has one (`None` also when not loaded).
    pub fn problem(&self, d: &Digest) -> Option<&Problem> {
        self.map.get(d).and_then(|r| r.as_ref().err())
    }
}

/// Reads a blob's data (from the `blobs` directory handle). Manifests are small; a 4 MiB cap
/// matches the registry's own limit on manifest size.
fn read_blob(blobs: &DirFd, d: &Digest) -> Result<Vec<u8>, Problem> {
    // One openat of `sha256/xx/hex/data`: the fixed-name directories on the way are resolved by
    // the kernel (read-only, so a planted symlink there could only feed us a bogus manifest,
    // exactly as it would the registry); `data` itself is opened without following.
    let h = d.hex();
    match blobs.read_small(format!("sha256/{}/{h}/data", &h[..2]), 4 << 20) {
        Ok(b) => Ok(b),
        Err(crate::error::Error::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            Err(Problem::MissingBlob)
        }
        Err(e) => Err(Problem::Unparsable(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn oci_and_docker_images_reference_config_and_layers() {
        for mt in [OCI_MANIFEST, DOCKER_MANIFEST] {
            let m = format!(
                r#"{{"schemaVersion":2,"mediaType":"{mt}","config":{{"digest":"{}"}},"layers":[{{"digest":"{}"}},{{"digest":"{}"}}]}}"#,
                h('a'),
                h('b'),
                h('c')
            );
            let p = parse(m.as_bytes()).unwrap();
            assert_eq!(p.kind, Kind::Image);
            assert_eq!(p.refs.len(), 3);
            assert!(p.children().is_empty());
        }
    }

    #[test]
    fn indexes_and_lists_reference_children() {
        for mt in [OCI_INDEX, DOCKER_LIST] {
            let m = format!(
                r#"{{"schemaVersion":2,"mediaType":"{mt}","manifests":[{{"digest":"{}"}},{{"digest":"{}"}}]}}"#,
                h('a'),
                h('b')
            );
            let p = parse(m.as_bytes()).unwrap();
            assert_eq!(p.kind, Kind::Index);
            assert_eq!(p.children().len(), 2);
        }
    }

    #[test]
    fn missing_media_type_is_recognised_by_shape() {
        let img = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"{}"}},"layers":[]}}"#,
            h('a')
        );
        assert_eq!(parse(img.as_bytes()).unwrap().kind, Kind::Image);
        let idx = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"digest":"{}"}}]}}"#,
            h('a')
        );
        assert_eq!(parse(idx.as_bytes()).unwrap().kind, Kind::Index);
    }

    #[test]
    fn subject_is_read() {
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"digest":"{}"}},"layers":[],"subject":{{"digest":"{}"}}}}"#,
            h('a'),
            h('e')
        );
        let p = parse(m.as_bytes()).unwrap();
        assert_eq!(p.subject, Digest::parse(h('e').as_bytes()));
    }

    #[test]
    fn schema1_references_fs_layers() {
        let m = format!(
            r#"{{"schemaVersion":1,"name":"x","tag":"y","fsLayers":[{{"blobSum":"{}"}},{{"blobSum":"{}"}}],"signatures":[]}}"#,
            h('a'),
            h('b')
        );
        let p = parse(m.as_bytes()).unwrap();
        assert_eq!(p.kind, Kind::Schema1);
        assert_eq!(p.refs.len(), 2);
    }

    #[test]
    fn garbage_is_unparsable() {
        assert!(parse(b"not json").is_err());
        assert!(parse(b"{}").is_err());
        assert!(parse(br#"{"schemaVersion":2,"mediaType":"application/x-unknown"}"#).is_err());
        assert!(parse(br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"digest":"md5:x"}}"#).is_err());
    }
}
