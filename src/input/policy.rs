//! Retention policies: several scoped rule sets, from a YAML file (`--policy`) or from the
//! command line's retention flags (a one-policy shorthand).
//!
//! The file, in the vocabulary of zot, Harbor, GitLab and ECR:
//!
//! ```yaml
//! version: 1
//! protect: ["**:latest", "prod/**:v*"]     # REPO:TAG patterns nothing removes; never counted
//! limits: {max_delete_percent: 30}        # refuse (exit 3, nothing changed) above this share
//! policies:                               # the FIRST policy whose repositories match applies
//!   - repositories: ["team0/**", "app1"]  # the TARGET pattern syntax (*, ?, **)
//!     exclude: ["team0/keepme"]           # ...this policy then does not match it
//!     keep:                               # a tag stays if ANY keep rule keeps it
//!       - last: 3                         # order: pushed (default) | semver | name
//!       - tags: '^release-'
//!       - pushed_within: 30d
//!     untagged: delete                    # delete (default) | keep
//!   - repositories: ["**"]
//!     keep: [{last: 10, order: semver}]
//! ```
//!
//! Every mistake is refused before anything runs, with the file and line: unknown keys, wrong
//! types, a bad regex, pattern or duration, `last: 0`, a keep entry with no rule or two, an
//! empty `keep` (a policy that keeps nothing removes every tag: name `REPO:*` for that).

use crate::retention::{Order, Rule};
use crate::target::{self, Matcher, Target};
use serde::Deserialize;
use std::path::Path;
use std::time::Duration;

/// A set of policies.
#[derive(Debug, Clone)]
pub struct Policies {
    /// `REPO:TAG` patterns (a bare `REPO` pattern: all its tags) that nothing removes.
    pub protect: Vec<Target>,
    /// Refusal thresholds.
    pub limits: Limits,
    /// The policies, in order: the first whose repositories match applies.
    pub policies: Vec<Policy>,
    /// Where they came from.
    pub source: Source,
}

/// Where policies came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `--keep-last`, `--older-than`, `--keep`.
    Flags,
    /// `--policy FILE`.
    File,
}

/// One policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Repositories it applies to.
    pub repositories: Vec<Matcher>,
    /// Repositories it does not apply to (a later policy may).
    pub exclude: Vec<Matcher>,
    /// A tag stays if any rule keeps it.
    pub keep: Vec<Rule>,
    /// Whether untagged manifests of its repositories are pruned.
    pub untagged: Untagged,
}

/// A policy's `untagged:` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Untagged {
    /// Prune them (default).
    #[default]
    Delete,
    /// Leave them (digest-pinned deployments).
    Keep,
    /// Prune them, except those pulled by digest within this duration (digest-pinned
    /// deployments that still pull; needs the supervisor's pull activity).
    KeepPulledWithin(Duration),
}

/// `untagged: delete | keep | {keep_pulled_within: D}`, read by a visitor so that an error
/// carries the line of the value itself.
impl<'de> Deserialize<'de> for Untagged {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Untagged, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Untagged;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("delete, keep or {keep_pulled_within: DURATION}")
            }
            fn visit_str<E: serde::de::Error>(self, w: &str) -> Result<Untagged, E> {
                match w {
                    "delete" => Ok(Untagged::Delete),
                    "keep" => Ok(Untagged::Keep),
                    _ => Err(E::custom(format!(
                        "untagged: unknown variant `{w}`, expected delete, keep or {{keep_pulled_within: DURATION}}"
                    ))),
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Untagged, A::Error> {
                use serde::de::Error;
                let mut out = None;
                while let Some(k) = m.next_key::<String>()? {
                    if k != "keep_pulled_within" || out.is_some() {
                        return Err(A::Error::custom(format!(
                            "untagged: unknown or repeated key `{k}` (expected keep_pulled_within)"
                        )));
                    }
                    let v: String = m.next_value()?;
                    out = Some(parse_duration("keep_pulled_within", &v).map_err(A::Error::custom)?);
                }
                out.map(Untagged::KeepPulledWithin)
                    .ok_or_else(|| A::Error::custom("untagged: {} needs keep_pulled_within"))
            }
        }
        d.deserialize_any(V)
    }
}

