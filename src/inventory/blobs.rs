//! The blob store: every blob with its size, listed as the registry's sweep sees it (a
//! `blobs/sha256/<xx>/<hex>/data` file), one `fstatat` per blob, fan-out directories in
//! parallel. A FIFO, socket or device where a blob's `data` should be is listed apart (never
//! opened): the blob is not there for the registry either, and reading it would block.

use crate::digest::Digest;
use crate::error::Result;
use crate::fsx::{DirFd, Kind};
use crate::scan::{OddKind, Oddity};
use rayon::prelude::*;
use std::collections::HashMap;

/// Every blob and its size in bytes.
#[derive(Debug, Default)]
pub struct Blobs {
    /// Digest → size of `data`.
    pub sizes: HashMap<Digest, u64>,
    /// Blobs whose `data` is a FIFO, socket or device, with its path (relative to
    /// `docker/registry/v2`), sorted.
    pub special: Vec<Oddity>,
    /// Entries of the blob store that are not well-formed blobs (no `data`, `data` a
    /// directory or symlink, a name that is not a digest, a stray file), sorted. Neither the
    /// registry's sweep nor regclean's would handle them as blobs: they are hazards.
    pub malformed: Vec<Oddity>,
}

impl Blobs {
    /// The special-file oddity of blob `d`, if its `data` is one.
    pub fn special_of(&self, d: &Digest) -> Option<&Oddity> {
        let path = d.blob_rel_path();
        self.special.iter().find(|o| o.path == path)
    }

    /// Total bytes of `digests` (those not present count 0).
    pub fn bytes<'a>(&self, digests: impl IntoIterator<Item = &'a Digest>) -> u64 {
        digests.into_iter().filter_map(|d| self.sizes.get(d)).sum()
    }
}

/// One fan-out directory's blobs with their sizes, its special `data` files, and its
/// malformed entries.
type FanOut = (Vec<(Digest, u64)>, Vec<Oddity>, Vec<Oddity>);

fn malformed(path: String, detail: &str) -> Oddity {
    Oddity {
        kind: OddKind::UnexpectedEntry,
        path,
        detail: detail.to_string(),
    }
}

/// Lists the blobs under `v2/blobs/sha256`. An absent blob store is empty.
pub fn list(v2: &DirFd) -> Result<Blobs> {
    let Some(blobs) = v2.sub_opt("blobs")? else {
        return Ok(Blobs::default());
    };
    let Some(mut sha) = blobs.sub_opt("sha256")? else {
        return Ok(Blobs::default());
    };
    let mut malformed_top = Vec::new();
    let mut fans = Vec::new();
    for e in sha.entries()? {
        let name = e.name.to_string_lossy();
        let fan_name_ok = name.len() == 2
            && name
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        match (e.kind, fan_name_ok) {
            (Kind::Dir, true) => fans.push(e),
            _ => malformed_top.push(malformed(
                format!("blobs/sha256/{name}"),
                "not a two-hex-digit fan-out directory: the registry never finds a blob here; remove it",
            )),
        }
    }
    let parts: Vec<Result<FanOut>> = fans
        .par_iter()
        .map(|fan| {
            let mut dir = sha.sub(&fan.name)?;
            let fan_name = fan.name.to_string_lossy().into_owned();
            let mut out = Vec::new();
            let mut odd = Vec::new();
            let mut bad = Vec::new();
            for e in dir.entries()? {
                let name = e.name.to_string_lossy().into_owned();
                let path = format!("blobs/sha256/{fan_name}/{name}");
                let digest = e
                    .name_str()
                    .and_then(|n| Digest::from_hex(n.as_bytes()))
                    .filter(|_| name.starts_with(&fan_name));
                let (Kind::Dir, Some(d)) = (e.kind, digest) else {
                    bad.push(malformed(
                        path,
                        "not a blob directory named by its digest (64 lowercase hex digits, under its first two): never swept; remove it if no blob belongs there",
                    ));
                    continue;
                };
                match dir.stat(format!("{name}/data")) {
                    Ok(st) => match crate::fsx::kind_of_mode(st.st_mode) {
                        Kind::File => out.push((d, st.st_size as u64)),
                        Kind::Other => odd.push(Oddity {
                            kind: OddKind::SpecialFile,
                            path: d.blob_rel_path(),
                            detail: format!(
                                "not a regular file ({}): never opened; remove it",
                                crate::fsx::special_name(st.st_mode)
                            ),
                        }),
                        Kind::Dir => bad.push(malformed(
                            d.blob_rel_path(),
                            "data is a directory, not the blob's content: never swept; remove it",
                        )),
                        Kind::Symlink => bad.push(Oddity {
                            kind: OddKind::Symlink,
                            path: d.blob_rel_path(),
                            detail: "data is a symlink: never followed, never swept; remove it"
                                .to_string(),
                        }),
                    },
                    Err(crate::error::Error::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::NotFound =>
                    {
                        bad.push(malformed(
                            path,
                            "a blob directory without data (an interrupted upload commit?): never swept; remove it once no push is running",
                        ))
                    }
                    Err(e) => bad.push(Oddity {
                        kind: OddKind::Unreadable,
                        path,
                        detail: e.to_string(),
                    }),
                }
            }
            Ok((out, odd, bad))
        })
        .collect();
    let mut sizes = HashMap::new();
    let mut special = Vec::new();
    let mut malformed = malformed_top;
    for p in parts {
        let (s, o, b) = p?;
        sizes.extend(s);
        special.extend(o);
        malformed.extend(b);
    }
    special.sort();
    malformed.sort();
    Ok(Blobs {
        sizes,
        special,
        malformed,
    })
}

/// Does blob `d` still have its `data` file?
pub fn exists(v2: &DirFd, d: &Digest) -> bool {
    v2.stat(d.blob_rel_path()).is_ok()
}
