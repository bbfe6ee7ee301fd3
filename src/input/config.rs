//! Where the store is: the registry's config file and storage root, resolved in the registry's
//! own order, so that regclean cleans exactly the directory the registry serves.
//!
//! Root: `--root`, else `REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY`, else the config's
//! `storage.filesystem.rootdirectory`, else `/var/lib/registry`.
//! Config: `--config`, else `REGISTRY_CONFIGURATION_PATH`, else `/etc/docker/registry/config.yml`
//! (registry:2), else `/etc/distribution/config.yml` (registry:3). A config named explicitly must
//! exist; the default locations are optional.

use crate::error::{Error, Result};
use serde_yaml_ng::Value;
use std::path::{Path, PathBuf};

/// The registry's default root when nothing else names one.
pub const DEFAULT_ROOT: &str = "/var/lib/registry";
/// Config locations tried when none is named (registry:2, then registry:3).
pub const DEFAULT_CONFIGS: [&str; 2] = [
    "/etc/docker/registry/config.yml",
    "/etc/distribution/config.yml",
];

/// Keys of `storage:` that are settings, not a driver.
const STORAGE_SETTINGS: [&str; 5] = ["maintenance", "cache", "delete", "redirect", "tag"];

/// Where the storage root came from (reported, because "which store did it clean?" is the
/// first question after a surprise).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RootSource {
    /// `--root` or `REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY`.
    Explicit,
    /// `storage.filesystem.rootdirectory` in the config.
    Config,
    /// `/var/lib/registry`.
    Default,
}

/// The registry configuration, as far as regclean needs it.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// The file it was read from.
    pub path: PathBuf,
    /// Its parsed YAML.
    pub yaml: Value,
}

/// The resolved locations.
#[derive(Debug, Clone)]
pub struct Location {
    /// The storage root (the directory holding `docker/registry/v2`).
    pub root: PathBuf,
    /// Where `root` came from.
    pub root_source: RootSource,
    /// The config file, if one was found.
    pub config: Option<RegistryConfig>,
    /// Which storage the registry uses.
    pub backend: Backend,
}

/// The registry's storage driver, as far as regclean can clean it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// `filesystem`: `root` is the local directory.
    Filesystem,
    /// `s3`: `root` is `s3://bucket/prefix`, for messages.
    S3(crate::storage::s3::settings::S3Settings),
}

/// Why [`read_text_file`] failed.
#[derive(Debug)]
pub enum TextFileError {
    /// Opening or reading failed.
    Io(std::io::Error),
    /// A directory, FIFO, socket or device (other than `/dev/null`).
    NotRegular,
    /// Invalid UTF-8 at this byte.
    NotUtf8(usize),
}

impl std::fmt::Display for TextFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TextFileError::Io(e) => write!(f, "{e}"),
            TextFileError::NotRegular => f.write_str("not a regular file"),
            TextFileError::NotUtf8(at) => write!(f, "not UTF-8 text (byte {at})"),
        }
    }
}

/// Reads a small text file given by the user (a config, a policy) without ever waiting on
/// it: opened with `O_NONBLOCK` (a FIFO is refused, never read), it must be a regular file
/// (or `/dev/null`: "no config") and UTF-8.
pub fn read_text_file(path: &Path) -> std::result::Result<String, TextFileError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(TextFileError::Io)?;
    let meta = f.metadata().map_err(TextFileError::Io)?;
    // `--config /dev/null` ("no config") is common; any other device, FIFO or socket could
    // block or never end.
    let null_device = {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        meta.file_type().is_char_device() && meta.rdev() == nix::sys::stat::makedev(1, 3)
    };
    if !meta.is_file() && !null_device {
        return Err(TextFileError::NotRegular);
    }
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).map_err(TextFileError::Io)?;
    String::from_utf8(bytes).map_err(|e| TextFileError::NotUtf8(e.utf8_error().valid_up_to()))
}

/// Reads and parses a registry config file. Anything the registry could not read as its
/// config is invalid input (exit 2): not a regular file (a FIFO is opened without blocking
/// and refused, never waited on), not UTF-8, not YAML.
pub fn read_config(path: &Path) -> Result<RegistryConfig> {
    let text = read_text_file(path).map_err(|e| match e {
        TextFileError::Io(e) => Error::io("reading registry config", path, e),
        e => Error::Usage(format!("registry config {}: {e}", path.display())),
    })?;
    let mut yaml: Value = serde_yaml_ng::from_str(&text).map_err(|e| {
        Error::Usage(format!(
            "registry config {}: invalid YAML: {e}",
            path.display()
        ))
    })?;
    // Merge keys (`<<: *base`) are applied by the registry's YAML library; so here.
    yaml.apply_merge().map_err(|e| {
        Error::Usage(format!(
            "registry config {}: invalid YAML merge key: {e}",
            path.display()
        ))
    })?;
    Ok(RegistryConfig {
        path: path.to_path_buf(),
        yaml,
    })
}

