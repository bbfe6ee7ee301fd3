//! A registry on S3-compatible object storage (the registry's `s3` driver): the same layout
//! as keys, read by parallel listings sharded by repository and by blob fan-out prefix.

pub mod bucket;
pub mod change;
pub mod dirs;
pub mod layout;
pub mod settings;

use crate::blobs::Blobs;
use crate::digest::Digest;
use crate::error::Result;
use crate::manifest::{Manifest, Problem};
use crate::scan::Inventory;
use bucket::Bucket;
use layout::V2;

/// Manifests are small: 4 MiB is the registry's own limit.
const MANIFEST_CAP: u64 = 4 << 20;

/// A registry's bucket and prefix, read as a [`crate::storage::Storage`].
pub struct S3Store {
    /// The bucket client (shared with the lock's heartbeat).
    pub bucket: std::sync::Arc<Bucket>,
    /// What the scan saw of the directories the registry's upload purger walks (see
    /// [`dirs::holding`]), for the sweep of empty ones.
    pub holding: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl S3Store {
    /// Connects to the bucket the settings name.
    pub fn open(s: &settings::S3Settings) -> Result<S3Store> {
        Ok(S3Store {
            bucket: std::sync::Arc::new(Bucket::open(s)?),
            holding: Default::default(),
        })
    }

    /// The listing shards under `base` (ending in `/`): its children's children, so a store
    /// with one namespace (`team/...`) still lists in parallel. The two levels of delimiter
    /// listings are themselves parallel.
    fn shards(&self, base: &str, depth: usize) -> Result<Vec<String>> {
        let mut level = vec![base.to_string()];
        for _ in 0..depth {
            let out: Vec<String> = self
                .bucket
                .children_many(level)?
                .into_iter()
                .flat_map(|(_, c)| c)
                .collect();
            // Keys right at this level (no deeper "directory") are listed by their parent's
            // shard; a store has none in a valid layout, so they are caught as odd below.
            level = out;
        }
        Ok(level)
    }
}

impl crate::storage::Storage for S3Store {
    fn scan(&self) -> Result<Inventory> {
        let base = format!("{V2}repositories/");
        let mut shards = self.shards(&base, 2)?;
        // Keys directly inside a first-level name (`repositories/app/_manifests/...` is two
        // levels down already, so nothing is lost); the listing below covers every shard.
        shards.sort();
        let objects = self.bucket.list(shards)?;
        let listing = layout::list_repositories(&objects);
        *self.holding.lock().unwrap() = dirs::holding(objects.iter().map(|o| &o.key));
        let current = self.bucket.get_many(listing.current_links(), 4096);
        let mut map = std::collections::HashMap::new();
        for (k, r) in current {
            // A tag link that was listed but cannot be read (denied, throttled, a server error
            // after retries) is not a missing link: taking it for one would prune and collect
            // a live image. The run stops before any change.
            match r {
                Ok(b) => map.insert(k, b),
                Err(e) => return Err(crate::error::Error::Failed(format!("{e}: a tag link that cannot be read makes the inventory unknowable; nothing was changed"))),
            };
        }
        Ok(listing.inventory(&map))
    }

    fn blobs(&self) -> Result<Blobs> {
        let shards = self.bucket.children(&format!("{V2}blobs/sha256/"))?;
        let objects = self.bucket.list(shards)?;
        Ok(layout::list_blobs(&objects))
    }

    fn manifests(
        &self,
        digests: Vec<Digest>,
    ) -> Vec<(Digest, std::result::Result<Manifest, Problem>)> {
        let keys: Vec<String> = digests
            .iter()
            .map(|d| format!("{V2}{}", d.blob_rel_path()))
            .collect();
        let by_key: std::collections::HashMap<String, Result<Option<Vec<u8>>>> = self
            .bucket
            .get_many(keys, MANIFEST_CAP)
            .into_iter()
            .collect();
        digests
            .into_iter()
            .map(|d| {
                let r = match by_key.get(&format!("{V2}{}", d.blob_rel_path())) {
                    Some(Ok(Some(b))) => crate::manifest::parse(b).map_err(Problem::Unparsable),
                    Some(Ok(None)) | None => Err(Problem::MissingBlob),
                    Some(Err(e)) => Err(Problem::Unparsable(e.to_string())),
                };
                (d, r)
            })
            .collect()
    }
}
