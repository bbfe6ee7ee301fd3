//! What the user asked to remove: `REPO`, `REPO:TAG`, with `*`, `?` and `**` patterns.
//!
//! `*` and `?` never appear in valid names or tags, so a target is unambiguous: every part
//! without them is a literal and is validated with [`crate::names`]; parts with them are
//! patterns. In the repository part `*` and `?` stay within one path component and `**` is a
//! whole component matching any depth (`team/**` = every repository below `team`, not `team`
//! itself; `**/cache` = `cache` at any depth, including the top).

use crate::names;
use regex::Regex;
use std::fmt;

/// Matches a repository name or a tag: literally, or as a glob compiled to an anchored regex.
#[derive(Debug, Clone)]
pub enum Matcher {
    /// A validated literal name or tag.
    Literal(String),
    /// A pattern; `text` is what the user wrote.
    Glob {
        /// The pattern as written.
        text: String,
        /// The anchored regex it compiles to.
        re: Regex,
    },
}

impl Matcher {
    /// Does `s` match?
    pub fn matches(&self, s: &str) -> bool {
        match self {
            Matcher::Literal(l) => l == s,
            Matcher::Glob { re, .. } => re.is_match(s),
        }
    }

    /// The literal, if this is not a pattern.
    pub fn literal(&self) -> Option<&str> {
        match self {
            Matcher::Literal(l) => Some(l),
            Matcher::Glob { .. } => None,
        }
    }

    /// What the user wrote.
    pub fn text(&self) -> &str {
        match self {
            Matcher::Literal(l) => l,
            Matcher::Glob { text, .. } => text,
        }
    }
}

/// One parsed TARGET argument.
#[derive(Debug, Clone)]
pub struct Target {
    /// The repository part.
    pub repo: Matcher,
    /// The tag part; `None` means the whole repository.
    pub tag: Option<Matcher>,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.tag {
            Some(t) => write!(f, "{}:{}", self.repo.text(), t.text()),
            None => f.write_str(self.repo.text()),
        }
    }
}

impl Target {
    /// Parses and validates one TARGET. The error is a one-line reason (without the target
    /// itself, which the caller prefixes).
    pub fn parse(s: &str) -> Result<Target, String> {
        if s.contains('@') {
            return Err("digest references are not supported; name a repository or a tag".into());
        }
        let (repo, tag) = match s.split_once(':') {
            Some((r, t)) => {
                if t.contains(':') {
                    return Err("':' may appear only once, between repository and tag (a registry port is never part of a stored name)".into());
                }
                if t.is_empty() {
                    return Err("the tag after ':' is empty".into());
                }
                (r, Some(t))
            }
            None => (s, None),
        };
        if repo.is_empty() {
            return Err("the repository part is empty".into());
        }
        Ok(Target {
            repo: repo_matcher(repo)?,
            tag: tag.map(tag_matcher).transpose()?,
        })
    }

    /// Is any part of this target a pattern?
    pub fn is_pattern(&self) -> bool {
        self.repo.literal().is_none() || self.tag.as_ref().is_some_and(|t| t.literal().is_none())
    }
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?'])
}

