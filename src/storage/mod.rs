//! Where the store lives: one trait, two implementations.
//!
//! The planner, reachability, retention, policies, the prediction and the reports read a store
//! only through [`Storage`]: the same [`Inventory`], [`Blobs`] and manifests whether the
//! registry's `storage` driver is `filesystem` ([`Filesystem`], directory handles, removal by
//! atomic rename into the trash) or `s3` ([`s3::S3Store`], parallel listings, ordered batched
//! deletes). What differs is how a change is made safe, which each implementation's change
//! stage says in its own words (`change/` for the filesystem, [`s3::change`] for buckets).

pub mod s3;

use crate::blobs::Blobs;
use crate::digest::Digest;
use crate::error::Result;
use crate::fsx::DirFd;
use crate::manifest::{Manifest, Problem};
use crate::scan::Inventory;

/// Read access to a registry store.
pub trait Storage: Sync {
    /// The registry's repositories, tags, revisions and layer links.
    fn scan(&self) -> Result<Inventory>;
    /// Every blob with its size (and what is malformed in the blob store).
    fn blobs(&self) -> Result<Blobs>;
    /// Reads and parses the manifests `digests` (deduplicated by the caller), as Go reads them.
    fn manifests(
        &self,
        digests: Vec<Digest>,
    ) -> Vec<(Digest, std::result::Result<Manifest, Problem>)>;
}

/// A filesystem store: `<root>/docker/registry/v2`, opened as a directory handle.
pub struct Filesystem<'a> {
    /// The `docker/registry/v2` directory.
    pub v2: &'a DirFd,
}

impl Storage for Filesystem<'_> {
    fn scan(&self) -> Result<Inventory> {
        crate::scan::scan(self.v2)
    }

    fn blobs(&self) -> Result<Blobs> {
        crate::blobs::list(self.v2)
    }

    fn manifests(
        &self,
        digests: Vec<Digest>,
    ) -> Vec<(Digest, std::result::Result<Manifest, Problem>)> {
        use rayon::prelude::*;
        let blobs = self.v2.sub_opt("blobs").ok().flatten();
        digests
            .into_par_iter()
            .map(|d| {
                let r = match &blobs {
                    None => Err(Problem::MissingBlob),
                    Some(b) => crate::manifest::read_blob(b, &d).and_then(|bytes| {
                        crate::manifest::parse(&bytes).map_err(Problem::Unparsable)
                    }),
                };
                (d, r)
            })
            .collect()
    }
}