/// `limits:`. A run over the limit is refused (exit 3) before any change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest share of the tags in the run's scope a run may remove, in percent.
    pub max_delete_percent: Option<f64>,
    /// Largest number of tags a run may remove.
    pub max_delete_count: Option<usize>,
}

impl Policies {
    /// The command line's retention flags as one policy over every repository in scope.
    pub fn from_flags(keep: Vec<Rule>) -> Policies {
        Policies {
            protect: Vec::new(),
            limits: Limits::default(),
            policies: vec![Policy {
                repositories: vec![target::repo_matcher("**").expect("valid pattern")],
                exclude: Vec::new(),
                keep,
                untagged: Untagged::Delete,
            }],
            source: Source::Flags,
        }
    }

    /// Reads and validates a policy file. The error is one line naming the file and, where
    /// the YAML parser knows it, the line.
    pub fn load(path: &Path) -> Result<Policies, String> {
        let text = crate::config::read_text_file(path)
            .map_err(|e| format!("policy file {}: {e}", path.display()))?;
        Policies::parse(&text).map_err(|e| format!("policy file {}: {e}", path.display()))
    }

    /// Parses a policy file's text.
    pub fn parse(text: &str) -> Result<Policies, String> {
        // serde_yaml_ng names no line for these two: say where.
        if let Some(e) = duplicate_top_level_key(text) {
            return Err(e);
        }
        if serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text).is_ok_and(|v| v.is_null()) {
            return Err("line 1: the file has no content (it is empty or only comments); a policy file needs `version: 1` and `policies:`".into());
        }
        let raw: RawFile = serde_yaml_ng::from_str(text).map_err(|e| one_line(&e))?;
        if raw.version != 1 {
            return Err(format!(
                "version: {} is not supported (this regclean reads version 1)",
                raw.version
            ));
        }
        if let Some(p) = raw.limits.max_delete_percent {
            if !(0.0..=100.0).contains(&p) {
                return Err(format!(
                    "limits.max_delete_percent: {p} is not a percentage (0 to 100)"
                ));
            }
        }
        Ok(Policies {
            protect: raw.protect.into_iter().map(|p| p.0).collect(),
            limits: raw.limits,
            policies: raw.policies.into_iter().map(|p| p.0).collect(),
            source: Source::File,
        })
    }

    /// The policy that applies to repository `name` (its 1-based number and itself), if any.
    pub fn for_repo(&self, name: &str) -> Option<(usize, &Policy)> {
        self.policies
            .iter()
            .enumerate()
            .find(|(_, p)| {
                p.repositories.iter().any(|m| m.matches(name))
                    && !p.exclude.iter().any(|m| m.matches(name))
            })
            .map(|(i, p)| (i + 1, p))
    }

    /// Does any rule need pull activity (`pulled_within`, `keep_pulled_within`)?
    pub fn uses_pulls(&self) -> bool {
        self.policies.iter().any(|p| {
            matches!(p.untagged, Untagged::KeepPulledWithin(_))
                || p.keep.iter().any(|r| matches!(r, Rule::PulledWithin(_)))
        })
    }

    /// The `protect` pattern that covers `repo:tag`, if any.
    pub fn protector(&self, repo: &str, tag: &str) -> Option<&Target> {
        self.protect
            .iter()
            .find(|t| t.repo.matches(repo) && t.tag.as_ref().is_none_or(|m| m.matches(tag)))
    }
}

