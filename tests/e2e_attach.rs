//! End-to-end attachments on a real registry: cosign-style signature tags
//! (`sha256-<digest>.sig`, `.att`, `.sbom`) and OCI 1.1 referrers fallback tags
//! (`sha256-<digest>`, an index of referrers) pushed with skopeo, then cleaned.

mod common;
use common::*;

/// The tag an attachment of `digest` (`sha256:<hex>`) gets: `sha256-<hex><suffix>`.
fn att(digest: &str, suffix: &str) -> String {
    format!("sha256-{}{suffix}", &digest[7..])
}

/// A cosign-style signature (or attestation) image: its own config and one payload layer.
fn signature(payload: &str) -> ImageDir {
    oci_image(&[payload.as_bytes()])
}

/// An OCI 1.1 referrers fallback index for `subject`: an index listing one referrer manifest
/// (an artifact with a `subject`), as oras/notation push it where the registry has no
/// referrers API.
fn fallback_index(subject: &ImageDir, salt: &str) -> ImageDir {
    let top = std::fs::read(subject.dir.join("manifest.json")).unwrap();
    let mut b = Builder::new();
    let m = b.image("amd64", &[format!("sbom {salt}").as_bytes()], false);
    let m = m.replacen(
        r#""layers""#,
        &format!(
            r#""subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":{}}},"layers""#,
            subject.digest,
            top.len()
        ),
        1,
    );
    let kid = b.child(&m, "amd64");
    b.finish(&format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{kid}]}}"#
    ))
}

