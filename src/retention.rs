//! Retention: which of a repository's tags a policy keeps, and why. Pure: `now` is a parameter.
//!
//! - `--keep REGEX` (repeatable): matching tags are never removed and do not count toward
//!   `--keep-last` ("the 10 newest builds, and every release besides").
//! - `--keep-last N`: of the other tags, the N most recently pushed stay (push time = mtime
//!   of `current/link`; equal times are ordered by name, so the result never depends on
//!   directory order). N = 0 is refused at the command line: "remove every tag" is `REPO:*`.
//! - `--older-than D`: only tags pushed before `now - D` may go.
//! - Both: a tag goes only when it is beyond the N newest **and** older than D.
//! - A tag whose `current/link` is missing has no push time: it is kept (and reported).

use crate::scan::Tag;
use regex::Regex;
use serde::Serialize;
use std::time::{Duration, SystemTime};

/// A retention policy.
#[derive(Debug, Clone, Default)]
pub struct Retention {
    /// `--keep-last N` (N ≥ 1).
    pub keep_last: Option<usize>,
    /// `--older-than D`.
    pub older_than: Option<Duration>,
    /// `--keep REGEX`, as written by the user (the regex crate's syntax, unanchored unless
    /// the user anchors it).
    pub keep: Vec<Regex>,
}

/// Why a tag stays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "why", rename_all = "snake_case")]
pub enum Kept {
    /// It matches a `--keep` regex.
    Protected {
        /// The regex.
        regex: String,
    },
    /// It is among the N newest.
    Newest {
        /// Its rank, 1 = newest.
        rank: usize,
    },
    /// It was pushed within `--older-than`.
    Recent,
    /// No push time (missing `current/link`).
    UnknownAge,
}

impl std::fmt::Display for Kept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kept::Protected { regex } => write!(f, "protected by --keep '{regex}'"),
            Kept::Newest { rank } => write!(f, "newest #{rank}"),
            Kept::Recent => f.write_str("pushed recently"),
            Kept::UnknownAge => f.write_str("push time unknown (no current/link)"),
        }
    }
}

/// Tags to remove, each with the reason.
pub type Removed<'a> = Vec<(&'a Tag, String)>;
/// Tags kept, each with why.
pub type Retained<'a> = Vec<(&'a Tag, Kept)>;