/// A key of the top-level mapping given twice, with both lines (serde_yaml_ng reports it
/// without a location). Only block-style keys at column 0 are looked at; anything else is
/// left to the parser.
fn duplicate_top_level_key(text: &str) -> Option<String> {
    let mut seen: std::collections::HashMap<String, usize> = Default::default();
    for (i, line) in text.lines().enumerate() {
        if line.starts_with([' ', '\t', '#', '-', '.', '{', '[']) || line.trim().is_empty() {
            continue;
        }
        // A quoted key ("protect": ...) is the same key as the plain one.
        let split = match line.chars().next() {
            Some(q @ ('"' | '\'')) => line[1..]
                .split_once(q)
                .and_then(|(k, r)| Some((k, r.trim_start().strip_prefix(':')?))),
            _ => line.split_once(':').map(|(k, r)| (k.trim_end(), r)),
        };
        let Some((key, rest)) = split else {
            continue;
        };
        if !(rest.is_empty() || rest.starts_with([' ', '\t'])) {
            continue;
        }
        let key = key.to_string();
        if let Some(first) = seen.insert(key.clone(), i + 1) {
            return Some(format!(
                "line {}: `{key}` is given twice (first at line {first}); give it once",
                i + 1
            ));
        }
    }
    None
}

/// serde_yaml_ng's message on one line ("... at line 7 column 9").
fn one_line(e: &serde_yaml_ng::Error) -> String {
    e.to_string().replace('\n', " ")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    version: u32,
    #[serde(default)]
    protect: Vec<ProtectPattern>,
    #[serde(default)]
    limits: Limits,
    policies: Vec<PolicyEntry>,
}

/// A `protect` entry, validated where it is read (so the error carries its line).
#[derive(Deserialize)]
#[serde(try_from = "String")]
struct ProtectPattern(Target);

impl TryFrom<String> for ProtectPattern {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Target::parse(&s)
            .map(ProtectPattern)
            .map_err(|e| format!("protect pattern '{s}': {e}"))
    }
}

/// A repository pattern.
#[derive(Deserialize)]
#[serde(try_from = "String")]
struct RepoPattern(Matcher);

impl TryFrom<String> for RepoPattern {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        target::repo_matcher(&s)
            .map(RepoPattern)
            .map_err(|e| format!("repository pattern '{s}': {e}"))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    repositories: Vec<RepoPattern>,
    #[serde(default)]
    exclude: Vec<RepoPattern>,
    keep: Vec<KeepEntry>,
    #[serde(default)]
    untagged: Untagged,
}

/// A policy, validated as a whole where it is read.
#[derive(Deserialize)]
#[serde(try_from = "RawPolicy")]
struct PolicyEntry(Policy);

