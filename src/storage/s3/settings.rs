//! The registry's own `storage.s3` settings, read as the registry reads them: the config file's
//! `storage.s3` mapping, overridden key by key by `REGISTRY_STORAGE_S3_<KEY>` (values read as
//! YAML, like every `REGISTRY_*` override), so regclean cleans exactly the bucket and prefix
//! the registry serves.

use crate::config::{env_scalar, get, RegistryConfig};
use crate::error::{Error, Result};
use serde_yaml_ng::Value;

/// Where and how to reach the bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Settings {
    /// `region` (required by the registry; `us-east-1` is what most S3-compatible stores take).
    pub region: String,
    /// `regionendpoint`: an S3-compatible service's URL (`None`: AWS itself).
    pub endpoint: Option<String>,
    /// `bucket`.
    pub bucket: String,
    /// `rootdirectory` as a key prefix: no leading or trailing `/`, empty for the bucket's root.
    pub prefix: String,
    /// `accesskey` and `secretkey`; `None` means the standard credential chain (`AWS_*`
    /// variables, web identity, instance metadata), as the registry falls back to it.
    pub keys: Option<(String, String)>,
    /// `sessiontoken`, with `keys`.
    pub session_token: Option<String>,
    /// `secure` (default true): HTTPS. `false` allows plain HTTP to the endpoint.
    pub secure: bool,
    /// `forcepathstyle`: `endpoint/bucket/key` rather than `bucket.endpoint/key`. Registry 2.8
    /// has no such setting and always uses path style with a `regionendpoint`; so the default
    /// is path style with an endpoint, virtual-hosted without (AWS).
    pub path_style: bool,
    /// Where the settings came from, for messages.
    pub source: String,
}