/// A repository name or pattern (the TARGET syntax without a tag), validated.
pub fn repo_matcher(text: &str) -> Result<Matcher, String> {
    if !has_glob(text) {
        names::check_repo(text)?;
        return Ok(Matcher::Literal(text.to_string()));
    }
    if text.len() > names::MAX_NAME_LEN {
        return Err(format!(
            "the pattern is longer than {} characters",
            names::MAX_NAME_LEN
        ));
    }
    let mut comps: Vec<&str> = Vec::new();
    for c in text.split('/') {
        if c.is_empty() {
            return Err(
                "the pattern has an empty path component (leading, trailing or double '/')".into(),
            );
        }
        if c == "**" && comps.last() == Some(&"**") {
            continue; // `**/**` means the same as `**`
        }
        comps.push(c);
    }
    let n = comps.len();
    let mut re = String::from("^");
    // Whether the previous piece already ended with the '/' before this component.
    let mut slash_done = true;
    for (i, c) in comps.iter().enumerate() {
        if *c == "**" {
            if i + 1 == n {
                re.push_str(if i == 0 {
                    "[^/]+(?:/[^/]+)*"
                } else {
                    "(?:/[^/]+)+"
                });
            } else {
                if !slash_done {
                    re.push('/');
                }
                re.push_str("(?:[^/]+/)*");
                slash_done = true;
            }
            continue;
        }
        if c.contains("**") {
            return Err(format!(
                "'**' must be a whole path component, not part of '{c}'"
            ));
        }
        if !slash_done {
            re.push('/');
        }
        slash_done = false;
        if has_glob(c) {
            if let Some(bad) = c.chars().find(
                |ch| !matches!(ch, 'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '_' | '-' | '*' | '?'),
            ) {
                return Err(format!(
                    "character '{bad}' cannot appear in a repository name"
                ));
            }
            re.push_str(&glob_to_regex(c, "[^/]"));
        } else {
            let first_of_many = i == 0 && n > 1;
            let valid = names::is_path_component(c)
                || (first_of_many && names::check_repo(&format!("{c}/x")).is_ok());
            if !valid {
                // Reuse the full-name check for its explanation.
                return Err(names::check_repo(c)
                    .err()
                    .unwrap_or_else(|| format!("component '{c}' is not valid")));
            }
            re.push_str(&regex::escape(c));
        }
    }
    re.push('$');
    Ok(Matcher::Glob {
        text: text.to_string(),
        re: Regex::new(&re).map_err(|e| e.to_string())?,
    })
}

fn tag_matcher(text: &str) -> Result<Matcher, String> {
    if !has_glob(text) {
        names::check_tag(text)?;
        return Ok(Matcher::Literal(text.to_string()));
    }
    if let Some(bad) = text
        .chars()
        .find(|ch| !matches!(ch, 'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '_' | '-' | '*' | '?'))
    {
        return Err(format!("character '{bad}' cannot appear in a tag"));
    }
    let re = format!("^{}$", glob_to_regex(text, "."));
    Ok(Matcher::Glob {
        text: text.to_string(),
        re: Regex::new(&re).map_err(|e| e.to_string())?,
    })
}

/// `*` → any run of `any`, `?` → one `any`, everything else literal.
fn glob_to_regex(glob: &str, any: &str) -> String {
    let mut out = String::new();
    for ch in glob.chars() {
        match ch {
            '*' => {
                out.push_str(any);
                out.push('*');
            }
            '?' => out.push_str(any),
            c => out.push_str(&regex::escape(&c.to_string())),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Target {
        Target::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn repo_matches(pat: &str, name: &str) -> bool {
        t(pat).repo.matches(name)
    }

    #[test]
    fn literal_targets() {
        let x = t("team/app:v1");
        assert_eq!(x.repo.literal(), Some("team/app"));
        assert_eq!(x.tag.as_ref().unwrap().literal(), Some("v1"));
        assert!(!x.is_pattern());
        assert!(t("team/app").tag.is_none());
        assert_eq!(t("team/app:v1").to_string(), "team/app:v1");
    }

    #[test]
    fn invalid_targets_are_rejected() {
        for s in [
            "",
            ":v1",
            "app:",
            "Foo/FarB",
            "app:.tag",
            "app:a:b",
            "localhost:5000/app:v1",
            "app@sha256:abcd",
            "a//b",
            "team/a**",
            "app:a/b",
            "team/*/",
            "/team",
            "app:a~*",
            "te am/*",
        ] {
            assert!(Target::parse(s).is_err(), "{s} should be rejected");
        }
    }

    #[test]
    fn star_stays_in_one_component() {
        assert!(repo_matches("team/*", "team/app"));
        assert!(!repo_matches("team/*", "team/app/api"));
        assert!(!repo_matches("team/*", "team"));
        assert!(repo_matches("*", "app"));
        assert!(!repo_matches("*", "team/app"));
        assert!(repo_matches("te?m/a*", "team/app"));
        assert!(!repo_matches("te?m/a*", "teem2/app"));
    }

    #[test]
    fn double_star_spans_depths() {
        assert!(repo_matches("team/**", "team/app"));
        assert!(repo_matches("team/**", "team/app/api"));
        assert!(!repo_matches("team/**", "team"));
        assert!(!repo_matches("team/**", "teamx/app"));
        assert!(repo_matches("**", "a"));
        assert!(repo_matches("**", "a/b/c"));
        assert!(repo_matches("**/cache", "cache"));
        assert!(repo_matches("**/cache", "a/b/cache"));
        assert!(!repo_matches("**/cache", "a/b/cache2"));
        assert!(repo_matches("a/**/z", "a/z"));
        assert!(repo_matches("a/**/z", "a/b/c/z"));
        assert!(!repo_matches("a/**/z", "a/b/c/zz"));
        assert!(repo_matches("a/**/**", "a/b/c"));
    }

    #[test]
    fn literal_dots_in_patterns_are_not_regex_dots() {
        assert!(repo_matches("a.b/*", "a.b/x"));
        assert!(!repo_matches("a.b/*", "axb/x"));
        let tag = t("app:v1.*").tag.unwrap();
        assert!(tag.matches("v1.2"));
        assert!(!tag.matches("v1x2"));
    }

    #[test]
    fn tag_patterns() {
        let x = t("app:pr-*");
        assert!(x.is_pattern());
        assert_eq!(x.repo.literal(), Some("app"));
        let tag = x.tag.unwrap();
        assert!(tag.matches("pr-1"));
        assert!(tag.matches("pr-"));
        assert!(!tag.matches("xpr-1"));
        assert!(t("app:v?").tag.unwrap().matches("v1"));
        assert!(!t("app:v?").tag.unwrap().matches("v12"));
    }
}