impl TryFrom<RawPolicy> for PolicyEntry {
    type Error = String;
    fn try_from(p: RawPolicy) -> Result<Self, String> {
        if p.repositories.is_empty() {
            return Err("a policy needs at least one pattern in repositories".into());
        }
        if p.keep.is_empty() {
            return Err("keep is empty: a policy that keeps nothing would remove every tag (to do that, name 'REPO:*' as a target)".into());
        }
        Ok(PolicyEntry(Policy {
            repositories: p.repositories.into_iter().map(|r| r.0).collect(),
            exclude: p.exclude.into_iter().map(|r| r.0).collect(),
            keep: p.keep.into_iter().map(|k| k.0).collect(),
            untagged: p.untagged,
        }))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeep {
    last: Option<usize>,
    order: Option<Order>,
    tags: Option<String>,
    pushed_within: Option<String>,
    pulled_within: Option<String>,
}

/// One keep rule, validated where it is read.
#[derive(Deserialize)]
#[serde(try_from = "RawKeep")]
struct KeepEntry(Rule);

impl TryFrom<RawKeep> for KeepEntry {
    type Error = String;
    fn try_from(k: RawKeep) -> Result<Self, String> {
        let given = [
            k.last.is_some(),
            k.tags.is_some(),
            k.pushed_within.is_some(),
            k.pulled_within.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if given != 1 {
            return Err(if given == 0 {
                "a keep rule needs one of last, tags, pushed_within, pulled_within".into()
            } else {
                "a keep rule has exactly one of last, tags, pushed_within, pulled_within (write several rules)".into()
            });
        }
        let rule = if let Some(n) = k.last {
            if n == 0 {
                return Err(
                    "last: 0 would keep nothing (to remove every tag, name 'REPO:*' as a target)"
                        .into(),
                );
            }
            Rule::Last {
                n,
                order: k.order.unwrap_or_default(),
            }
        } else if let Some(re) = k.tags {
            Rule::Tags(regex::Regex::new(&re).map_err(|e| {
                format!(
                    "tags: invalid regex '{re}': {}",
                    e.to_string().lines().last().unwrap_or("")
                )
            })?)
        } else if let Some(d) = k.pushed_within {
            Rule::PushedWithin(parse_duration("pushed_within", &d)?)
        } else {
            let d = k.pulled_within.unwrap_or_default();
            Rule::PulledWithin(parse_duration("pulled_within", &d)?)
        };
        if k.order.is_some() && !matches!(rule, Rule::Last { .. }) {
            return Err("order applies to a last rule only".into());
        }
        Ok(KeepEntry(rule))
    }
}

fn parse_duration(key: &str, d: &str) -> Result<Duration, String> {
    match humantime::parse_duration(d) {
        Ok(x) if !x.is_zero() => Ok(x),
        Ok(_) => Err(format!("{key}: '{d}' is zero")),
        Err(e) => Err(format!(
            "{key}: invalid duration '{d}': {e} (examples: 30d, 12h, 2w)"
        )),
    }
}

impl<'de> Deserialize<'de> for Order {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Order, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "pushed" => Ok(Order::Pushed),
            "semver" => Ok(Order::Semver),
            "name" => Ok(Order::Name),
            _ => Err(serde::de::Error::custom(format!(
                "order: '{s}' is not one of pushed, semver, name"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
version: 1
protect: ["**:latest", "prod/**:v*"]     # REPO:TAG patterns nothing removes; never counted
limits: {max_delete_percent: 30}        # refuse (exit 3, nothing changed) above this share
policies:                               # the FIRST policy whose repositories match applies
  - repositories: ["team0/**", "app1"]  # the target pattern syntax (*, ?, **)
    exclude: ["team0/keepme"]
    keep:                               # a tag stays if ANY keep rule keeps it
      - last: 3                         # N most recent; order: pushed (default) | semver | name
      - tags: '^release-'               # regex on the tag, unanchored unless anchored
      - pushed_within: 30d
    untagged: delete                    # delete (default) | keep
  - repositories: ["**"]
    keep: [{last: 10, order: semver}]
"#;

    #[test]
    fn the_documented_example_parses() {
        let p = Policies::parse(EXAMPLE).unwrap();
        assert_eq!(p.protect.len(), 2);
        assert_eq!(p.limits.max_delete_percent, Some(30.0));
        assert_eq!(p.policies.len(), 2);
        assert_eq!(p.policies[0].keep.len(), 3);
        assert!(matches!(
            p.policies[1].keep[0],
            Rule::Last {
                n: 10,
                order: Order::Semver
            }
        ));
    }

    #[test]
    fn the_first_matching_policy_applies_and_exclude_falls_through() {
        let p = Policies::parse(EXAMPLE).unwrap();
        assert_eq!(p.for_repo("team0/app").map(|x| x.0), Some(1));
        assert_eq!(p.for_repo("team0/a/b").map(|x| x.0), Some(1));
        assert_eq!(p.for_repo("app1").map(|x| x.0), Some(1));
        assert_eq!(p.for_repo("team0/keepme").map(|x| x.0), Some(2));
        assert_eq!(p.for_repo("other").map(|x| x.0), Some(2));
        let only =
            Policies::parse("version: 1\npolicies: [{repositories: [app], keep: [{last: 1}]}]")
                .unwrap();
        assert!(only.for_repo("other").is_none(), "no policy: untouched");
    }

    #[test]
    fn protect_patterns_cover_repo_and_tag() {
        let p = Policies::parse(EXAMPLE).unwrap();
        assert!(p.protector("a/b/c", "latest").is_some());
        assert!(p.protector("prod/x", "v2").is_some());
        assert!(p.protector("prod/x", "build-2").is_none());
        assert!(p.protector("dev/x", "v2").is_none());
    }

    fn err(yaml: &str) -> String {
        match Policies::parse(yaml) {
            Ok(_) => panic!("accepted: {yaml}"),
            Err(e) => e,
        }
    }

    #[test]
    fn mistakes_are_refused_naming_the_line() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "version: 1\npolicies:\n  - repositories: [a]\n    keep: [{last: 1}]\n# again\npolicies:\n  - repositories: [b]\n    keep: [{last: 2}]\n",
                "`policies` is given twice (first at line 2)",
                "line 6",
            ),
            (
                "version: 1\nprotect: [a]\n\"protect\": [b]\npolicies: []\n",
                "given twice",
                "line 3",
            ),
            ("", "has no content", "line 1"),
            ("# nothing yet\n\n", "has no content", "line 1"),
            (
                "version: 1\npolicies:\n  - repositories: [a]\n    keep: [{last: 1}]\n    keep: [{last: 2}]\n",
                "duplicate field `keep` at line 3",
                "line 3",
            ),
            (
                "version: 1\npolicies:\n  - repositories: [a]\n    keep: [{last: 3}]\n    keeep: []\n",
                "unknown field `keeep`",
                "line 5",
            ),
            (
                "version: 1\npolicies:\n  - repositories: [a]\n    keep:\n      - last: 0\n",
                "last: 0",
                "line 5",
            ),
            (
                "version: 1\npolicies:\n  - repositories: [a]\n    keep:\n      - last: three\n",
                "invalid type",
                "line 5",
            ),
            (
                "version: 1\npolicies:\n  - repositories: [a]\n    keep:\n      - tags: '(unclosed'\n",
                "invalid regex '(unclosed'",
                "line 5",
            ),
            (
                "version: 1\npolicies:\n  - repositories: ['Bad//x']\n    keep: [{last: 1}]\n",
                "repository pattern 'Bad//x'",
                "line 3",
            ),
            (
                "version: 1\nprotect: ['a:b:c']\npolicies: []\n",
                "protect pattern 'a:b:c'",
                "line 2",
            ),
            (
                "version: 1\npolicies:\n  - repositories: [a]\n    keep:\n      - pushed_within: soon\n",
                "invalid duration 'soon'",
                "line 5",
            ),
            (
                "version: 1\npolicies:\n  - repositories: [a]\n    keep:\n      - {last: 2, tags: x}\n",
                "exactly one of",
                "line 5",
            ),
            (
                "version: 1\npolicies:\n  - repositories: [a]\n    keep: [{last: 2, order: newest}]\n",
                "order: 'newest'",
                "line 4",
            ),
            (
                "version: 1\npolicies:\n  - repositories: [a]\n    keep: []\n",
                "keep is empty",
                "line 3",
            ),
            (
                "version: 1\npolicies:\n  - repositories: [a]\n    keep: [{last: 1}]\n    untagged: maybe\n",
                "unknown variant `maybe`",
                "line 5",
            ),
        ];
        for (yaml, what, line) in cases {
            let e = err(yaml);
            assert!(e.contains(what), "{yaml}\n=> {e}\n(wanted '{what}')");
            assert!(e.contains(line), "{yaml}\n=> {e}\n(wanted '{line}')");
            assert!(!e.contains('\n'), "one line: {e}");
        }
        assert!(err("version: 2\npolicies: []\n").contains("version: 2"));
        let p = Policies::parse(
            "version: 1\npolicies:\n  - repositories: [a]\n    keep: [{pulled_within: 30d}]\n    untagged: {keep_pulled_within: 7d}\n",
        )
        .unwrap();
        assert!(p.uses_pulls());
        assert_eq!(
            p.policies[0].untagged,
            Untagged::KeepPulledWithin(Duration::from_secs(7 * 86_400))
        );
        assert!(!Policies::parse(EXAMPLE).unwrap().uses_pulls());
        assert!(err("version: 1\npolicies:\n  - repositories: [a]\n    keep: [{last: 1}]\n    untagged: {keep_pulled_within: soon}\n").contains("keep_pulled_within"));
        assert!(
            err("version: 1\nlimits: {max_delete_percent: 130}\npolicies: []\n")
                .contains("not a percentage")
        );
    }
}
