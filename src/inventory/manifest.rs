//! Manifests: what each one references, read exactly as the registry reads them (Go
//! `encoding/json` rules for every field regclean reads; the kind by `mediaType`, or as 2.8.2
//! decides when an OCI manifest omits it), and a store-wide cache of parsed manifests read in
//! parallel.

use crate::digest::Digest;
use crate::fsx::DirFd;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
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

/// The manifest media types the registry understands.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

// --- Reading manifests exactly as the registry does -------------------------------------------
//
// The registry (Distribution 2.8.2, built with Go 1.19) decides what a manifest references by
// `json.Unmarshal` into Go structs. A reader that disagrees with it about which key is
// `manifests`, which duplicate wins or what `null` means sees fewer references than the registry
// serves, and deletes live data. So regclean decodes the fields it reads with the rules of Go's
// `encoding/json` (decode.go, fold.go), and ignores every other field, as Go does:
//
// - a key selects a field exactly or case-insensitively with Go's folding (`go_fold_eq`);
// - keys are compared after unescaping, as raw bytes: invalid UTF-8 (Go reads U+FFFD) matches
//   nothing instead of failing the parse;
// - pairs are applied in order, duplicates included: the last value wins for strings and
//   numbers, a struct is decoded *into* its current value (fields the later object lacks keep
//   their earlier values), so is an existing pointee, and a slice keeps its backing array
//   (`GoSlice`);
// - `null` sets a pointer or slice to nil and leaves a string, number or struct unchanged;
// - a value of the wrong JSON type fails the whole decode, but only if Go decodes that field
//   for the manifest's kind (Go skips it, finishes, then reports the first mismatch);
// - invalid JSON or trailing data fails, before anything else.

/// The value of a Go `string` field that holds a digest, as decoded so far.
#[derive(Debug, Clone, Default)]
enum DigestField {
    /// Go's zero value `""` (field absent, or only `null` seen).
    #[default]
    Empty,
    /// `sha256:<64 hex>`, kept as 32 bytes (no allocation per reference).
    Valid(Digest),
    /// Anything else, kept only to say what it was.
    Invalid(Box<str>),
}

impl DigestField {
    fn set(&mut self, s: &str) {
        *self = match Digest::parse(s.as_bytes()) {
            Some(d) => DigestField::Valid(d),
            None if s.is_empty() => DigestField::Empty,
            None => DigestField::Invalid(s.into()),
        };
    }

    /// The digest, or why regclean cannot use it (the registry could not fetch it either).
    fn get(&self) -> Result<Digest, String> {
        match self {
            DigestField::Valid(d) => Ok(*d),
            DigestField::Empty => Err("reference '' is not a sha256 digest".into()),
            DigestField::Invalid(s) => Err(format!("reference '{s}' is not a sha256 digest")),
        }
    }
}

/// A Go struct of which regclean reads one digest field (`distribution.Descriptor.Digest`, or
/// schema 1's `FSLayer.BlobSum`); Go ignores our view of its other fields.
#[derive(Debug, Clone, Default)]
struct Desc {
    digest: DigestField,
}

/// The one field read inside a descriptor.
const DIGEST: &[(&str, ())] = &[("digest", ())];
/// The one field read inside a schema 1 `fsLayers` entry.
const BLOB_SUM: &[(&str, ())] = &[("blobSum", ())];

/// A Go slice of descriptors as `encoding/json` (Go 1.19 `decodeState.array`) leaves it.
///
/// Go decodes array element `i` *into* the slice's existing element when `i < cap`, so after
/// `"layers":[A,B],"layers":[{"size":1}],"layers":[{},{}]` the slice is `[A,B]`: a later array
/// does not replace an earlier one, it merges into it, and elements beyond the length come back
/// from the backing array. Modelled exactly: `backing` is the backing array (its length is the
/// capacity, grown as Go 1.19 grows it), `len` the slice's length.
#[derive(Debug, Default)]
struct GoSlice {
    backing: Vec<Desc>,
    len: usize,
    /// Go's nil slice (absent or `null`) versus an empty one (`[]`): the registry tells an OCI
    /// index without `mediaType` from an image manifest by exactly this.
    non_nil: bool,
}

