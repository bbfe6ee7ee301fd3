//! The bucket, through Apache Arrow's `object_store` (request signing, retries, bulk delete are
//! its, not ours). Every call here blocks the caller: the pipeline is synchronous, and the
//! concurrency that hides request latency lives inside each call (many listings, reads and
//! delete batches in flight at once on one runtime).

use super::settings::S3Settings;
use crate::error::{Error, Result};
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder, S3ConditionalPut};
use object_store::path::Path;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};
use std::sync::Arc;
use std::time::SystemTime;

/// How many requests are in flight at once (listings, reads, delete batches): enough to hide
/// a round trip of tens of milliseconds; object stores serve far more.
pub const IN_FLIGHT: usize = 32;

/// One object as listed: its key relative to the store's prefix, size and modification time.
#[derive(Debug, Clone)]
pub struct Object {
    /// Relative to the prefix (`docker/registry/v2/...`).
    pub key: String,
    /// Bytes.
    pub size: u64,
    /// Last modified.
    pub modified: SystemTime,
}

/// The registry's bucket and prefix.
pub struct Bucket {
    store: Arc<AmazonS3>,
    rt: tokio::runtime::Runtime,
    /// `rootdirectory/` or empty.
    prefix: String,
    /// `s3://bucket/prefix`, for messages.
    pub url: String,
    /// Requests made, for the report and the benchmark.
    pub requests: std::sync::atomic::AtomicU64,
}

