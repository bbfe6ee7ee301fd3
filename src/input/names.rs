//! Distribution's reference grammar for repository names and tags.
//!
//! Every literal part of every target is checked against this grammar before anything on disk
//! is touched: a typo must never turn into a removal of something else.
//!
//! The grammar (distribution/reference, v2.8 and v3):
//! - path component: `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`, components joined by `/`;
//! - an optional first domain component (`example.com`, `Registry.Local`); a `:port` is valid
//!   in a reference but can never be stored (the storage driver forbids `:` in paths), so it is
//!   rejected here;
//! - the whole name at most 255 characters;
//! - tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.

use regex::Regex;
use std::sync::OnceLock;

/// The longest repository name Distribution accepts.
pub const MAX_NAME_LEN: usize = 255;
/// The longest tag Distribution accepts.
pub const MAX_TAG_LEN: usize = 128;

fn path_component_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$").unwrap())
}

fn domain_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        let comp = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])";
        Regex::new(&format!(r"^{comp}(?:\.{comp})*$")).unwrap()
    })
}

fn tag_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$").unwrap())
}

/// Is `c` a valid path component (not counting the domain exception)?
pub fn is_path_component(c: &str) -> bool {
    path_component_re().is_match(c)
}

/// Checks a full repository name; the error says what is wrong, for a one-line message.
pub fn check_repo(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the repository name is empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "the name is {} characters long; the limit is {MAX_NAME_LEN}",
            name.len()
        ));
    }
    if name.contains(':') {
        return Err(
            "':' cannot appear in a stored repository name (no registry port or digest here)"
                .into(),
        );
    }
    let comps: Vec<&str> = name.split('/').collect();
    for (i, c) in comps.iter().enumerate() {
        if c.is_empty() {
            return Err(
                "the name has an empty path component (leading, trailing or double '/')".into(),
            );
        }
        let as_domain = i == 0 && comps.len() > 1 && domain_re().is_match(c);
        if !as_domain && !is_path_component(c) {
            return Err(format!("component '{c}' {}", component_hint(c)));
        }
    }
    Ok(())
}

/// Explains why a path component is invalid.
fn component_hint(c: &str) -> &'static str {
    if c.chars().any(|ch| ch.is_ascii_uppercase()) {
        "has upper-case letters (only a leading registry domain may)"
    } else if c.starts_with(['.', '_', '-']) || c.ends_with(['.', '_', '-']) {
        "starts or ends with a separator ('.', '_', '-')"
    } else if c
        .chars()
        .any(|ch| !matches!(ch, 'a'..='z' | '0'..='9' | '.' | '_' | '-'))
    {
        "has characters other than a-z, 0-9, '.', '_' and '-'"
    } else {
        "has separators in a row that the grammar forbids ('..', '___', '._')"
    }
}

/// Checks a tag; the error says what is wrong.
pub fn check_tag(tag: &str) -> Result<(), String> {
    if tag.is_empty() {
        return Err("the tag is empty".into());
    }
    if tag.len() > MAX_TAG_LEN {
        return Err(format!(
            "the tag is {} characters long; the limit is {MAX_TAG_LEN}",
            tag.len()
        ));
    }
    if tag_re().is_match(tag) {
        Ok(())
    } else if tag.starts_with(['.', '-']) {
        Err("a tag cannot start with '.' or '-'".into())
    } else {
        Err("a tag holds only A-Z, a-z, 0-9, '_', '.' and '-'".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_repository_names() {
        for n in [
            "a",
            "library/ubuntu",
            "foo_bar",
            "do__cker/docker",
            "aa-a/a",
            "project--id.module--name.ver---sion--name",
            "a/b/c/d/e",
            "team/app",
            "team/app/api",
            "0",
            "a.b",
            "a_b.c-d",
            "example.com/team/app",
            "Registry.Local/app",
            "my-host/app",
            "a1b2/c3",
        ] {
            assert_eq!(check_repo(n), Ok(()), "{n}");
        }
        assert!(check_repo(&"a".repeat(255)).is_ok());
    }

    #[test]
    fn invalid_repository_names() {
        for n in [
            "",
            "a//a",
            "/a",
            "a/",
            "-foo/bar",
            "foo/bar-",
            "_foo/bar",
            "Foo/FarB",
            "Foo",
            "do..cker/docker",
            "example.com/.dots/x",
            "a___b",
            "a._b",
            "a b",
            "a/b c",
            "localhost:5000/app",
            "app@sha256",
            "UPPER",
            "a/B",
            ".hidden",
            "a/_layers",
            "a/_manifests",
            "é",
            "-",
            ".",
            "..",
            "a/../b",
            "foo.",
            "-example.com/app",
        ] {
            assert!(check_repo(n).is_err(), "{n} should be invalid");
        }
        assert!(check_repo(&"a".repeat(256)).is_err());
    }

    #[test]
    fn valid_tags() {
        for t in [
            "v1.0.0",
            "_tag",
            "Uppercase",
            "latest",
            "1",
            "a-b_c.d",
            "sha256-abc.sig",
            "__",
        ] {
            assert_eq!(check_tag(t), Ok(()), "{t}");
        }
        assert!(check_tag(&"a".repeat(128)).is_ok());
    }

    #[test]
    fn invalid_tags() {
        for t in [
            ".tag",
            "-tag",
            "a/b",
            "invalid~tag",
            "",
            "a b",
            "a:b",
            "a@b",
            "é",
        ] {
            assert!(check_tag(t).is_err(), "{t} should be invalid");
        }
        assert!(check_tag(&"a".repeat(129)).is_err());
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert!(check_repo("Foo/FarB").unwrap_err().contains("'FarB'"));
        assert!(check_repo("a//b")
            .unwrap_err()
            .contains("empty path component"));
        assert!(check_repo("localhost:5000/x").unwrap_err().contains("':'"));
        assert!(check_tag("-x").unwrap_err().contains("start"));
    }
}
