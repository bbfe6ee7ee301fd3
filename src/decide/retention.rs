//! Retention: which of a repository's tags a policy keeps, and why. Pure: `now` is a parameter.
//!
//! A policy is a list of keep rules; a tag stays if **any** rule keeps it:
//! - `tags: REGEX` (`--keep`): matching tags stay and do not count toward `last` rules ("the
//!   10 newest builds, and every release besides").
//! - `last: N` (`--keep-last`), with an order: `pushed` (default: push time = mtime of
//!   `current/link`, newest first), `semver` (highest version first; a leading `v` is allowed;
//!   tags that are not versions rank after every version, by name), or `name` (natural order,
//!   greatest first: `build-10` after `build-9`). Equal keys are ordered by name, so the result
//!   never depends on directory order. N = 0 is refused where it is read.
//! - `pushed_within: D` (`--older-than D`): tags pushed after `now - D` stay.
//!
//! So `--keep-last 10 --older-than 30d` removes a tag only when it is beyond the 10 newest
//! **and** older than 30 days. A tag without a push time (its `current/link` is missing) always
//! stays (and is reported), whatever the rules.
//!
//! Attachments (see [`crate::attach`]) and protected tags never reach [`decide`]: the plan
//! sets them apart first, so they are never counted.

use crate::scan::Tag;
use regex::Regex;
use serde::Serialize;
use std::cmp::Ordering;
use std::time::{Duration, SystemTime};

/// How a `last` rule ranks tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    /// By push time, newest first (default).
    #[default]
    Pushed,
    /// By semantic version, highest first; non-versions after, by name.
    Semver,
    /// By natural name order, greatest first.
    Name,
}

impl std::fmt::Display for Order {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Order::Pushed => "pushed",
            Order::Semver => "semver",
            Order::Name => "name",
        })
    }
}

/// One keep rule.
#[derive(Debug, Clone)]
pub enum Rule {
    /// Keep the N first in `order` (N ≥ 1).
    Last {
        /// N.
        n: usize,
        /// The ranking.
        order: Order,
    },
    /// Keep tags matching the regex (unanchored unless the user anchors it).
    Tags(Regex),
    /// Keep tags pushed within this duration of `now`.
    PushedWithin(Duration),
    /// Keep tags pulled (by name, or their manifest by digest) within this duration of `now`,
    /// as recorded by the supervisor ([`crate::activity`]).
    PulledWithin(Duration),
}

/// Why a tag stays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "why", rename_all = "snake_case")]
pub enum Kept {
    /// The policy file's `protect` names it: nothing removes it.
    Protected {
        /// The `REPO:TAG` pattern.
        pattern: String,
    },
    /// It matches a `tags` rule (`--keep`).
    Matches {
        /// The regex.
        regex: String,
    },
    /// It is among the first N of a `last` rule.
    Newest {
        /// Its rank, 1 = first.
        rank: usize,
        /// The rule's order.
        order: Order,
    },
    /// It was pushed within a `pushed_within` rule (`--older-than`).
    Recent {
        /// The rule's duration, as humantime prints it.
        within: String,
    },
    /// It was pulled within a `pulled_within` rule.
    Pulled {
        /// The rule's duration, as humantime prints it.
        within: String,
    },
    /// No push time (missing `current/link`).
    UnknownAge,
    /// An attachment (signature, attestation, SBOM, referrers index): it stays while its
    /// subject stays, and goes with it.
    Attachment {
        /// The subject's digest.
        subject: String,
    },
}

impl std::fmt::Display for Kept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kept::Protected { pattern } => write!(f, "protected by '{pattern}'"),
            Kept::Matches { regex } => write!(f, "matches '{regex}'"),
            Kept::Newest {
                rank,
                order: Order::Pushed,
            } => write!(f, "newest #{rank}"),
            Kept::Newest { rank, order } => write!(f, "#{rank} by {order}"),
            Kept::Recent { within } => write!(f, "pushed within {within}"),
            Kept::Pulled { within } => write!(f, "pulled within {within}"),
            Kept::UnknownAge => f.write_str("push time unknown (no current/link)"),
            Kept::Attachment { subject } => {
                write!(f, "attachment of {}, stays with it", short(subject))
            }
        }
    }
}

fn short(d: &str) -> &str {
    &d[..d.len().min(19)]
}

/// Tags to remove, each with the reason.
pub type Removed<'a> = Vec<(&'a Tag, String)>;
/// Tags kept, each with why.
pub type Retained<'a> = Vec<(&'a Tag, Kept)>;

/// When a tag was last pulled (by name or by its manifest's digest), if known.
pub type PulledAt<'a> = &'a dyn Fn(&Tag) -> Option<SystemTime>;