impl GoSlice {
    /// Go 1.19: when element `i` reaches the capacity, a new backing array of
    /// `max(cap + cap/2, 4)` zero elements receives a copy of the first `len` elements. (Then
    /// `len == cap`, so nothing is lost and the growth factor never shows in the result.)
    fn grow(&mut self) {
        let cap = self.backing.len();
        self.backing.truncate(self.len);
        self.backing
            .resize_with((cap + cap / 2).max(4), Desc::default);
    }

    fn digests(&self) -> impl Iterator<Item = Result<Digest, String>> + '_ {
        self.backing[..self.len].iter().map(|d| d.digest.get())
    }
}

/// The Go `string` field `mediaType`, as decoded so far (compared exactly, case-sensitively).
#[derive(Debug, Default)]
enum MediaType {
    /// `""`: absent, `null`, or empty.
    #[default]
    Empty,
    /// One of the types the registry knows.
    Known(&'static str),
    /// Anything else (the registry refuses it).
    Other(Box<str>),
}

impl MediaType {
    fn set(&mut self, s: &str) {
        *self = match [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST]
            .into_iter()
            .find(|k| *k == s)
        {
            Some(k) => MediaType::Known(k),
            None if s.is_empty() => MediaType::Empty,
            None => MediaType::Other(s.into()),
        };
    }
}

/// The top-level fields regclean reads: the union of Distribution's `manifest.Versioned`,
/// schema2/ocischema `Manifest`, `manifestlist.ManifestList`, schema 1 `Manifest`, and v3's
/// `subject`. Their names are distinct under folding, so a key selects at most one of them.
#[derive(Debug, Clone, Copy)]
enum Top {
    SchemaVersion,
    MediaType,
    Config,
    Layers,
    Manifests,
    Subject,
    FsLayers,
}

/// The Go JSON names of `Top`, in its order.
const TOP: &[(&str, Top)] = &[
    ("schemaVersion", Top::SchemaVersion),
    ("mediaType", Top::MediaType),
    ("config", Top::Config),
    ("layers", Top::Layers),
    ("manifests", Top::Manifests),
    ("subject", Top::Subject),
    ("fsLayers", Top::FsLayers),
];

impl Top {
    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// The manifest as Go would have decoded the fields regclean reads.
#[derive(Debug, Default)]
struct Raw {
    /// Go `int`: 0 when absent.
    schema_version: i64,
    media_type: MediaType,
    /// A non-pointer struct in schema2/ocischema `Manifest`.
    config: Desc,
    layers: GoSlice,
    manifests: GoSlice,
    /// `Subject *Descriptor`: a pointer.
    subject: Option<Desc>,
    fs_layers: GoSlice,
    /// Fields (`Top::bit`) that received a value of the wrong JSON type.
    mismatched: u8,
}

impl Raw {
    /// Fails if Go would have, given that it decodes `fields` for this kind of manifest.
    fn check(&self, fields: &[Top]) -> Result<(), String> {
        match fields.iter().find(|f| self.mismatched & f.bit() != 0) {
            Some(f) => Err(format!(
                "'{}' has a JSON type the registry cannot decode",
                TOP[*f as usize].0
            )),
            None => Ok(()),
        }
    }

    fn subject(&self) -> Result<Option<Digest>, String> {
        self.subject.as_ref().map(|s| s.digest.get()).transpose()
    }

    fn image(&self) -> Result<Manifest, String> {
        self.check(&[Top::Config, Top::Layers, Top::Subject])?;
        let mut refs = Vec::with_capacity(1 + self.layers.len);
        refs.push(self.config.digest.get()?);
        for d in self.layers.digests() {
            refs.push(d?);
        }
        Ok(Manifest {
            kind: Kind::Image,
            refs,
            subject: self.subject()?,
        })
    }