impl S3Settings {
    /// The store as one string for the report and messages: `s3://bucket/prefix`.
    pub fn url(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

const KEYS: [&str; 11] = [
    "region",
    "regionendpoint",
    "bucket",
    "rootdirectory",
    "accesskey",
    "secretkey",
    "sessiontoken",
    "secure",
    "forcepathstyle",
    "v4auth",
    "encrypt",
];

/// Reads the settings from `config` (may be absent when everything comes from the
/// environment) and `env` (a lookup of `REGISTRY_STORAGE_S3_*`, the process environment in
/// production). A missing bucket, or `v4auth: false` (signature version 2, which regclean does
/// not speak), is invalid input (exit 2).
pub fn read(
    config: Option<&RegistryConfig>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<S3Settings> {
    let from = config
        .map(|c| c.path.display().to_string())
        .unwrap_or_else(|| "REGISTRY_STORAGE_S3_*".into());
    let mut values = std::collections::HashMap::new();
    if let Some(Value::Mapping(m)) = config.and_then(|c| get(&c.yaml, &["storage", "s3"])) {
        for (k, v) in m {
            let Some(k) = k.as_str() else { continue };
            let k = k.to_ascii_lowercase();
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Bool(b) => b.to_string(),
                Value::Number(n) => n.to_string(),
                Value::Null => continue,
                _ => continue,
            };
            values.insert(k, text);
        }
    }
    for k in KEYS {
        if let Some(v) = env(&format!("REGISTRY_STORAGE_S3_{}", k.to_ascii_uppercase())) {
            values.insert(k.to_string(), env_scalar(&v));
        }
    }
    let flag = |k: &str, default: bool| -> Result<bool> {
        match values.get(k).map(|s| s.trim().to_ascii_lowercase()) {
            None => Ok(default),
            Some(v) if v == "true" => Ok(true),
            Some(v) if v == "false" => Ok(false),
            Some(v) => Err(Error::Usage(format!(
                "storage.s3.{k} (from {from}) must be true or false, not '{v}'"
            ))),
        }
    };
    let text = |k: &str| {
        values
            .get(k)
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let bucket = text("bucket").ok_or_else(|| {
        Error::Usage(format!(
            "storage.s3.bucket (from {from}) is not set: the registry cannot serve without it either"
        ))
    })?;
    if !flag("v4auth", true)? {
        return Err(Error::Usage(format!(
            "storage.s3.v4auth is false (from {from}): regclean signs only with AWS signature version 4"
        )));
    }
    let keys = match (text("accesskey"), text("secretkey")) {
        (Some(a), Some(s)) => Some((a, s)),
        (None, None) => None,
        _ => {
            return Err(Error::Usage(format!(
                "storage.s3 (from {from}) sets only one of accesskey and secretkey"
            )))
        }
    };
    Ok(S3Settings {
        region: text("region").unwrap_or_else(|| "us-east-1".into()),
        endpoint: text("regionendpoint"),
        bucket,
        prefix: text("rootdirectory")
            .unwrap_or_default()
            .trim_matches('/')
            .to_string(),
        keys,
        session_token: text("sessiontoken"),
        secure: flag("secure", true)?,
        path_style: flag("forcepathstyle", text("regionendpoint").is_some())?,
        source: from,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> RegistryConfig {
        RegistryConfig {
            path: "/etc/docker/registry/config.yml".into(),
            yaml: serde_yaml_ng::from_str(text).unwrap(),
        }
    }

    const S3: &str = "version: 0.1\nstorage:\n  s3:\n    region: eu-west-1\n    regionendpoint: http://127.0.0.1:8333\n    bucket: reg\n    rootdirectory: /my/root/\n    accesskey: a\n    secretkey: s\n    secure: false\n    forcepathstyle: true\n";

    #[test]
    fn the_config_file_is_read_like_the_registry() {
        let s = read(Some(&cfg(S3)), &|_| None).unwrap();
        assert_eq!(s.region, "eu-west-1");
        assert_eq!(s.endpoint.as_deref(), Some("http://127.0.0.1:8333"));
        assert_eq!(s.bucket, "reg");
        assert_eq!(s.prefix, "my/root");
        assert_eq!(s.keys, Some(("a".into(), "s".into())));
        assert!(!s.secure && s.path_style);
        assert_eq!(s.url(), "s3://reg/my/root");
    }

    #[test]
    fn environment_overrides_win_key_by_key_and_are_yaml() {
        let env = |k: &str| match k {
            "REGISTRY_STORAGE_S3_BUCKET" => Some("\"other\"".to_string()),
            "REGISTRY_STORAGE_S3_SECURE" => Some("true".to_string()),
            _ => None,
        };
        let s = read(Some(&cfg(S3)), &env).unwrap();
        assert_eq!(s.bucket, "other");
        assert!(s.secure);
        assert_eq!(s.region, "eu-west-1");
    }

    #[test]
    fn defaults_are_the_registrys() {
        let s = read(None, &|k| {
            (k == "REGISTRY_STORAGE_S3_BUCKET").then(|| "b".into())
        })
        .unwrap();
        assert!(s.secure && !s.path_style && s.keys.is_none() && s.prefix.is_empty());
        // 2.8 has no forcepathstyle: with an endpoint it uses path style.
        let s = read(
            Some(&cfg(
                "storage:\n  s3:\n    bucket: b\n    regionendpoint: http://10.0.0.1:9000\n",
            )),
            &|_| None,
        )
        .unwrap();
        assert!(s.path_style);
    }

    #[test]
    fn bad_settings_are_usage_errors_that_name_the_key() {
        let e = read(Some(&cfg("storage:\n  s3:\n    region: x\n")), &|_| None).unwrap_err();
        assert!(e.to_string().contains("storage.s3.bucket"), "{e}");
        let e = read(
            Some(&cfg("storage:\n  s3:\n    bucket: b\n    v4auth: false\n")),
            &|_| None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("v4auth"), "{e}");
        let e = read(
            Some(&cfg("storage:\n  s3:\n    bucket: b\n    secure: maybe\n")),
            &|_| None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("storage.s3.secure"), "{e}");
        let e = read(
            Some(&cfg("storage:\n  s3:\n    bucket: b\n    accesskey: a\n")),
            &|_| None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("accesskey"), "{e}");
    }
}