impl Bucket {
    /// Connects (lazily: the first request tells whether the bucket answers).
    pub fn open(s: &S3Settings) -> Result<Bucket> {
        // Not `from_env()`: it would also take AWS_ENDPOINT, AWS_REGION and the like, which
        // registry 2.8 ignores (regclean must clean the bucket the registry serves). The
        // standard credential variables are used only when the config names no keys, as the
        // registry's credential chain does.
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&s.bucket)
            .with_region(&s.region)
            .with_conditional_put(S3ConditionalPut::ETagMatch);
        match &s.keys {
            Some((a, k)) => {
                b = b.with_access_key_id(a).with_secret_access_key(k);
                if let Some(t) = &s.session_token {
                    b = b.with_token(t);
                }
            }
            None => {
                for (var, key) in [
                    ("AWS_ACCESS_KEY_ID", "aws_access_key_id"),
                    ("AWS_SECRET_ACCESS_KEY", "aws_secret_access_key"),
                    ("AWS_SESSION_TOKEN", "aws_session_token"),
                    (
                        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                        "aws_container_credentials_relative_uri",
                    ),
                ] {
                    if let (Ok(v), Ok(k)) = (std::env::var(var), key.parse()) {
                        b = b.with_config(k, v);
                    }
                }
            }
        }
        if let Some(e) = &s.endpoint {
            let url = if e.contains("://") {
                e.clone()
            } else if s.secure {
                format!("https://{e}")
            } else {
                format!("http://{e}")
            };
            let host = url
                .split("://")
                .nth(1)
                .unwrap_or("")
                .split(['/', ':'])
                .next()
                .unwrap_or("");
            if !s.path_style && host.parse::<std::net::IpAddr>().is_ok() {
                return Err(Error::Usage(format!(
                    "storage.s3 (from {}): forcepathstyle is false but regionendpoint {url} is an IP address, which cannot carry the bucket in its host name",
                    s.source
                )));
            }
            b = b
                .with_allow_http(url.starts_with("http://"))
                .with_endpoint(virtual_host(&url, &s.bucket, s.path_style));
        }
        b = b.with_virtual_hosted_style_request(!s.path_style);
        if !s.prefix.is_empty() {
            Path::parse(&s.prefix).map_err(|e| {
                Error::Usage(format!(
                    "storage.s3.rootdirectory '/{}' (from {}): regclean's client cannot name these keys exactly ({e})",
                    s.prefix, s.source
                ))
            })?;
        }
        let store = b.build().map_err(|e| {
            Error::Usage(format!(
                "storage.s3 (from {}): cannot use these settings: {e}",
                s.source
            ))
        })?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .map_err(|e| Error::Failed(format!("starting the object-storage client: {e}")))?;
        Ok(Bucket {
            store: Arc::new(store),
            rt,
            prefix: if s.prefix.is_empty() {
                String::new()
            } else {
                format!("{}/", s.prefix)
            },
            url: s.url(),
            requests: Default::default(),
        })
    }

    /// The key as is (never percent-encoded: the layout's keys are plain; a listed odd key
    /// that `object_store` cannot name is named as close as it can, and a delete of it only
    /// misses).
    fn path(&self, rel: &str) -> Path {
        let full = format!("{}{rel}", self.prefix);
        Path::parse(&full).unwrap_or_else(|_| Path::from(full))
    }

    fn rel(&self, p: &Path) -> String {
        let s = p.as_ref();
        s.strip_prefix(&self.prefix).unwrap_or(s).to_string()
    }

    fn count(&self, n: u64) {
        self.requests
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    fn fail(&self, op: &str, rel: &str, e: impl std::fmt::Display) -> Error {
        Error::Failed(format!("{op} {}/{rel}: {e}", self.url))
    }

    /// Lists every object under each of `prefixes` (relative, ending in `/`), many listings
    /// in flight at once.
    pub fn list(&self, prefixes: Vec<String>) -> Result<Vec<Object>> {
        let parts: Vec<Result<Vec<Object>>> = self.rt.block_on(
            futures::stream::iter(prefixes)
                .map(|p| async move {
                    let path = self.path(&p);
                    let metas: Vec<object_store::ObjectMeta> = self
                        .store
                        .list(Some(&path))
                        .try_collect()
                        .await
                        .map_err(|e| self.fail("listing", &p, e))?;
                    // One request per 1000 keys.
                    self.count(1 + metas.len() as u64 / 1000);
                    Ok(metas
                        .into_iter()
                        .map(|m| Object {
                            key: self.rel(&m.location),
                            size: m.size,
                            modified: m.last_modified.into(),
                        })
                        .collect())
                })
                .buffer_unordered(IN_FLIGHT)
                .collect(),
        );
        let mut out = Vec::new();
        for p in parts {
            out.extend(p?);
        }
        Ok(out)
    }

    /// The "directories" right below `rel` (ending in `/`): one delimiter listing.
    pub fn children(&self, rel: &str) -> Result<Vec<String>> {
        Ok(self
            .children_many(vec![rel.to_string()])?
            .pop()
            .map(|(_, c)| c)
            .unwrap_or_default())
    }

    /// The child directories of each of `dirs` (see [`Bucket::children`]), many listings in
    /// flight at once.
    pub fn children_many(&self, dirs: Vec<String>) -> Result<Vec<(String, Vec<String>)>> {
        let parts: Vec<Result<(String, Vec<String>)>> = self.rt.block_on(
            futures::stream::iter(dirs)
                .map(|d| async move {
                    let path = self.path(&d);
                    let r = self
                        .store
                        .list_with_delimiter(Some(&path))
                        .await
                        .map_err(|e| self.fail("listing", &d, e))?;
                    self.count(1);
                    let kids = r
                        .common_prefixes
                        .iter()
                        .map(|p| format!("{}/", self.rel(p)))
                        .collect();
                    Ok((d, kids))
                })
                .buffer_unordered(IN_FLIGHT)
                .collect(),
        );
        parts.into_iter().collect()
    }

    /// Reads each of `keys` (at most `cap` bytes each; a larger object is an error), many in
    /// flight at once. `Ok(None)`: no such object.
    pub fn get_many(&self, keys: Vec<String>, cap: u64) -> Vec<(String, Result<Option<Vec<u8>>>)> {
        self.count(keys.len() as u64);
        self.rt.block_on(
            futures::stream::iter(keys)
                .map(|k| async move {
                    let r = async {
                        let got = match self.store.get(&self.path(&k)).await {
                            Ok(g) => g,
                            Err(object_store::Error::NotFound { .. }) => return Ok(None),
                            Err(e) => return Err(self.fail("reading", &k, e)),
                        };
                        if got.meta.size > cap {
                            return Err(self.fail(
                                "reading",
                                &k,
                                format!(
                                    "{} bytes, more than the {cap} a manifest may have",
                                    got.meta.size
                                ),
                            ));
                        }
                        let bytes = got.bytes().await.map_err(|e| self.fail("reading", &k, e))?;
                        Ok(Some(bytes.to_vec()))
                    }
                    .await;
                    (k, r)
                })
                .buffer_unordered(IN_FLIGHT)
                .collect(),
        )
    }

    /// Deletes `keys` with bulk requests (DeleteObjects), many in flight. A batch holds up to
    /// 1000 keys (the API's limit); fewer when there are fewer keys than [`IN_FLIGHT`]
    /// batches of 1000 would fill (never under 100), so a small delete is parallel too — a
    /// store deletes a batch's keys one after another. Returns one message per key that could
    /// not be deleted. Deleting a missing key is not an error (S3 semantics), so a rerun after
    /// a kill deletes the rest.
    pub fn delete(&self, keys: Vec<String>) -> Vec<String> {
        if keys.is_empty() {
            return Vec::new();
        }
        let batch = keys.len().div_ceil(IN_FLIGHT).clamp(100, 1000);
        self.count(keys.len().div_ceil(batch) as u64);
        let batches: Vec<Vec<Path>> = keys
            .chunks(batch)
            .map(|c| c.iter().map(|k| self.path(k)).collect())
            .collect();
        let results: Vec<Vec<object_store::Result<Path>>> = self.rt.block_on(
            futures::stream::iter(batches)
                .map(|b| {
                    self.store
                        .delete_stream(futures::stream::iter(b.into_iter().map(Ok)).boxed())
                        .collect::<Vec<_>>()
                })
                .buffer_unordered(IN_FLIGHT)
                .collect(),
        );
        results
            .into_iter()
            .flatten()
            .filter_map(|r| match r {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => None,
                Err(e) => Some(format!("deleting from {}: {e}", self.url)),
            })
            .collect()
    }

    /// Creates `rel` only if it does not exist (`If-None-Match: *`). `Ok(None)`: it exists;
    /// else its new ETag.
    pub fn create(&self, rel: &str, body: Vec<u8>) -> Result<Option<String>> {
        self.put_mode(rel, body, PutMode::Create)
    }

    /// Replaces `rel` only if its ETag is still `etag` (`If-Match`). `Ok(None)`: it changed.
    pub fn replace(&self, rel: &str, body: Vec<u8>, etag: &str) -> Result<Option<String>> {
        let v = object_store::UpdateVersion {
            e_tag: Some(etag.to_string()),
            version: None,
        };
        self.put_mode(rel, body, PutMode::Update(v))
    }

    fn put_mode(&self, rel: &str, body: Vec<u8>, mode: PutMode) -> Result<Option<String>> {
        self.count(1);
        let opts = PutOptions {
            mode,
            ..Default::default()
        };
        match self.rt.block_on(
            self.store
                .put_opts(&self.path(rel), PutPayload::from(body), opts),
        ) {
            Ok(r) => Ok(Some(r.e_tag.unwrap_or_default())),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. })
            | Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.fail("writing", rel, e)),
        }
    }

    /// Reads one small object with its modification time and ETag; `None` if absent.
    pub fn get_meta(&self, rel: &str) -> Result<Option<(Vec<u8>, SystemTime, String)>> {
        self.count(1);
        self.rt.block_on(async {
            let got = match self.store.get(&self.path(rel)).await {
                Ok(g) => g,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(self.fail("reading", rel, e)),
            };
            let t: SystemTime = got.meta.last_modified.into();
            let etag = got.meta.e_tag.clone().unwrap_or_default();
            let b = got
                .bytes()
                .await
                .map_err(|e| self.fail("reading", rel, e))?;
            Ok(Some((b.to_vec(), t, etag)))
        })
    }

    /// Deletes one key with a plain DELETE (not a bulk request: a store or policy that refuses
    /// DeleteObjects may still allow it, and a lock must be released whenever possible).
    pub fn delete_one(&self, rel: &str) -> Result<()> {
        self.count(1);
        match self.rt.block_on(self.store.delete(&self.path(rel))) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.fail("deleting", rel, e)),
        }
    }

    /// Writes `rel` unconditionally.
    pub fn put(&self, rel: &str, body: Vec<u8>) -> Result<()> {
        self.count(1);
        self.rt
            .block_on(self.store.put(&self.path(rel), PutPayload::from(body)))
            .map(|_| ())
            .map_err(|e| self.fail("writing", rel, e))
    }
}

/// The endpoint `object_store` wants: for virtual-hosted requests (the registry's default,
/// `forcepathstyle: false`) the bucket is part of the host.
fn virtual_host(url: &str, bucket: &str, path_style: bool) -> String {
    if path_style {
        return url.trim_end_matches('/').to_string();
    }
    match url.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{bucket}.{}", rest.trim_end_matches('/')),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_hosted_endpoints_carry_the_bucket() {
        assert_eq!(
            virtual_host("https://s3.example.com/", "reg", false),
            "https://reg.s3.example.com"
        );
        assert_eq!(
            virtual_host("http://127.0.0.1:8333", "reg", true),
            "http://127.0.0.1:8333"
        );
    }
}
