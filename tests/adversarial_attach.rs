//! Adversarial review (adv12) of attachments and policy files.

mod common;
use common::*;

fn att(digest: &str, suffix: &str) -> String {
    format!("sha256-{}{suffix}", &digest[7..])
}

fn signature(payload: &str) -> ImageDir {
    oci_image(&[payload.as_bytes()])
}

/// cosign with COSIGN_REPOSITORY=sigs: the signature and SBOM of app:v1 live in `sigs`, and
/// the SBOM is itself signed (`cosign sign --attachment sbom`), which puts
/// `sha256-<sbom manifest>.sig` in `sigs` too. One attachment whose subject `sigs` holds makes
/// the repository lose its "signature repository" status, and `--gc-only` then prunes every
/// signature of every image as an orphan.
#[test]
fn signature_repository_with_a_signed_sbom_lost_every_signature() {
    if !e2e_available() {
        return;
    }
    let mut r = Registry::start();
    let img = oci_image(&[b"adv12 app v1"]);
    r.push(&img, "app:v1");
    let sig = att(&img.digest, ".sig");
    let sbom_tag = att(&img.digest, ".sbom");
    r.push(&signature("sig of v1"), &format!("sigs:{sig}"));
    let sbom = signature("sbom of v1");
    r.push(&sbom, &format!("sigs:{sbom_tag}"));
    let sbom_sig = att(&sbom.digest, ".sig");
    r.push(&signature("sig of the sbom"), &format!("sigs:{sbom_sig}"));
    r.stop();
    let mut want = vec![sig.clone(), sbom_tag.clone(), sbom_sig.clone()];
    want.sort();
    assert_eq!(tags_of(&r.root, "sigs"), want);

    let o = r.regclean(&["--gc-only"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(
        tags_of(&r.root, "sigs"),
        want,
        "signatures of images held elsewhere were pruned:\n{}",
        text(&o)
    );
    r.serve(&[]);
    r.assert_pull(&[
        "app:v1",
        &format!("sigs:{sig}"),
        &format!("sigs:{sbom_tag}"),
        &format!("sigs:{sbom_sig}"),
    ]);
}

/// A tag named `sha256-<its own digest>` (tag-by-digest for immutability) is treated as an
/// attachment of itself: nothing else keeps its subject, so pruning removes the tag and the
/// image. `--gc-only` ("prune untagged manifests") deletes a tagged image.
#[test]
fn tag_named_after_its_own_digest_was_deleted_by_gc_only() {
    if !e2e_available() {
        return;
    }
    let mut r = Registry::start();
    let img = oci_image(&[b"adv12 pinned image"]);
    let tag = att(&img.digest, "");
    r.push(&img, &format!("pinned:{tag}"));
    r.push(&oci_image(&[b"adv12 other"]), "pinned:other");
    r.stop();
    let o = r.regclean(&["--gc-only"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        tags_of(&r.root, "pinned").contains(&tag),
        "a tag pointing at its own subject was pruned:\n{}",
        text(&o)
    );
    r.serve(&[]);
    r.assert_pull(&[&format!("pinned:{tag}"), "pinned:other"]);
}

/// The dry run says "keep tag sha256-<v1>.sig [attachment of ..., stays with it]" in the same
/// report that removes v1 and prunes that very signature; --json lists it under `kept`.
#[test]
fn dry_run_listed_an_attachment_as_kept_while_the_run_removed_it() {
    if !e2e_available() {
        return;
    }
    let mut r = Registry::start();
    let v1 = oci_image(&[b"adv12 dry v1"]);
    r.push(&v1, "app:v1");
    pushed(&r.root, "app", "v1", 20);
    r.push(&oci_image(&[b"adv12 dry v2"]), "app:v2");
    pushed(&r.root, "app", "v2", 10);
    let sig = att(&v1.digest, ".sig");
    r.push(&signature("adv12 sig v1"), &format!("app:{sig}"));
    r.stop();
    let dry = r.regclean(&["--dry-run", "--json", "--all", "--keep-last", "1"]);
    assert_eq!(dry.status.code(), Some(0), "{}", text(&dry));
    let j: serde_json::Value = serde_json::from_slice(&dry.stdout).unwrap();
    let kept: Vec<String> = j["kept"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["tag"].as_str().unwrap().to_string())
        .collect();
    let o = r.regclean(&["--all", "--keep-last", "1"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let left = tags_of(&r.root, "app");
    for k in &kept {
        assert!(
            left.contains(k),
            "the dry run reported '{k}' as kept, the run removed it; kept={kept:?} left={left:?}\n{}",
            String::from_utf8_lossy(&dry.stdout)
        );
    }
}

/// The registry's own dry run refuses (it would delete a blob v2 needs) after pruning took
/// the attachments: exit 3 must mean nothing changed, attachment tags included.
#[test]
fn refused_collection_puts_pruned_attachments_back() {
    if !e2e_available() {
        return;
    }
    let mut r = Registry::start();
    let v1 = oci_image(&[b"adv12 rb v1"]);
    r.push(&v1, "app:v1");
    let v2 = oci_image(&[b"adv12 rb v2"]);
    r.push(&v2, "app:v2");
    let sig = att(&v1.digest, ".sig");
    r.push(&signature("adv12 rb sig"), &format!("app:{sig}"));
    let orphan = att(&sha(b"adv12 nothing"), ".att");
    r.push(&signature("adv12 rb orphan"), &format!("app:{orphan}"));
    r.stop();
    let fake = fake_registry(
        r.tmp.path(),
        &format!(
            "case \"$*\" in *--dry-run*) echo \"blob eligible for deletion: {}\"; echo '1 blobs marked, 1 blobs and 0 manifests eligible for deletion';; *) exit 1;; esac",
            v2.digest
        ),
    );
    let before = full_snapshot(&r.root);
    let o = r.regclean(&[
        "--collector",
        "registry",
        "--registry-bin",
        fake.to_str().unwrap(),
        "app:v1",
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let after = full_snapshot(&r.root);
    let strip = |s: Vec<(String, Vec<u8>)>| -> Vec<(String, Vec<u8>)> {
        s.into_iter()
            .filter(|(p, _)| !p.starts_with(".regclean"))
            .collect()
    };
    assert_same(&strip(before), &strip(after), "refused run");
    r.serve(&[]);
    r.assert_pull(&[
        "app:v1",
        "app:v2",
        &format!("app:{sig}"),
        &format!("app:{orphan}"),
    ]);
}

/// Probes that should hold: a signature of an index child, a signature manifest also tagged
/// by an ordinary tag, a protected orphan, a signature of a removed tag under untagged: keep.
#[test]
fn attachments_of_index_children_aliases_protected_tags_and_untagged_keep_stay() {
    if !e2e_available() {
        return;
    }
    let mut r = Registry::start();
    let idx = multi_arch(false, b"adv12 shared", "adv12");
    r.push(&idx, "app:v1");
    pushed(&r.root, "app", "v1", 30);
    // the first child of the index
    let top = std::fs::read_to_string(idx.dir.join("manifest.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&top).unwrap();
    let child = v["manifests"][0]["digest"].as_str().unwrap().to_string();
    let child_sig = att(&child, ".sig");
    r.push(&signature("adv12 child sig"), &format!("app:{child_sig}"));
    let v2 = oci_image(&[b"adv12 holds v2"]);
    r.push(&v2, "app:v2");
    pushed(&r.root, "app", "v2", 20);
    let v3 = oci_image(&[b"adv12 holds v3"]);
    r.push(&v3, "app:v3");
    pushed(&r.root, "app", "v3", 10);
    // v2's signature, also tagged `v2-signature` (same manifest).
    let s2 = signature("adv12 sig v2");
    let v2_sig = att(&v2.digest, ".sig");
    r.push(&s2, &format!("app:{v2_sig}"));
    r.push(&s2, "app:v2-signature");
    pushed(&r.root, "app", "v2-signature", 5);
    let orphan = att(&sha(b"adv12 gone"), ".sig");
    r.push(
        &signature("adv12 protected orphan"),
        &format!("app:{orphan}"),
    );
    // other: untagged: keep; w1's signature stays although w1 goes.
    let w1 = oci_image(&[b"adv12 w1"]);
    r.push(&w1, "other:w1");
    pushed(&r.root, "other", "w1", 20);
    r.push(&oci_image(&[b"adv12 w2"]), "other:w2");
    pushed(&r.root, "other", "w2", 10);
    let w1_sig = att(&w1.digest, ".sig");
    r.push(&signature("adv12 w1 sig"), &format!("other:{w1_sig}"));
    r.stop();
    let pol = r.tmp.path().join("p.yml");
    std::fs::write(
        &pol,
        format!(
            "version: 1\nprotect: ['app:{orphan}', 'app:v1']\npolicies:\n  - repositories: [app]\n    keep: [{{last: 1}}]\n  - repositories: [other]\n    keep: [{{last: 1}}]\n    untagged: keep\n"
        ),
    )
    .unwrap();
    let o = r.regclean(&["--policy", pol.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let mut want = vec![
        "v1".to_string(),
        child_sig.clone(),
        "v2-signature".to_string(),
        orphan.clone(),
    ];
    want.sort();
    assert_eq!(tags_of(&r.root, "app"), want, "{}", text(&o));
    let mut w = vec!["w2".to_string(), w1_sig.clone()];
    w.sort();
    assert_eq!(tags_of(&r.root, "other"), w, "{}", text(&o));
    r.serve(&[]);
    let refs: Vec<String> = want
        .iter()
        .map(|t| format!("app:{t}"))
        .chain(w.iter().map(|t| format!("other:{t}")))
        .collect();
    r.assert_pull(&refs.iter().map(String::as_str).collect::<Vec<_>>());
}

/// "A repository no policy matches is untouched": a repository holding only `_layers`
/// (no policy matches it) is deleted by a policy run whose only policy names another one.
#[test]
fn policy_run_removed_leftover_layers_of_a_repository_no_policy_matches() {
    let (t, root) = fixture("sample");
    let app1 = repo_path(&root, "team0/app1/_layers/sha256");
    let l = std::fs::read_dir(&app1).unwrap().next().unwrap().unwrap();
    let dst = repo_path(&root, "unmatched/_layers/sha256").join(l.file_name());
    std::fs::create_dir_all(&dst).unwrap();
    std::fs::copy(l.path().join("link"), dst.join("link")).unwrap();
    let pol = t.path().join("p.yml");
    std::fs::write(
        &pol,
        "version: 1\npolicies:\n  - repositories: [team0/app0]\n    keep: [{last: 1}]\n",
    )
    .unwrap();
    let o = run_on(
        &root,
        &["--collector", "native", "--policy", pol.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        repo_path(&root, "unmatched/_layers").exists(),
        "a repository no policy matches was touched:\n{}",
        text(&o)
    );
}
