//! The blob store: every blob with its size, listed as the registry's sweep sees it (a
//! `blobs/sha256/<xx>/<hex>/data` file), one `fstatat` per blob, fan-out directories in
//! parallel.

use crate::digest::Digest;
use crate::error::Result;
use crate::fsx::{DirFd, Kind};
use rayon::prelude::*;
use std::collections::HashMap;

/// Every blob and its size in bytes.
#[derive(Debug, Default)]
pub struct Blobs {
    /// Digest → size of `data`.
    pub sizes: HashMap<Digest, u64>,
}

impl Blobs {
    /// Total bytes of `digests` (those not present count 0).
    pub fn bytes<'a>(&self, digests: impl IntoIterator<Item = &'a Digest>) -> u64 {
        digests.into_iter().filter_map(|d| self.sizes.get(d)).sum()
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
    let fans: Vec<_> = sha
        .entries()?
        .into_iter()
        .filter(|e| e.kind == Kind::Dir)
        .collect();
    let parts: Vec<Result<Vec<(Digest, u64)>>> = fans
        .par_iter()
        .map(|fan| {
            let mut dir = sha.sub(&fan.name)?;
            let mut out = Vec::new();
            for e in dir.entries()? {
                if e.kind != Kind::Dir {
                    continue;
                }
                let Some(d) = e.name_str().and_then(|n| Digest::from_hex(n.as_bytes())) else {
                    continue;
                };
                if let Ok(st) = dir.stat(format!("{}/data", e.name.to_string_lossy())) {
                    if crate::fsx::kind_of_mode(st.st_mode) == Kind::File {
                        out.push((d, st.st_size as u64));
                    }
                }
            }
            Ok(out)
        })
        .collect();
    let mut sizes = HashMap::new();
    for p in parts {
        sizes.extend(p?);
    }
    Ok(Blobs { sizes })
}

/// Does blob `d` still have its `data` file?
pub fn exists(v2: &DirFd, d: &Digest) -> bool {
    v2.stat(d.blob_rel_path()).is_ok()
}