/// Finds the config: `explicit` (from `--config` or `REGISTRY_CONFIGURATION_PATH`) must exist;
/// otherwise the first of `defaults` that exists, or none.
pub fn find_config(explicit: Option<&Path>, defaults: &[&str]) -> Result<Option<RegistryConfig>> {
    if let Some(p) = explicit {
        if !p.exists() {
            return Err(Error::Usage(format!(
                "registry config {}: no such file",
                p.display()
            )));
        }
        return read_config(p).map(Some);
    }
    for d in defaults {
        let p = Path::new(d);
        if p.is_file() {
            return read_config(p).map(Some);
        }
    }
    Ok(None)
}

/// The value at `keys` (a path of mapping keys), if every step exists.
pub fn get<'a>(v: &'a Value, keys: &[&str]) -> Option<&'a Value> {
    keys.iter().try_fold(v, |v, k| v.as_mapping()?.get(*k))
}

/// The storage driver the registry would use: `REGISTRY_STORAGE` if set, else the one
/// driver key under `storage:`; `None` when no config names one (the filesystem is assumed).
pub fn storage_driver(
    config: Option<&RegistryConfig>,
    env_storage: Option<&str>,
) -> Result<Option<String>> {
    if let Some(e) = env_storage.filter(|s| !s.trim().is_empty()) {
        return Ok(Some(e.trim().to_string()));
    }
    let Some(cfg) = config else { return Ok(None) };
    let Some(storage) = get(&cfg.yaml, &["storage"]).and_then(Value::as_mapping) else {
        return Ok(None);
    };
    let drivers: Vec<String> = storage
        .keys()
        .filter_map(|k| k.as_str())
        .filter(|k| !STORAGE_SETTINGS.contains(k))
        .map(str::to_string)
        .collect();
    match drivers.len() {
        0 => Ok(None),
        1 => Ok(Some(drivers[0].clone())),
        _ => Err(Error::Usage(format!(
            "registry config {}: more than one storage driver ({}); the registry refuses that too",
            cfg.path.display(),
            drivers.join(", ")
        ))),
    }
}

/// Resolves the storage root. `explicit_root` is `--root` or
/// `REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY`; `env_storage` is `REGISTRY_STORAGE`.
/// Refuses (exit 3) a driver other than `filesystem`: such a registry has no local tree, and
/// cleaning a stale directory would report success while freeing nothing.
pub fn locate(
    explicit_root: Option<PathBuf>,
    config: Option<RegistryConfig>,
    env_storage: Option<&str>,
) -> Result<Location> {
    if let Some(d) = storage_driver(config.as_ref(), env_storage)? {
        let from = match (&config, env_storage.filter(|s| !s.trim().is_empty())) {
            (_, Some(_)) => "REGISTRY_STORAGE".to_string(),
            (Some(c), None) => c.path.display().to_string(),
            (None, None) => "the configuration".to_string(),
        };
        if d == "s3" {
            if let Some(r) = explicit_root.filter(|r| !r.as_os_str().is_empty()) {
                return Err(Error::Usage(format!(
                    "--root {} names a filesystem store, but the registry's storage driver is 's3' (from {from}): drop --root (and REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY) to clean the bucket",
                    r.display()
                )));
            }
            let s3 =
                crate::storage::s3::settings::read(config.as_ref(), &|k| std::env::var(k).ok())?;
            return Ok(Location {
                root: PathBuf::from(s3.url()),
                root_source: RootSource::Config,
                config,
                backend: Backend::S3(s3),
            });
        }
        if d != "filesystem" {
            return Err(Error::Unsafe(format!(
                "storage driver '{d}' (from {from}) is neither 'filesystem' nor 's3': regclean cleans only those"
            )));
        }
    }
    if let Some(r) = explicit_root.filter(|r| !r.as_os_str().is_empty()) {
        return Ok(Location {
            root: r,
            root_source: RootSource::Explicit,
            config,
            backend: Backend::Filesystem,
        });
    }
    let from_config = match config.as_ref().and_then(|c| {
        Some((
            c,
            get(&c.yaml, &["storage", "filesystem", "rootdirectory"])?,
        ))
    }) {
        None | Some((_, Value::Null)) => None,
        Some((_, Value::String(s))) => Some(s.as_str()),
        Some((c, other)) => {
            return Err(Error::Usage(format!(
            "registry config {}: storage.filesystem.rootdirectory must be a path string, not {}",
            c.path.display(),
            yaml_kind(other)
        )))
        }
    };
    if let Some(r) = from_config.filter(|s| !s.is_empty()) {
        let root = PathBuf::from(r);
        return Ok(Location {
            root,
            root_source: RootSource::Config,
            config,
            backend: Backend::Filesystem,
        });
    }
    Ok(Location {
        root: PathBuf::from(DEFAULT_ROOT),
        root_source: RootSource::Default,
        config,
        backend: Backend::Filesystem,
    })
}