    fn index(&self) -> Result<Manifest, String> {
        self.check(&[Top::Manifests, Top::Subject])?;
        Ok(Manifest {
            kind: Kind::Index,
            refs: self.manifests.digests().collect::<Result<_, _>>()?,
            subject: self.subject()?,
        })
    }
}

/// Whether the JSON key `key` (unescaped, raw bytes) selects the Go struct field whose JSON name
/// is `field` (ASCII), by Go 1.19's rules (`fold.go`; the exact match Go tries first is a case
/// of this): ASCII letters match either case, other ASCII bytes only themselves, and of all
/// non-ASCII characters only those whose Unicode simple case folding reaches ASCII do: U+017F
/// (`ſ`, long s) for `s`/`S` and U+212A (Kelvin sign) for `k`/`K`. Invalid UTF-8 (which Go
/// reads as U+FFFD) matches nothing.
pub fn go_fold_eq(key: &[u8], field: &str) -> bool {
    const LONG_S: &[u8] = "\u{17F}".as_bytes();
    const KELVIN: &[u8] = "\u{212A}".as_bytes();
    let mut k = key;
    for &f in field.as_bytes() {
        let Some(&c) = k.first() else {
            return false;
        };
        let (folds_to, n) = if c.is_ascii() {
            (c, 1)
        } else if k.starts_with(LONG_S) {
            (b's', LONG_S.len())
        } else if k.starts_with(KELVIN) {
            (b'k', KELVIN.len())
        } else {
            return false;
        };
        let same = folds_to == f || (f.is_ascii_alphabetic() && folds_to.eq_ignore_ascii_case(&f));
        if !same {
            return false;
        }
        k = &k[n..];
    }
    k.is_empty()
}

/// Reads an object key as raw bytes (so invalid UTF-8 in a key is no error, as in Go) and says
/// which of the fields it selects, if any.
struct Key<T: 'static>(&'static [(&'static str, T)]);

impl<'de, T: Copy> DeserializeSeed<'de> for Key<T> {
    type Value = Option<T>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<T>, D::Error> {
        d.deserialize_bytes(self)
    }
}

impl<T: Copy> Visitor<'_> for Key<T> {
    type Value = Option<T>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an object key")
    }
    fn visit_bytes<E: de::Error>(self, key: &[u8]) -> Result<Option<T>, E> {
        Ok(self
            .0
            .iter()
            .find(|(n, _)| go_fold_eq(key, n))
            .map(|(_, t)| *t))
    }
    fn visit_str<E: de::Error>(self, key: &str) -> Result<Option<T>, E> {
        self.visit_bytes(key.as_bytes())
    }
}

/// Where one JSON value goes, with the rules of that Go type. Decoding it yields whether the JSON
/// type fit (on a mismatch Go skips the value, finishes, and then fails).
enum Slot<'a> {
    /// Go `int` (`schemaVersion`).
    Int(&'a mut i64),
    /// Go `string` `mediaType`.
    MediaType(&'a mut MediaType),
    /// Go `string` holding a digest.
    Digest(&'a mut DigestField),
    /// A non-pointer struct with the one digest field named in the table.
    Struct(&'a mut Desc, &'static [(&'static str, ())]),
    /// A pointer to such a struct.
    Ptr(&'a mut Option<Desc>, &'static [(&'static str, ())]),
    /// A slice of such structs.
    Slice(&'a mut GoSlice, &'static [(&'static str, ())]),
}

impl<'de> DeserializeSeed<'de> for Slot<'_> {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Slot<'_> {
    type Value = bool;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        match self {
            Slot::Ptr(p, _) => *p = None,
            Slot::Slice(s, _) => *s = GoSlice::default(),
            _ => {} // null leaves a string, number or struct as it is
        }
        Ok(true)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<bool, E> {
        match self {
            Slot::Int(n) => *n = v,
            _ => return Ok(false),
        }
        Ok(true)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<bool, E> {
        match (self, i64::try_from(v)) {
            (Slot::Int(n), Ok(v)) => *n = v,
            _ => return Ok(false), // overflows a Go int, or not a number field
        }
        Ok(true)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<bool, E> {
        // serde_json reports `2.0`, `2e0` and integers beyond 64 bits as floats: none of them
        // is a Go int.
        Ok(false)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        match self {
            Slot::MediaType(m) => m.set(v),
            Slot::Digest(d) => d.set(v),
            _ => return Ok(false),
        }
        Ok(true)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        match self {
            Slot::Slice(s, field) => decode_slice(s, field, seq),
            _ => {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(false)
            }
        }
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        match self {
            Slot::Struct(d, field) => decode_struct(d, field, map),
            Slot::Ptr(p, field) => decode_struct(p.get_or_insert_with(Desc::default), field, map),
            _ => {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(false)
            }
        }
    }
}

/// Decodes an object into the existing struct `d` (Go never resets a struct first).
fn decode_struct<'de, A: MapAccess<'de>>(
    d: &mut Desc,
    field: &'static [(&'static str, ())],
    mut map: A,
) -> Result<bool, A::Error> {
    let mut fit = true;
    while let Some(k) = map.next_key_seed(Key(field))? {
        match k {
            Some(()) => fit &= map.next_value_seed(Slot::Digest(&mut d.digest))?,
            None => {
                map.next_value::<IgnoredAny>()?;
            }
        }
    }
    Ok(fit)
}

/// Decodes an array into the existing slice `s` as Go 1.19 does (see `GoSlice`).
fn decode_slice<'de, A: SeqAccess<'de>>(
    s: &mut GoSlice,
    field: &'static [(&'static str, ())],
    mut seq: A,
) -> Result<bool, A::Error> {
    let mut fit = true;
    let mut i = 0;
    loop {
        let got = if i < s.backing.len() {
            seq.next_element_seed(Slot::Struct(&mut s.backing[i], field))?
        } else {
            // Go grows only once it knows another element follows; the new slot is zero.
            let mut fresh = Desc::default();
            let got = seq.next_element_seed(Slot::Struct(&mut fresh, field))?;
            if got.is_some() {
                s.grow();
                s.backing[i] = fresh;
            }
            got
        };
        let Some(f) = got else { break };
        fit &= f;
        s.len = s.len.max(i + 1);
        i += 1;
    }
    s.len = i;
    if i == 0 {
        s.backing = Vec::new(); // Go: a fresh empty, non-nil slice
    }
    s.non_nil = true;
    Ok(fit)
}

/// Applies a manifest's top-level pairs, in order, to `Raw`.
struct TopVisitor<'a>(&'a mut Raw);

impl<'de> Visitor<'de> for TopVisitor<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let r = self.0;
        while let Some(k) = map.next_key_seed(Key(TOP))? {
            let Some(f) = k else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            let slot = match f {
                Top::SchemaVersion => Slot::Int(&mut r.schema_version),
                Top::MediaType => Slot::MediaType(&mut r.media_type),
                Top::Config => Slot::Struct(&mut r.config, DIGEST),
                Top::Layers => Slot::Slice(&mut r.layers, DIGEST),
                Top::Manifests => Slot::Slice(&mut r.manifests, DIGEST),
                Top::Subject => Slot::Ptr(&mut r.subject, DIGEST),
                Top::FsLayers => Slot::Slice(&mut r.fs_layers, BLOB_SUM),
            };
            if !map.next_value_seed(slot)? {
                r.mismatched |= f.bit();
            }
        }
        Ok(())
    }
}

/// Parses a manifest blob as the registry 2.8.2 reads it (`manifestStore.Get`): first
/// `schemaVersion` and `mediaType`; 1 is schema 1; 2 goes by `mediaType` (exact string), and
/// without one it is an index if its `manifests` slice is non-nil, else an OCI image manifest.
/// See the rules above for how each field is decoded.
pub fn parse(bytes: &[u8]) -> Result<Manifest, String> {
    let mut raw = Raw::default();
    let mut de = serde_json::Deserializer::from_slice(bytes);
    de.deserialize_map(TopVisitor(&mut raw))
        .and_then(|()| de.end())
        .map_err(|e| format!("not JSON: {e}"))?;
    raw.check(&[Top::SchemaVersion, Top::MediaType])?;
    match raw.schema_version {
        1 => {
            raw.check(&[Top::FsLayers])?;
            Ok(Manifest {
                kind: Kind::Schema1,
                refs: raw.fs_layers.digests().collect::<Result<_, _>>()?,
                subject: None,
            })
        }
        2 => match &raw.media_type {
            MediaType::Known(OCI_MANIFEST | DOCKER_MANIFEST) => raw.image(),
            MediaType::Known(_) => raw.index(),
            MediaType::Empty => {
                // The registry decodes a manifest list first (a type error there fails).
                raw.check(&[Top::Manifests])?;
                if raw.manifests.non_nil {
                    raw.index()
                } else {
                    raw.image()
                }
            }
            MediaType::Other(mt) => Err(format!("unknown manifest media type '{mt}'")),
        },
        0 => Err("no schemaVersion".into()),
        v => Err(format!("unknown schemaVersion {v}")),
    }
}
/// Parsed manifests of a store, by digest.
#[derive(Debug, Default)]
pub struct Db {
    map: HashMap<Digest, Result<Manifest, Problem>>,
}

impl Db {
    /// Reads and parses the blobs of `digests` (deduplicated) from `store`, in parallel.
    pub fn load(
        store: &dyn crate::storage::Storage,
        digests: impl IntoIterator<Item = Digest>,
    ) -> Db {
        let mut all: Vec<Digest> = digests.into_iter().collect();
        all.sort_unstable();
        all.dedup();
        Db {
            map: store.manifests(all).into_iter().collect(),
        }
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
    pub fn extend(&mut self, store: &dyn crate::storage::Storage, digests: Vec<Digest>) {
        let more = Db::load(store, digests);
        self.map.extend(more.map);
    }

    /// This cache plus whatever `inv` names that it lacks (after a rescan).
    pub fn completed(
        mut self,
        store: &dyn crate::storage::Storage,
        inv: &crate::scan::Inventory,
    ) -> Db {
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
            self.extend(store, missing);
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
pub fn read_blob(blobs: &DirFd, d: &Digest) -> Result<Vec<u8>, Problem> {
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

    // --- Go encoding/json rules (each as Go 1.19 / registry 2.8.2 decodes it) ---

    fn d(c: char) -> Digest {
        Digest::parse(h(c).as_bytes()).unwrap()
    }

    fn ok(json: &str) -> Manifest {
        parse(json.as_bytes()).unwrap_or_else(|e| panic!("{json}: {e}"))
    }

    #[test]
    fn go_fold_eq_follows_go_fold_rules() {
        assert!(go_fold_eq(b"manifests", "manifests"));
        assert!(go_fold_eq(b"Manifests", "manifests"));
        assert!(go_fold_eq(b"MANIFESTS", "manifests"));
        assert!(go_fold_eq("\u{17F}ubject".as_bytes(), "subject"));
        assert!(go_fold_eq("LAYER\u{17F}".as_bytes(), "layers"));
        assert!(go_fold_eq("blob\u{17F}um".as_bytes(), "blobSum"));
        assert!(go_fold_eq("\u{212A}".as_bytes(), "k"));
        assert!(!go_fold_eq("\u{212A}".as_bytes(), "s"));
        assert!(!go_fold_eq("\u{17F}".as_bytes(), "k"));
        // Other non-ASCII letters never fold to ASCII; invalid UTF-8 (Go: U+FFFD) matches nothing.
        assert!(!go_fold_eq("confıg".as_bytes(), "config"));
        assert!(!go_fold_eq(b"layer\xff", "layers"));
        assert!(!go_fold_eq(b"layer", "layers"));
        assert!(!go_fold_eq(b"layerss", "layers"));
        assert!(!go_fold_eq(b"fs_layers", "fsLayers"));
        // Non-letters only match themselves ('@' and '`' differ from each other by case bit).
        assert!(go_fold_eq(b"a-b", "a-b"));
        assert!(!go_fold_eq(b"a-b", "a_b"));
        assert!(!go_fold_eq(b"`", "@"));
    }

    #[test]
    fn keys_match_case_insensitively() {
        let m = ok(&format!(
            r#"{{"SCHEMAVERSION":2,"MediaType":"{OCI_INDEX}","Manifests":[{{"DIGEST":"{}"}}]}}"#,
            h('a')
        ));
        assert_eq!((m.kind, m.refs), (Kind::Index, vec![d('a')]));
        let m = ok(&format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","Config":{{"Digest":"{}"}},"LAYERS":[{{"digest":"{}"}}]}}"#,
            h('a'),
            h('b')
        ));
        assert_eq!(m.refs, vec![d('a'), d('b')]);
    }

    #[test]
    fn long_s_and_kelvin_keys_match_and_escapes_are_decoded_first() {
        let m = ok(&format!(
            r#"{{"\u017fchemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"dige\u017ft":"{}"}},"LAYER\u017f":[{{"digest":"{}"}}],"ſubject":{{"digest":"{}"}}}}"#,
            h('a'),
            h('b'),
            h('e')
        ));
        assert_eq!(m.refs, vec![d('a'), d('b')]);
        assert_eq!(m.subject, Some(d('e')));
        let m = ok(&format!(
            r#"{{"schemaVersion":1,"f\u0073Layers":[{{"blob\u017fum":"{}"}}]}}"#,
            h('a')
        ));
        assert_eq!(m.refs, vec![d('a')]);
    }

    #[test]
    fn media_type_value_is_compared_exactly() {
        let upper = OCI_INDEX.to_uppercase();
        assert!(parse(
            format!(r#"{{"schemaVersion":2,"mediaType":"{upper}","manifests":[]}}"#).as_bytes()
        )
        .is_err());
    }

    #[test]
    fn last_duplicate_wins_for_strings_and_numbers() {
        let m = ok(&format!(
            r#"{{"schemaVersion":1,"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","mediaType":"{OCI_INDEX}","manifests":[{{"digest":"{}","digest":"{}"}}]}}"#,
            h('a'),
            h('b')
        ));
        assert_eq!((m.kind, m.refs), (Kind::Index, vec![d('b')]));
        // An invalid earlier value is forgotten.
        let m = ok(&format!(
            r#"{{"schemaVersion":2,"mediaType":"x","mediaType":"{OCI_INDEX}","manifests":[{{"digest":"bogus","Digest":"{}"}}]}}"#,
            h('b')
        ));
        assert_eq!(m.refs, vec![d('b')]);
    }

    #[test]
    fn duplicate_struct_is_decoded_into_the_earlier_value() {
        let m = ok(&format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"digest":"{}"}},"config":{{"size":1}},"layers":[]}}"#,
            h('a')
        ));
        assert_eq!(m.refs, vec![d('a')]);
        // A non-nil pointer too; null then resets the pointer.
        let subj = |tail: &str| {
            ok(&format!(
                r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"digest":"{}"}},"subject":{{"digest":"{}"}},"subject":{{"size":2}}{tail}}}"#,
                h('a'),
                h('e')
            ))
            .subject
        };
        assert_eq!(subj(""), Some(d('e')));
        assert_eq!(subj(r#","subject":null"#), None);
    }

    #[test]
    fn duplicate_slice_reuses_go_backing_array() {
        let img = |layers: &str| {
            ok(&format!(
                r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"digest":"{}"}},{layers}}}"#,
                h('c')
            ))
            .refs[1..]
                .to_vec()
        };
        let (a, b) = (h('a'), h('b'));
        // A later array replaces the length and values it names...
        assert_eq!(
            img(&format!(
                r#""layers":[{{"digest":"{a}"}},{{"digest":"{b}"}}],"layers":[{{"digest":"{b}"}}]"#
            )),
            vec![d('b')]
        );
        // ... but its elements are decoded into the earlier ones, and elements beyond the
        // length come back from the backing array (capacity 4).
        assert_eq!(
            img(&format!(
                r#""layers":[{{"digest":"{a}"}},{{"digest":"{b}"}}],"layers":[{{"size":1}}],"layers":[{{}},null]"#
            )),
            vec![d('a'), d('b')]
        );
        // `[]` and `null` drop the backing array.
        assert!(parse(format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"digest":"{}"}},"layers":[{{"digest":"{a}"}}],"layers":[],"layers":[{{}}]}}"#, h('c')).as_bytes()).is_err());
        assert!(parse(format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"digest":"{}"}},"layers":[{{"digest":"{a}"}}],"layers":null,"layers":[{{}}]}}"#, h('c')).as_bytes()).is_err());
        // Leftovers are re-extended one by one before the array grows past its capacity, so
        // all of them survive: 4 elements, then 1, then 6 keeps all four `a`.
        let four = format!(
            r#"[{{"digest":"{a}"}},{{"digest":"{a}"}},{{"digest":"{a}"}},{{"digest":"{a}"}}]"#
        );
        let six = format!(r#"[{{}},{{}},{{}},{{}},{{"digest":"{b}"}},{{"digest":"{b}"}}]"#);
        let all = [d('a'), d('a'), d('a'), d('a'), d('b'), d('b')];
        assert_eq!(
            img(&format!(
                r#""layers":{four},"layers":[{{}}],"layers":{six}"#
            )),
            all
        );
    }

    #[test]
    fn null_is_empty_list_and_no_op_for_scalars_and_structs() {
        let m = ok(&format!(
            r#"{{"schemaVersion":2,"schemaVersion":null,"mediaType":"{OCI_MANIFEST}","mediaType":null,"config":{{"digest":"{}"}},"config":null,"layers":null}}"#,
            h('a')
        ));
        assert_eq!((m.kind, m.refs), (Kind::Image, vec![d('a')]));
        let m = ok(&format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":null}}"#
        ));
        assert_eq!((m.kind, m.refs.len()), (Kind::Index, 0));
        // An element `null` leaves the element (here zero: an empty digest).
        assert!(parse(
            format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[null]}}"#)
                .as_bytes()
        )
        .is_err());
    }

    #[test]
    fn unknown_fields_are_ignored_whatever_their_content() {
        // Invalid UTF-8 and lone surrogates (Go: U+FFFD) in unknown keys and values are fine.
        let mut m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","x":[1,{{"y":null}},"\ud800"],"bad\ud800"#
        )
        .into_bytes();
        m.extend_from_slice(b"\xff\":\"\xff\",\"manifests\":[{\"other\":\"\xfe\",");
        m.extend_from_slice(
            format!(
                r#""digest":"{}","platform":{{"os":"linux"}}}}],"annotations":{{"a":"b"}}}}"#,
                h('a')
            )
            .as_bytes(),
        );
        assert_eq!(parse(&m).unwrap().refs, vec![d('a')]);
    }

    #[test]
    fn absent_media_type_decides_by_nil_manifests_as_the_registry_does() {
        let cfg = h('a');
        let with = |extra: &str| {
            parse(
                format!(r#"{{"schemaVersion":2,"config":{{"digest":"{cfg}"}}{extra}}}"#).as_bytes(),
            )
        };
        assert_eq!(with("").unwrap().kind, Kind::Image);
        assert_eq!(with(r#","manifests":null"#).unwrap().kind, Kind::Image);
        assert_eq!(with(r#","manifests":[]"#).unwrap().kind, Kind::Index);
        assert_eq!(
            with(r#","mediaType":"","Manifests":[]"#).unwrap().kind,
            Kind::Index
        );
        assert_eq!(
            with(r#","manifests":[],"manifests":null"#).unwrap().kind,
            Kind::Image
        );
        // Without config either, an image manifest has an empty config digest: unusable.
        assert!(parse(br#"{"schemaVersion":2}"#).is_err());
    }

    #[test]
    fn type_mismatch_fails_only_where_go_decodes_the_field() {
        let img = |extra: &str| {
            parse(format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"digest":"{}"}}{extra}}}"#, h('a')).as_bytes())
        };
        for bad in [
            r#","layers":"x""#,
            r#","layers":{}"#,
            r#","layers":[1]"#,
            r#","config":[]"#,
            r#","Config":"x""#,
            r#","layers":[{"digest":5}]"#,
            r#","subject":"x""#,
        ] {
            assert!(img(bad).is_err(), "{bad}");
        }
        // Go's manifest list has no `layers`: a wrong type there is ignored for an index.
        let idx = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_LIST}","manifests":[],"layers":"x","config":7}}"#
        );
        assert!(parse(idx.as_bytes()).is_ok());
        let idx = format!(r#"{{"schemaVersion":2,"mediaType":"{DOCKER_LIST}","manifests":"x"}}"#);
        assert!(parse(idx.as_bytes()).is_err());
        for bad in [
            "2.5",
            "2.0",
            "2e0",
            "\"2\"",
            "true",
            "[2]",
            "18446744073709551618",
        ] {
            let m =
                format!(r#"{{"schemaVersion":{bad},"mediaType":"{OCI_INDEX}","manifests":[]}}"#);
            assert!(parse(m.as_bytes()).is_err(), "{bad}");
        }
        assert!(parse(br#"{"schemaVersion":2,"mediaType":1,"manifests":[]}"#).is_err());
    }

    #[test]
    fn invalid_json_and_trailing_data_fail() {
        let good = format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[]}}"#);
        assert!(parse(good.as_bytes()).is_ok());
        assert!(parse(format!("{good} \n").as_bytes()).is_ok());
        for bad in [
            format!("{good}x"),
            format!("{good}{{}}"),
            good.replace("[]", "[,]"),
            format!("[{good}]"),
            "null".into(),
        ] {
            assert!(parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