/// The decision for one repository.
pub fn decide<'a>(tags: &[&'a Tag], r: &Retention, now: SystemTime) -> (Removed<'a>, Retained<'a>) {
    let mut remove = Vec::new();
    let mut kept = Vec::new();
    let mut candidates: Vec<&Tag> = Vec::new();
    for t in tags {
        if let Some(re) = r.keep.iter().find(|re| re.is_match(&t.name)) {
            kept.push((
                *t,
                Kept::Protected {
                    regex: re.as_str().to_string(),
                },
            ));
        } else if t.pushed.is_none() {
            kept.push((*t, Kept::UnknownAge));
        } else {
            candidates.push(t);
        }
    }
    // Newest first; equal times by name.
    candidates.sort_by(|a, b| b.pushed.cmp(&a.pushed).then_with(|| a.name.cmp(&b.name)));
    let cutoff = r
        .older_than
        .map(|d| now.checked_sub(d).unwrap_or(SystemTime::UNIX_EPOCH));
    for (i, t) in candidates.into_iter().enumerate() {
        if let Some(n) = r.keep_last {
            if i < n {
                kept.push((t, Kept::Newest { rank: i + 1 }));
                continue;
            }
        }
        if let Some(c) = cutoff {
            if t.pushed.is_some_and(|p| p >= c) {
                kept.push((t, Kept::Recent));
                continue;
            }
        }
        let mut why = Vec::new();
        if let Some(n) = r.keep_last {
            why.push(format!("beyond the {n} newest"));
        }
        if let Some(d) = r.older_than {
            why.push(format!("older than {}", humantime::format_duration(d)));
        }
        remove.push((t, why.join(" and ")));
    }
    (remove, kept)
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

    fn run(tags: &[Tag], r: &Retention) -> (Vec<String>, Vec<(String, Kept)>) {
        let refs: Vec<&Tag> = tags.iter().collect();
        let (rm, kept) = decide(&refs, r, now());
        let mut rm: Vec<String> = rm.into_iter().map(|(t, _)| t.name.clone()).collect();
        rm.sort();
        let mut kept: Vec<(String, Kept)> =
            kept.into_iter().map(|(t, k)| (t.name.clone(), k)).collect();
        kept.sort_by(|a, b| a.0.cmp(&b.0));
        (rm, kept)
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
        let (rm, kept) = run(
            &tags(),
            &Retention {
                keep_last: Some(2),
                ..Default::default()
            },
        );
        assert_eq!(rm, ["b3", "b4", "v1.0"]);
        assert_eq!(
            kept,
            [
                ("b1".into(), Kept::Newest { rank: 1 }),
                ("b2".into(), Kept::Newest { rank: 2 })
            ]
        );
    }

    #[test]
    fn keep_last_larger_than_the_tag_count_keeps_everything() {
        let (rm, kept) = run(
            &tags(),
            &Retention {
                keep_last: Some(50),
                ..Default::default()
            },
        );
        assert!(rm.is_empty());
        assert_eq!(kept.len(), 5);
    }

    #[test]
    fn older_than_alone() {
        let (rm, _) = run(
            &tags(),
            &Retention {
                older_than: Some(Duration::from_secs(90 * DAY)),
                ..Default::default()
            },
        );
        assert_eq!(rm, ["b3", "b4", "v1.0"]);
    }

    #[test]
    fn count_and_age_must_both_agree() {
        let r = Retention {
            keep_last: Some(1),
            older_than: Some(Duration::from_secs(150 * DAY)),
            ..Default::default()
        };
        let (rm, kept) = run(&tags(), &r);
        assert_eq!(rm, ["b4", "v1.0"]);
        assert!(kept.contains(&("b2".into(), Kept::Recent)));
        assert!(kept.contains(&("b3".into(), Kept::Recent)));
    }

    #[test]
    fn protected_tags_do_not_count_toward_keep_last() {
        let r = Retention {
            keep_last: Some(2),
            keep: vec![Regex::new(r"^v\d").unwrap(), Regex::new("^b1$").unwrap()],
            ..Default::default()
        };
        let (rm, kept) = run(&tags(), &r);
        assert_eq!(rm, ["b4"]);
        assert!(kept.contains(&(
            "v1.0".into(),
            Kept::Protected {
                regex: r"^v\d".into()
            }
        )));
        assert!(kept.contains(&(
            "b1".into(),
            Kept::Protected {
                regex: "^b1$".into()
            }
        )));
        assert!(kept.contains(&("b2".into(), Kept::Newest { rank: 1 })));
        assert!(kept.contains(&("b3".into(), Kept::Newest { rank: 2 })));
    }

    #[test]
    fn unanchored_regex_matches_anywhere_as_written() {
        let r = Retention {
            keep_last: Some(0),
            keep: vec![Regex::new("1").unwrap()],
            ..Default::default()
        };
        let (rm, _) = run(&tags(), &r);
        assert_eq!(rm, ["b2", "b3", "b4"]);
    }

    #[test]
    fn ties_are_broken_by_name_deterministically() {
        let same = vec![tag("c", Some(5)), tag("a", Some(5)), tag("b", Some(5))];
        let (rm, kept) = run(
            &same,
            &Retention {
                keep_last: Some(2),
                ..Default::default()
            },
        );
        assert_eq!(rm, ["c"]);
        assert_eq!(
            kept,
            [
                ("a".into(), Kept::Newest { rank: 1 }),
                ("b".into(), Kept::Newest { rank: 2 })
            ]
        );
        let reversed: Vec<Tag> = same.into_iter().rev().collect();
        assert_eq!(
            run(
                &reversed,
                &Retention {
                    keep_last: Some(2),
                    ..Default::default()
                }
            )
            .0,
            ["c"]
        );
    }

    #[test]
    fn unknown_push_time_is_kept() {
        let t = vec![tag("broken", None), tag("old", Some(500))];
        let (rm, kept) = run(
            &t,
            &Retention {
                older_than: Some(Duration::from_secs(DAY)),
                ..Default::default()
            },
        );
        assert_eq!(rm, ["old"]);
        assert_eq!(kept, [("broken".into(), Kept::UnknownAge)]);
    }
}