/// A `REGISTRY_*` override value as the registry reads it: YAML, so `"/data"` (quotes
/// included, as `docker run --env-file` passes `KEY="/data"`) is `/data`, and `123` is `123`.
/// Anything that is not a YAML scalar is taken literally.
pub fn env_scalar(raw: &str) -> String {
    match serde_yaml_ng::from_str::<Value>(raw) {
        Ok(Value::String(s)) => s,
        Ok(Value::Number(n)) => n.to_string(),
        Ok(Value::Bool(b)) => b.to_string(),
        Ok(Value::Null) => String::new(),
        _ => raw.to_string(),
    }
}

/// What a YAML value is, for messages.
fn yaml_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_values_are_read_as_yaml_like_the_registry() {
        assert_eq!(env_scalar(r#""/data/reg""#), "/data/reg");
        assert_eq!(env_scalar("'/data/a: b'"), "/data/a: b");
        assert_eq!(env_scalar("/plain/path"), "/plain/path");
        assert_eq!(env_scalar("123"), "123");
        assert_eq!(env_scalar("~/x"), "~/x");
    }

    fn cfg(text: &str) -> RegistryConfig {
        RegistryConfig {
            path: PathBuf::from("/etc/docker/registry/config.yml"),
            yaml: serde_yaml_ng::from_str(text).unwrap(),
        }
    }

    const FS: &str = "version: 0.1\nstorage:\n  cache:\n    blobdescriptor: inmemory\n  filesystem:\n    rootdirectory: /data/reg\n  delete:\n    enabled: true\n";

    #[test]
    fn explicit_root_wins_over_config() {
        let l = locate(Some("/x".into()), Some(cfg(FS)), None).unwrap();
        assert_eq!(l.root, PathBuf::from("/x"));
        assert_eq!(l.root_source, RootSource::Explicit);
    }

    #[test]
    fn config_root_is_used_when_nothing_explicit() {
        let l = locate(None, Some(cfg(FS)), None).unwrap();
        assert_eq!(l.root, PathBuf::from("/data/reg"));
        assert_eq!(l.root_source, RootSource::Config);
    }

    #[test]
    fn default_root_without_config() {
        let l = locate(None, None, None).unwrap();
        assert_eq!(l.root, PathBuf::from(DEFAULT_ROOT));
        assert_eq!(l.root_source, RootSource::Default);
        let l = locate(None, Some(cfg("storage:\n  filesystem: {}\n")), None).unwrap();
        assert_eq!(l.root_source, RootSource::Default);
    }

    #[test]
    fn non_filesystem_driver_is_refused_as_unsafe() {
        let e = locate(
            Some("/x".into()),
            Some(cfg("storage:\n  gcs:\n    bucket: b\n  cache: {}\n")),
            None,
        )
        .unwrap_err();
        assert!(matches!(e, Error::Unsafe(_)), "{e}");
        assert!(e.to_string().contains("'gcs'"));
        let e = locate(None, Some(cfg(FS)), Some("gcs")).unwrap_err();
        assert!(e.to_string().contains("REGISTRY_STORAGE"), "{e}");
        let e = locate(None, None, Some("inmemory")).unwrap_err();
        assert!(matches!(e, Error::Unsafe(_)));
    }

    #[test]
    fn two_drivers_is_a_usage_error() {
        let e =
            storage_driver(Some(&cfg("storage:\n  s3: {}\n  filesystem: {}\n")), None).unwrap_err();
        assert!(matches!(e, Error::Usage(_)));
    }

    #[test]
    fn settings_keys_are_not_drivers() {
        let c = cfg("storage:\n  maintenance:\n    readonly:\n      enabled: true\n  redirect: {}\n  tag: {}\n  filesystem: {}\n");
        assert_eq!(
            storage_driver(Some(&c), None).unwrap().as_deref(),
            Some("filesystem")
        );
    }

    #[test]
    fn explicit_config_must_exist_defaults_need_not() {
        let e = find_config(Some(Path::new("/nonexistent/regclean.yml")), &[]).unwrap_err();
        assert!(matches!(e, Error::Usage(_)));
        assert!(find_config(None, &["/nonexistent/a.yml"])
            .unwrap()
            .is_none());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.yml");
        std::fs::write(&p, FS).unwrap();
        let c = find_config(None, &["/nonexistent/a.yml", p.to_str().unwrap()])
            .unwrap()
            .unwrap();
        assert_eq!(c.path, p);
        std::fs::write(&p, "storage: [unclosed").unwrap();
        assert!(matches!(
            find_config(Some(&p), &[]).unwrap_err(),
            Error::Usage(_)
        ));
    }
}
