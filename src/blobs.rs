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

/// One fan-out directory's blobs with their sizes, and its special `data` files.
type FanOut = (Vec<(Digest, u64)>, Vec<Oddity>);

/// Lists the blobs under `v2/blobs/sha256`. An absent blob store is empty.
pub fn list(v2: &DirFd) -> Result<Blobs> {
    let Some(blobs) = v2.sub_opt("blobs")? else {
        return Ok(Blobs::default());
    };
    let Some(mut sha) = blobs.sub_opt("sha256")? else {
        return Ok(Blobs::default());
    };
    let fans: Vec<_> = sha
        .entries()?
        .into_iter()
        .filter(|e| e.kind == Kind::Dir)
        .collect();
    let parts: Vec<Result<FanOut>> = fans
        .par_iter()
        .map(|fan| {
            let mut dir = sha.sub(&fan.name)?;
            let mut out = Vec::new();
            let mut odd = Vec::new();
            for e in dir.entries()? {
                if e.kind != Kind::Dir {
                    continue;
                }
                let Some(d) = e.name_str().and_then(|n| Digest::from_hex(n.as_bytes())) else {
                    continue;
                };
                if let Ok(st) = dir.stat(format!("{}/data", e.name.to_string_lossy())) {
                    match crate::fsx::kind_of_mode(st.st_mode) {
                        Kind::File => out.push((d, st.st_size as u64)),
                        Kind::Other => odd.push(Oddity {
                            kind: OddKind::SpecialFile,
                            path: d.blob_rel_path(),
                            detail: format!(
                                "not a regular file ({}): never opened; remove it",
                                crate::fsx::special_name(st.st_mode)
                            ),
                        }),
                        Kind::Dir | Kind::Symlink => {}
                    }
                }
            }
            Ok((out, odd))
        })
        .collect();
    let mut sizes = HashMap::new();
    let mut special = Vec::new();
    for p in parts {
        let (s, o) = p?;
        sizes.extend(s);
        special.extend(o);
    }
    special.sort();
    Ok(Blobs { sizes, special })
}

/// Does blob `d` still have its `data` file?
pub fn exists(v2: &DirFd, d: &Digest) -> bool {
    v2.stat(d.blob_rel_path()).is_ok()
}
