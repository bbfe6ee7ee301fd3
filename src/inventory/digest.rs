//! sha256 digests and the registry's `link` files.
//!
//! A link file holds exactly `sha256:` followed by 64 lower-case hex digits: 71 bytes, no
//! newline. The registry treats anything else as an error, so regclean does too — and it keeps
//! digests as 32 raw bytes, because a large store holds millions of them.

use std::fmt;

/// A sha256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

/// The exact size of a valid link file.
pub const LINK_LEN: usize = 71;

impl Digest {
    /// Parses 64 lower-case hex digits (a blob or revision directory name).
    pub fn from_hex(hex: &[u8]) -> Option<Digest> {
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in hex.chunks_exact(2).enumerate() {
            out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
        }
        Some(Digest(out))
    }

    /// Parses `sha256:<64 hex>` exactly as the registry writes it (also a link file's content).
    pub fn parse(s: &[u8]) -> Option<Digest> {
        s.strip_prefix(b"sha256:").and_then(Digest::from_hex)
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(HEX[(b >> 4) as usize] as char);
            s.push(HEX[(b & 15) as usize] as char);
        }
        s
    }

    /// The blob's data path relative to `docker/registry/v2`.
    pub fn blob_rel_path(&self) -> String {
        let h = self.hex();
        format!("blobs/sha256/{}/{}/data", &h[..2], h)
    }
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", &self.hex()[..12])
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What a link file was found to hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// A well-formed link.
    Ok(Digest),
    /// The file does not exist.
    Missing,
    /// Zero bytes (the registry writes links in place, so a reader can catch one mid-write).
    Empty,
    /// Anything else: wrong length, newline, upper case, another algorithm.
    Malformed,
}

impl Link {
    /// Classifies a link file's content.
    pub fn from_content(bytes: &[u8]) -> Link {
        if bytes.is_empty() {
            Link::Empty
        } else if bytes.len() != LINK_LEN {
            Link::Malformed
        } else {
            Digest::parse(bytes).map_or(Link::Malformed, Link::Ok)
        }
    }

    /// The digest, if well-formed.
    pub fn digest(&self) -> Option<Digest> {
        match self {
            Link::Ok(d) => Some(*d),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn valid_link_round_trips() {
        let l = Link::from_content(D.as_bytes());
        assert_eq!(l.digest().unwrap().to_string(), D);
        assert_eq!(D.len(), LINK_LEN);
    }

    #[test]
    fn registry_rejects_what_we_reject() {
        assert_eq!(Link::from_content(b""), Link::Empty);
        assert_eq!(
            Link::from_content(format!("{D}\n").as_bytes()),
            Link::Malformed
        );
        assert_eq!(
            Link::from_content(D.to_uppercase().as_bytes()),
            Link::Malformed
        );
        assert_eq!(
            Link::from_content(D.replace("sha256", "sha512").as_bytes()),
            Link::Malformed
        );
        assert_eq!(Link::from_content(&D.as_bytes()[..70]), Link::Malformed);
        let upper_hex = format!("sha256:{}", &D[7..].to_uppercase());
        assert_eq!(Link::from_content(upper_hex.as_bytes()), Link::Malformed);
    }

    #[test]
    fn blob_path_uses_two_char_fanout() {
        let d = Digest::parse(D.as_bytes()).unwrap();
        assert_eq!(
            d.blob_rel_path(),
            format!("blobs/sha256/01/{}/data", &D[7..])
        );
    }
}
