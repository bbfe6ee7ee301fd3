//! Attachments: tags that exist only to hang something on a manifest.
//!
//! cosign stores signatures, attestations and SBOMs as tags `sha256-<hex>.sig`, `.att`,
//! `.sbom` next to their subject; OCI 1.1 clients (oras, notation, cosign) on a registry
//! without the referrers API (2.8 has none) push an index of referrers under the tag
//! `sha256-<hex>`. They are not versions of the image: counting them toward `--keep-last`
//! would keep signatures instead of images (four signed images and `--keep-last 2` kept one
//! signature and a fallback tag, and removed all four images). So, unless
//! `--keep-attachments` asks for plain tag semantics:
//!
//! - an attachment never counts toward a retention rule and is never a retention candidate;
//! - it stays while its subject stays in the repository (tagged, child of a kept index, kept
//!   by being out of the run's pruning scope or by `--keep-untagged`), and goes with it — the
//!   prune step removes the attachment tag, and what it pointed to is then pruned like any
//!   untagged manifest;
//! - an *orphan* (its subject is not in the repository) is pruned with untagged manifests,
//!   under the same scope rules, and listed by `--check`;
//! - in a repository whose tags are *all* attachments — a signature repository (cosign's
//!   `COSIGN_REPOSITORY` keeps signatures apart from their images) — an attachment whose
//!   subject is not there is never an orphan: its subject lives elsewhere, and pruning it
//!   would delete every signature of every image. (An attachment there whose subject is
//!   there, a signature of an SBOM, follows that subject as anywhere else.) The price: the
//!   signatures left behind when every image of a repository was removed stay until removed
//!   by name (`'REPO:sha256-*'`);
//! - a tag named after the manifest it points to (`sha256-<its own digest>`, as some
//!   mirroring tools tag) is an ordinary tag: it cannot hang on itself.

use crate::digest::Digest;
use crate::scan::Repo;

/// Whether attachment tags get their own rules (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Attachments {
    /// Attachments follow their subject (default).
    #[default]
    Follow,
    /// Plain tag semantics (`--keep-attachments`): they count and stay like any tag.
    Plain,
}

/// The subject a tag name designates: `sha256-<64 lower-case hex>`, optionally followed by
/// `.<suffix>` (`.sig`, `.att`, `.sbom`, or any other a tool uses).
pub fn subject_of(tag: &str) -> Option<Digest> {
    let rest = tag.strip_prefix("sha256-")?;
    let (hex, suffix) = match rest.split_once('.') {
        Some((h, s)) => (h, Some(s)),
        None => (rest, None),
    };
    if suffix.is_some_and(str::is_empty) {
        return None;
    }
    Digest::from_hex(hex.as_bytes())
}

/// What a tag is, for the attachment rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// An ordinary tag (or any tag under [`Attachments::Plain`]).
    Ordinary,
    /// An attachment whose subject is a manifest of the repository.
    Attachment(Digest),
    /// An attachment whose subject is not in the repository.
    Orphan(Digest),
    /// An attachment in a signature repository (see the module docs): it stays.
    External(Digest),
}

impl Role {
    /// Is this tag an attachment of any kind (never a retention candidate)?
    pub fn is_attachment(self) -> bool {
        self != Role::Ordinary
    }
}

/// The roles of a repository's tags, in the order of `repo.tags`.
pub fn roles(repo: &Repo, mode: Attachments) -> Vec<Role> {
    if mode == Attachments::Plain {
        return vec![Role::Ordinary; repo.tags.len()];
    }
    let subjects: Vec<Option<Digest>> = repo
        .tags
        .iter()
        .map(|t| subject_of(&t.name).filter(|s| t.current.digest() != Some(*s)))
        .collect();
    let signature_repo = subjects.iter().all(Option::is_some);
    subjects
        .into_iter()
        .map(|s| match s {
            None => Role::Ordinary,
            Some(d) if repo.has_revision(&d) => Role::Attachment(d),
            Some(d) if signature_repo => Role::External(d),
            Some(d) => Role::Orphan(d),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Link;
    use crate::scan::Tag;

    fn hex(n: u8) -> String {
        Digest([n; 32]).hex()
    }

    fn repo(tags: &[&str], revisions: &[u8]) -> Repo {
        let mut r = Repo {
            name: "app".into(),
            tags: tags
                .iter()
                .map(|t| Tag {
                    name: t.to_string(),
                    current: Link::Ok(Digest([9; 32])),
                    pushed: None,
                    history: vec![],
                })
                .collect(),
            revisions: revisions.iter().map(|n| Digest([*n; 32])).collect(),
            ..Repo::default()
        };
        r.tags.sort_by(|a, b| a.name.cmp(&b.name));
        r.revisions.sort();
        r
    }

    #[test]
    fn cosign_and_fallback_tag_names_designate_their_subject() {
        let h = hex(1);
        for t in [
            format!("sha256-{h}"),
            format!("sha256-{h}.sig"),
            format!("sha256-{h}.att"),
            format!("sha256-{h}.sbom"),
        ] {
            assert_eq!(subject_of(&t), Some(Digest([1; 32])), "{t}");
        }
        for t in [
            "v1".to_string(),
            format!("sha256-{h}."),
            format!("sha256-{}", &h[1..]),
            format!("sha256-{}", hex(0xab).to_uppercase()),
            format!("sha512-{h}"),
            format!("sha256_{h}.sig"),
        ] {
            assert_eq!(subject_of(&t), None, "{t}");
        }
    }

    #[test]
    fn roles_tell_attachments_orphans_and_signature_repositories_apart() {
        let a = format!("sha256-{}.sig", hex(1));
        let o = format!("sha256-{}.sig", hex(2));
        let r = repo(&["v1", &a, &o], &[1, 9]);
        let by_name: Vec<(&str, Role)> = r
            .tags
            .iter()
            .map(|t| t.name.as_str())
            .zip(roles_of(&r))
            .collect();
        assert!(by_name.contains(&(a.as_str(), Role::Attachment(Digest([1; 32])))));
        assert!(by_name.contains(&(o.as_str(), Role::Orphan(Digest([2; 32])))));
        assert!(by_name.contains(&("v1", Role::Ordinary)));
        // Only signatures of images held elsewhere: a signature repository, nothing orphaned;
        // a signature of an SBOM held there follows the SBOM.
        let sigs = repo(&[&a, &o], &[9]);
        assert!(roles_of(&sigs)
            .iter()
            .all(|r| matches!(r, Role::External(_))));
        let sbom_sig = format!("sha256-{}.sig", hex(5));
        let sigs = repo(&[&a, &o, &sbom_sig], &[5, 9]);
        assert_eq!(
            roles_of(&sigs),
            [
                Role::External(Digest([1; 32])),
                Role::External(Digest([2; 32])),
                Role::Attachment(Digest([5; 32]))
            ]
        );
        // A tag named after its own manifest is ordinary.
        let mut own = repo(&[&format!("sha256-{}", hex(9))], &[9]);
        own.tags[0].current = Link::Ok(Digest([9; 32]));
        assert_eq!(roles_of(&own), [Role::Ordinary]);
        // Plain semantics: every tag is ordinary.
        assert!(roles(&r, Attachments::Plain)
            .iter()
            .all(|r| *r == Role::Ordinary));
    }

    fn roles_of(r: &Repo) -> Vec<Role> {
        roles(r, Attachments::Follow)
    }
}