#[test]
fn signed_images_were_all_removed_when_signatures_counted_toward_keep_last() {
    if !e2e_available() {
        return;
    }
    let mut r = Registry::start();
    // v1..v4, each signed right after its push (the signature is the newer tag), an
    // attestation of v4, a referrers fallback index of v4, and an orphan signature.
    let mut images = Vec::new();
    for i in 1..=4u64 {
        let img = oci_image(&[b"signed base", format!("app v{i}").as_bytes()]);
        r.push(&img, &format!("app:v{i}"));
        pushed(&r.root, "app", &format!("v{i}"), 50 - 10 * i);
        let sig = att(&img.digest, ".sig");
        r.push(&signature(&format!("sig of v{i}")), &format!("app:{sig}"));
        pushed(&r.root, "app", &sig, 49 - 10 * i);
        images.push(img);
    }
    let v4 = &images[3];
    let v4_att = att(&v4.digest, ".att");
    r.push(&signature("attestation of v4"), &format!("app:{v4_att}"));
    let v4_fallback = att(&v4.digest, "");
    let fallback = fallback_index(v4, "v4");
    r.push(&fallback, &format!("app:{v4_fallback}"));
    let orphan = att(&sha(b"an image that was never here"), ".sig");
    let orphan_img = signature("orphan signature");
    r.push(&orphan_img, &format!("app:{orphan}"));
    r.stop();

    // --check names the orphan, and nothing else.
    let check = r.regclean(&["--check", "--json"]);
    let j: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    let kinds: Vec<(String, String)> = j["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap().to_string(),
                f["tag"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [("orphan_attachment".to_string(), orphan.clone())],
        "{}",
        text(&check)
    );
    let advice = |j: &serde_json::Value| j["findings"][0]["advice"].as_str().unwrap().to_string();
    assert!(advice(&j).contains("a run that prunes this repository removes it"));
    // check_advised_pruning_a_protected_orphan: with the policy file, --check knows that
    // pruning spares what `protect` covers, and says so instead.
    let policy = r.tmp.path().join("protect.yml");
    std::fs::write(
        &policy,
        format!("version: 1\nprotect: ['app:{orphan}']\npolicies:\n  - repositories: [app]\n    keep: [{{last: 2}}]\n"),
    )
    .unwrap();
    let check = r.regclean(&["--check", "--json", "--policy", policy.to_str().unwrap()]);
    assert_eq!(check.status.code(), Some(1), "{}", text(&check));
    let j: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    let a = advice(&j);
    assert!(
        a.contains(&format!("protected by 'app:{orphan}'")) && a.contains("pruning keeps it"),
        "{a}"
    );

    let dry = r.regclean(&["--dry-run", "--all", "--keep-last", "2"]);
    assert_eq!(dry.status.code(), Some(0), "{}", text(&dry));
    let out = String::from_utf8_lossy(&dry.stdout);
    for s in [
        "would remove tag v1".to_string(),
        "would remove tag v2".to_string(),
        "keep tag v4 [newest #1]".to_string(),
        "keep tag v3 [newest #2]".to_string(),
        format!(
            "    attachment {} to prune with it",
            att(&images[0].digest, ".sig")
        ),
        format!(
            "    attachment {} stays with it",
            att(&images[3].digest, ".sig")
        ),
        format!("    attachment {v4_fallback} stays with it"),
        format!("attachment app:{orphan} to prune"),
    ] {
        assert!(out.contains(&s), "dry run lacks '{s}':\n{out}");
    }

    let o = r.regclean(&["--json", "--all", "--keep-last", "2"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let mut want = vec![
        "v3".to_string(),
        "v4".to_string(),
        att(&images[2].digest, ".sig"),
        att(&images[3].digest, ".sig"),
        v4_att.clone(),
        v4_fallback.clone(),
    ];
    want.sort();
    assert_eq!(tags_of(&r.root, "app"), want, "{}", text(&o));

    r.serve(&[]);
    let remaining: Vec<String> = want.iter().map(|t| format!("app:{t}")).collect();
    r.assert_pull(&remaining.iter().map(String::as_str).collect::<Vec<_>>());
    // The fallback index's referrer (its child) pulls too: assert_pull copies every child.
    let gone = [
        "app:v1".to_string(),
        "app:v2".to_string(),
        format!("app:{}", att(&images[0].digest, ".sig")),
        format!("app:{}", att(&images[1].digest, ".sig")),
        format!("app:{orphan}"),
    ];
    r.assert_gone(&gone.iter().map(String::as_str).collect::<Vec<_>>());
    // What the removed signatures pointed to is pruned and collected.
    let (status, _) = r
        .get(&format!("/v2/app/manifests/{}", orphan_img.digest))
        .unwrap();
    assert_eq!(status, 404, "the orphan's signature manifest is pruned");

    // Removing a tag removes its attachments with it; the rest stays.
    r.stop();
    let o = r.regclean(&["app:v4"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(
        tags_of(&r.root, "app"),
        [att(&images[2].digest, ".sig"), "v3".to_string()]
    );
    r.serve(&[]);
    r.assert_pull(&["app:v3", &format!("app:{}", att(&images[2].digest, ".sig"))]);
    r.assert_gone(&[&format!("app:{v4_fallback}"), &format!("app:{v4_att}")]);
    let (status, _) = r
        .get(&format!("/v2/app/manifests/{}", fallback.digest))
        .unwrap();
    assert_eq!(status, 404, "the fallback index goes with v4");
}

#[test]
fn keep_attachments_restores_plain_tag_semantics_and_signature_repositories_are_never_orphans() {
    if !e2e_available() {
        return;
    }
    let mut r = Registry::start();
    let img = oci_image(&[b"plain app"]);
    r.push(&img, "app:v1");
    r.push(&oci_image(&[b"plain app v2"]), "app:v2");
    let sig = att(&img.digest, ".sig");
    r.push(&signature("sig"), &format!("app:{sig}"));
    // cosign's COSIGN_REPOSITORY: signatures of `app` kept in `sigs/app`.
    r.push(&signature("sig elsewhere"), &format!("sigs/app:{sig}"));
    r.stop();

    // Plain semantics: removing v1 leaves its signature (an ordinary tag now).
    let o = r.regclean(&["--keep-attachments", "app:v1"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(tags_of(&r.root, "app"), [sig.clone(), "v2".to_string()]);
    // With attachment rules the signature is now an orphan and goes with the next prune
    // of `app`; the signature repository is never pruned of its signatures.
    let check = r.regclean(&["--check"]);
    assert_eq!(check.status.code(), Some(1), "{}", text(&check));
    assert!(
        text(&check).contains("orphan_attachment"),
        "{}",
        text(&check)
    );
    let o = r.regclean(&["--all", "--keep-last", "1"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(tags_of(&r.root, "app"), ["v2"]);
    assert_eq!(tags_of(&r.root, "sigs/app"), [sig.as_str()]);
    r.serve(&[]);
    r.assert_pull(&["app:v2", &format!("sigs/app:{sig}")]);
}