/// The decision for one repository's candidate tags under `rules`; `pulled` answers
/// `pulled_within` rules.
pub fn decide<'a>(
    tags: &[&'a Tag],
    rules: &[Rule],
    now: SystemTime,
    pulled: PulledAt,
) -> (Removed<'a>, Retained<'a>) {
    let mut kept = Vec::new();
    let mut counted: Vec<&Tag> = Vec::new();
    for t in tags {
        let re = rules.iter().find_map(|r| match r {
            Rule::Tags(re) if re.is_match(&t.name) => Some(re),
            _ => None,
        });
        match re {
            Some(re) => kept.push((
                *t,
                Kept::Matches {
                    regex: re.as_str().to_string(),
                },
            )),
            None if t.pushed.is_none() => kept.push((*t, Kept::UnknownAge)),
            None => counted.push(t),
        }
    }
    // For each tag, the first rule (in the user's order) that keeps it.
    let mut why: Vec<Option<Kept>> = vec![None; counted.len()];
    for rule in rules {
        match rule {
            Rule::Tags(_) => {}
            Rule::Last { n, order } => {
                let mut idx: Vec<usize> = (0..counted.len()).collect();
                idx.sort_by(|&a, &b| rank(counted[a], counted[b], *order));
                for (r, &i) in idx.iter().take(*n).enumerate() {
                    why[i].get_or_insert(Kept::Newest {
                        rank: r + 1,
                        order: *order,
                    });
                }
            }
            Rule::PushedWithin(d) => {
                let cutoff = now.checked_sub(*d).unwrap_or(SystemTime::UNIX_EPOCH);
                for (i, t) in counted.iter().enumerate() {
                    if t.pushed.is_some_and(|p| p >= cutoff) {
                        why[i].get_or_insert(Kept::Recent {
                            within: humantime::format_duration(*d).to_string(),
                        });
                    }
                }
            }
            Rule::PulledWithin(d) => {
                let cutoff = now.checked_sub(*d).unwrap_or(SystemTime::UNIX_EPOCH);
                for (i, t) in counted.iter().enumerate() {
                    if pulled(t).is_some_and(|p| p >= cutoff) {
                        why[i].get_or_insert(Kept::Pulled {
                            within: humantime::format_duration(*d).to_string(),
                        });
                    }
                }
            }
        }
    }
    let reason = removal_reason(rules);
    let mut remove = Vec::new();
    for (t, w) in counted.into_iter().zip(why) {
        match w {
            Some(k) => kept.push((t, k)),
            None => remove.push((t, reason.clone())),
        }
    }
    (remove, kept)
}

/// Why a tag no rule keeps goes: "beyond the 10 newest and older than 30days".
fn removal_reason(rules: &[Rule]) -> String {
    let why: Vec<String> = rules
        .iter()
        .filter_map(|r| match r {
            Rule::Last {
                n,
                order: Order::Pushed,
            } => Some(format!("beyond the {n} newest")),
            Rule::Last { n, order } => Some(format!("beyond the first {n} by {order}")),
            Rule::PushedWithin(d) => Some(format!("older than {}", humantime::format_duration(*d))),
            Rule::PulledWithin(d) => Some(format!(
                "not pulled within {}",
                humantime::format_duration(*d)
            )),
            Rule::Tags(_) => None,
        })
        .collect();
    if why.is_empty() {
        "kept by no rule".into()
    } else {
        why.join(" and ")
    }
}

/// The ranking of a `last` rule: `Less` means `a` comes first (is kept first).
fn rank(a: &Tag, b: &Tag, order: Order) -> Ordering {
    match order {
        Order::Pushed => b.pushed.cmp(&a.pushed).then_with(|| a.name.cmp(&b.name)),
        Order::Semver => match (version(&a.name), version(&b.name)) {
            (Some(x), Some(y)) => y.cmp(&x).then_with(|| a.name.cmp(&b.name)),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => natural(&b.name, &a.name),
        },
        Order::Name => natural(&b.name, &a.name),
    }
}

/// A tag as a semantic version: `1.2.3`, `v1.2.3-rc.1`, `1.2.3+build`.
fn version(tag: &str) -> Option<semver::Version> {
    semver::Version::parse(tag.strip_prefix('v').unwrap_or(tag)).ok()
}

/// Natural order: runs of digits compare as numbers (`build-9` < `build-10`), the rest
/// byte by byte; equal by that, the plain byte order decides (`01` vs `1`).
pub fn natural(a: &str, b: &str) -> Ordering {
    let (x, y) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < x.len() && j < y.len() {
        if x[i].is_ascii_digit() && y[j].is_ascii_digit() {
            let si = i;
            while i < x.len() && x[i].is_ascii_digit() {
                i += 1;
            }
            let sj = j;
            while j < y.len() && y[j].is_ascii_digit() {
                j += 1;
            }
            let na = trim_zeros(&x[si..i]);
            let nb = trim_zeros(&y[sj..j]);
            let c = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
            if c != Ordering::Equal {
                return c;
            }
        } else {
            if x[i] != y[j] {
                return x[i].cmp(&y[j]);
            }
            i += 1;
            j += 1;
        }
    }
    (x.len() - i).cmp(&(y.len() - j)).then_with(|| x.cmp(y))
}

fn trim_zeros(d: &[u8]) -> &[u8] {
    let n = d.iter().take_while(|b| **b == b'0').count();
    &d[n..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::{Digest, Link};

    const DAY: u64 = 86_400;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1000 * DAY)
    }

    fn tag(name: &str, days_ago: Option<u64>) -> Tag {
        Tag {
            name: name.into(),
            current: Link::Ok(Digest([1; 32])),
            pushed: days_ago.map(|d| now() - Duration::from_secs(d * DAY)),
            history: vec![],
        }
    }

    fn run(tags: &[Tag], rules: &[Rule]) -> (Vec<String>, Vec<(String, Kept)>) {
        let refs: Vec<&Tag> = tags.iter().collect();
        let (rm, kept) = decide(&refs, rules, now(), &|_| None);
        let mut rm: Vec<String> = rm.into_iter().map(|(t, _)| t.name.clone()).collect();
        rm.sort();
        let mut kept: Vec<(String, Kept)> =
            kept.into_iter().map(|(t, k)| (t.name.clone(), k)).collect();
        kept.sort_by(|a, b| a.0.cmp(&b.0));
        (rm, kept)
    }

    fn last(n: usize) -> Rule {
        Rule::Last {
            n,
            order: Order::Pushed,
        }
    }

    fn days(d: u64) -> Rule {
        Rule::PushedWithin(Duration::from_secs(d * DAY))
    }

    fn newest(rank: usize) -> Kept {
        Kept::Newest {
            rank,
            order: Order::Pushed,
        }
    }

    fn recent(d: u64) -> Kept {
        Kept::Recent {
            within: humantime::format_duration(Duration::from_secs(d * DAY)).to_string(),
        }
    }

    fn tags() -> Vec<Tag> {
        vec![
            tag("b1", Some(1)),
            tag("b2", Some(10)),
            tag("b3", Some(100)),
            tag("v1.0", Some(400)),
            tag("b4", Some(200)),
        ]
    }

    #[test]
    fn keep_last_keeps_the_newest() {
        let (rm, kept) = run(&tags(), &[last(2)]);
        assert_eq!(rm, ["b3", "b4", "v1.0"]);
        assert_eq!(kept, [("b1".into(), newest(1)), ("b2".into(), newest(2))]);
    }

    #[test]
    fn keep_last_larger_than_the_tag_count_keeps_everything() {
        let (rm, kept) = run(&tags(), &[last(50)]);
        assert!(rm.is_empty());
        assert_eq!(kept.len(), 5);
    }

    #[test]
    fn older_than_alone() {
        let (rm, _) = run(&tags(), &[days(90)]);
        assert_eq!(rm, ["b3", "b4", "v1.0"]);
    }

    #[test]
    fn any_rule_keeps_so_count_and_age_must_both_agree_to_remove() {
        let (rm, kept) = run(&tags(), &[last(1), days(150)]);
        assert_eq!(rm, ["b4", "v1.0"]);
        assert!(kept.contains(&("b2".into(), recent(150))));
        assert!(kept.contains(&("b3".into(), recent(150))));
        // The first rule that keeps a tag is the reason given, in the user's order.
        assert!(kept.contains(&("b1".into(), newest(1))));
        let (_, kept) = run(&tags(), &[days(150), last(1)]);
        assert!(kept.contains(&("b1".into(), recent(150))));
    }

    #[test]
    fn regex_kept_tags_do_not_count_toward_last() {
        let rules = [
            last(2),
            Rule::Tags(Regex::new(r"^v\d").unwrap()),
            Rule::Tags(Regex::new("^b1$").unwrap()),
        ];
        let (rm, kept) = run(&tags(), &rules);
        assert_eq!(rm, ["b4"]);
        assert!(kept.contains(&(
            "v1.0".into(),
            Kept::Matches {
                regex: r"^v\d".into()
            }
        )));
        assert!(kept.contains(&(
            "b1".into(),
            Kept::Matches {
                regex: "^b1$".into()
            }
        )));
        assert!(kept.contains(&("b2".into(), newest(1))));
        assert!(kept.contains(&("b3".into(), newest(2))));
    }

    #[test]
    fn unanchored_regex_matches_anywhere_as_written() {
        let (rm, _) = run(&tags(), &[Rule::Tags(Regex::new("1").unwrap())]);
        assert_eq!(rm, ["b2", "b3", "b4"]);
    }

    #[test]
    fn ties_are_broken_by_name_deterministically() {
        let same = vec![tag("c", Some(5)), tag("a", Some(5)), tag("b", Some(5))];
        let (rm, kept) = run(&same, &[last(2)]);
        assert_eq!(rm, ["c"]);
        assert_eq!(kept, [("a".into(), newest(1)), ("b".into(), newest(2))]);
        let reversed: Vec<Tag> = same.into_iter().rev().collect();
        assert_eq!(run(&reversed, &[last(2)]).0, ["c"]);
    }

    #[test]
    fn unknown_push_time_is_kept() {
        let t = vec![tag("broken", None), tag("old", Some(500))];
        let (rm, kept) = run(&t, &[days(1)]);
        assert_eq!(rm, ["old"]);
        assert_eq!(kept, [("broken".into(), Kept::UnknownAge)]);
        // Whatever the order.
        let semver = Rule::Last {
            n: 1,
            order: Order::Semver,
        };
        let (rm, _) = run(&[tag("broken", None), tag("1.0.0", Some(1))], &[semver]);
        assert!(rm.is_empty());
    }

    #[test]
    fn semver_order_ranks_versions_by_precedence_and_the_rest_after_by_name() {
        let t: Vec<Tag> = [
            "1.10.0",
            "v1.9.0",
            "1.10.0-rc.1",
            "2.0.0-alpha",
            "latest",
            "nightly",
            "1.2",
        ]
        .iter()
        .map(|n| tag(n, Some(1)))
        .collect();
        let order = |n: usize| {
            let (_, kept) = run(
                &t,
                &[Rule::Last {
                    n,
                    order: Order::Semver,
                }],
            );
            let mut k: Vec<(usize, String)> = kept
                .into_iter()
                .map(|(name, k)| match k {
                    Kept::Newest { rank, .. } => (rank, name),
                    other => panic!("{other:?}"),
                })
                .collect();
            k.sort();
            k.into_iter().map(|(_, n)| n).collect::<Vec<_>>()
        };
        assert_eq!(
            order(7),
            [
                "2.0.0-alpha",
                "1.10.0",
                "1.10.0-rc.1",
                "v1.9.0",
                "nightly",
                "latest",
                "1.2"
            ]
        );
        assert_eq!(order(2), ["2.0.0-alpha", "1.10.0"]);
    }

    #[test]
    fn name_order_is_natural_greatest_first() {
        let t: Vec<Tag> = ["build-9", "build-10", "build-100", "build-2"]
            .iter()
            .map(|n| tag(n, Some(1)))
            .collect();
        let (rm, _) = run(
            &t,
            &[Rule::Last {
                n: 2,
                order: Order::Name,
            }],
        );
        assert_eq!(rm, ["build-2", "build-9"]);
        assert_eq!(natural("a01", "a1"), Ordering::Less);
        assert_eq!(natural("a2", "a10"), Ordering::Less);
        assert_eq!(natural("a", "a0"), Ordering::Less);
    }

    #[test]
    fn several_last_rules_each_keep_their_own_first() {
        let t = vec![
            tag("1.0.0", Some(300)),
            tag("2.0.0", Some(200)),
            tag("build-5", Some(1)),
            tag("build-4", Some(2)),
        ];
        let rules = [
            Rule::Last {
                n: 1,
                order: Order::Semver,
            },
            last(1),
        ];
        let (rm, kept) = run(&t, &rules);
        assert_eq!(rm, ["1.0.0", "build-4"]);
        assert!(kept.contains(&(
            "2.0.0".into(),
            Kept::Newest {
                rank: 1,
                order: Order::Semver
            }
        )));
        assert!(kept.contains(&("build-5".into(), newest(1))));
    }
}

#[cfg(test)]
mod pulled_tests {
    use super::*;
    use crate::digest::{Digest, Link};

    #[test]
    fn pulled_within_keeps_tags_pulled_recently_whatever_their_age() {
        let day = Duration::from_secs(86_400);
        let now = SystemTime::UNIX_EPOCH + 1000 * day;
        let tag = |name: &str| Tag {
            name: name.into(),
            current: Link::Ok(Digest([1; 32])),
            pushed: Some(now - 500 * day),
            history: vec![],
        };
        let (a, b, c) = (tag("a"), tag("b"), tag("c"));
        let pulled = |t: &Tag| match t.name.as_str() {
            "a" => Some(now - 2 * day),
            "b" => Some(now - 60 * day),
            _ => None,
        };
        let (rm, kept) = decide(&[&a, &b, &c], &[Rule::PulledWithin(30 * day)], now, &pulled);
        let rm: Vec<&str> = rm.iter().map(|(t, _)| t.name.as_str()).collect();
        assert_eq!(rm, ["b", "c"]);
        assert_eq!(kept.len(), 1);
        assert!(matches!(kept[0].1, Kept::Pulled { .. }));
    }
}
