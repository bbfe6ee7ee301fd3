//! End-to-end: manifests crafted to exercise Go `encoding/json` decoding rules (case-insensitive
//! and Unicode-folded keys, duplicate keys, unknown fields, `null`) are PUT to the real registry
//! (Debian docker-registry 2.8.2), which accepts and serves them; regclean must read them as the
//! registry does: every remaining tag still pulls after removal and collection, and regclean's
//! predicted sweep equals the registry's own dry run.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const BASE: &[u8] = b"shared base layer for the go json tests";

/// A raw HTTP PUT of a manifest; returns (status, body).
fn put_manifest(r: &Registry, repo: &str, reference: &str, ct: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", r.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "PUT /v2/{repo}/manifests/{reference} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let status = buf
        .split(' ')
        .nth(1)
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    let rest = buf.split_once("\r\n\r\n").map(|x| x.1).unwrap_or_default();
    (status, rest.to_string())
}

/// PUTs a crafted manifest, asserts the registry accepts it (201) and serves it byte for byte.
fn put_accepted(r: &Registry, repo: &str, reference: &str, ct: &str, body: &str) {
    let (status, resp) = put_manifest(r, repo, reference, ct, body);
    assert_eq!(status, 201, "PUT {repo}:{reference} {body}: {resp}");
    let (status, served) = r.get(&format!("/v2/{repo}/manifests/{reference}")).unwrap();
    assert_eq!(status, 200, "GET {repo}:{reference}: {served}");
    assert_eq!(served, body, "{repo}:{reference} is served as PUT");
}

/// The pieces of a pushed single-image manifest: (config descriptor, layer descriptors), JSON.
fn parts(img: &ImageDir) -> (String, Vec<String>) {
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(img.dir.join("manifest.json")).unwrap()).unwrap();
    let layers = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.to_string())
        .collect();
    (m["config"].to_string(), layers)
}

/// A descriptor of `img`'s top manifest, for an index.
fn child_desc(img: &ImageDir) -> String {
    let len = std::fs::metadata(img.dir.join("manifest.json"))
        .unwrap()
        .len();
    format!(
        r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":{len}}}"#,
        img.digest
    )
}

fn json(o: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(o)))
}

/// Runs a dry run then the real run of `targets` on the stopped registry's store; asserts the
/// run succeeds and that regclean's prediction (dry run and real run) is exactly the set the
/// registry's own `garbage-collect --dry-run` sweeps.
fn remove_and_collect(r: &Registry, targets: &[&str]) -> serde_json::Value {
    let dry = r.regclean(&[&["--dry-run", "--json"][..], targets].concat());
    assert_eq!(dry.status.code(), Some(0), "{}", text(&dry));
    let predicted = json(&dry)["gc"]["predicted_blobs"].as_u64().unwrap();
    let o = r.regclean(&[&["--json"][..], targets].concat());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let gc = json(&o)["gc"].clone();
    assert_eq!(gc["status"], "done", "{gc}");
    assert_eq!(gc["freed_blobs"].as_u64(), Some(predicted), "{gc}");
    if predicted > 0 {
        // regclean ran the registry's dry run and compared the swept sets.
        assert_eq!(gc["prediction_exact"], true, "{gc}");
        assert_eq!(
            gc["registry_dry_run_blobs"].as_u64(),
            Some(predicted),
            "{gc}"
        );
    }
    // Either way, the registry's own collector finds nothing more to sweep.
    assert_eq!(registry_dry_run_sweeps(r), 0);
    gc
}

/// How many blobs `docker-registry garbage-collect --dry-run` (no `-m`) would delete.
fn registry_dry_run_sweeps(r: &Registry) -> u64 {
    let o = std::process::Command::new("docker-registry")
        .args(["garbage-collect", "--dry-run"])
        .arg(&r.config)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let summary = out
        .lines()
        .find(|l| l.contains("blobs marked"))
        .unwrap_or_else(|| panic!("no GC summary: {}", text(&o)));
    // "N blobs marked, N blobs and N manifests eligible for deletion"
    let n = summary.split(", ").nth(1).and_then(|x| x.split(' ').next());
    n.and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("bad summary {summary}"))
}

/// Runs `--check --json`; returns (exit code, findings).
fn check(r: &Registry) -> (Option<i32>, Vec<serde_json::Value>) {
    let o = r.regclean(&["--check", "--json"]);
    let j = json(&o);
    (o.status.code(), j["findings"].as_array().unwrap().clone())
}

/// The defect: the registry accepted and served an OCI index whose children were under
/// `"Manifests"`; regclean saw no children, pruned them when their own tags were removed
/// (exit 0), and `--check` said clean.
#[test]
fn children_under_capitalised_manifests_key_were_pruned_with_their_tags() {
    if !e2e_available() {
        return;
    }
    let mut r = Registry::start();
    let amd = oci_image(&[BASE, b"amd64 own layer"]);
    let arm = oci_image(&[BASE, b"arm64 own layer"]);
    r.push(&amd, "app:amd64");
    r.push(&arm, "app:arm64");
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","Manifests":[{},{}]}}"#,
        child_desc(&amd),
        child_desc(&arm)
    );
    put_accepted(&r, "app", "multi", OCI_INDEX, &index);
    r.assert_pull(&["app:multi"]);

    r.stop();
    remove_and_collect(&r, &["app:amd64", "app:arm64"]);
    for d in [&amd.digest, &arm.digest] {
        assert!(blob_exists(&r.root, d), "child {d} must stay");
    }
    r.serve(&[]);
    r.assert_pull(&["app:multi"]);
    r.assert_gone(&["app:amd64", "app:arm64"]);

    let (code, f) = check(&r);
    assert_eq!(code, Some(0), "{f:#?}");
    // A child deleted by hand is reported: regclean sees the children the registry serves.
    std::fs::remove_dir_all(repo_path(
        &r.root,
        &format!("app/_manifests/revisions/sha256/{}", &arm.digest[7..]),
    ))
    .unwrap();
    let (code, f) = check(&r);
    assert_eq!(code, Some(1), "{f:#?}");
    assert!(
        f.iter()
            .any(|x| x["kind"] == "child_revision_missing" && x["tag"] == "multi"),
        "{f:#?}"
    );
}

/// Each Go decoding rule, PUT to the real registry, then the source tags removed and the store
/// collected: everything the crafted manifests reference stays and pulls, what they do not
/// reference is swept, and regclean predicted the registry's own sweep exactly.
#[test]
fn go_json_key_rules_are_read_as_the_registry_reads_them() {
    if !e2e_available() {
        return;
    }
    let mut r = Registry::start();
    let src = |own: &[u8]| oci_image(&[BASE, own, b"second layer".as_slice()]);
    let (a, b, c, e, f, g) = (
        src(b"a own"),
        src(b"b own"),
        src(b"c own"),
        src(b"e own"),
        src(b"f own"),
        src(b"g own"),
    );
    for (img, tag) in [
        (&a, "a"),
        (&b, "b"),
        (&c, "c"),
        (&e, "e"),
        (&f, "f"),
        (&g, "g"),
    ] {
        r.push(img, &format!("v:src-{tag}"));
    }

    // Upper-case keys.
    let (cfg, l) = parts(&a);
    let upper = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","Config":{cfg},"LAYERS":[{}]}}"#,
        l.join(",")
    );
    put_accepted(&r, "v", "upper", OCI_MANIFEST, &upper);

    // Keys folded from U+017F (long s), raw and JSON-escaped.
    let (cfg, l) = parts(&b);
    let longs = format!(
        r#"{{"\u017fchemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{cfg},"LAYERſ":[{}]}}"#,
        l.join(",")
    );
    put_accepted(&r, "v", "longs", OCI_MANIFEST, &longs);

    // Duplicate keys: the last wins; a struct (config, layer elements) is decoded into the
    // earlier value. Layers end as [BASE, "c own"]: "second layer" is no longer referenced
    // by it (it stays for the others), and c's config survives a second config without digest.
    let (cfg, l) = parts(&c);
    let dups = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/x-not-this","mediaType":"{OCI_MANIFEST}","config":{cfg},"config":{{"mediaType":"application/vnd.oci.image.config.v1+json"}},"layers":[{},{},{}],"layers":[{{"size":{}}},{}]}}"#,
        l[0],
        l[2],
        l[1],
        BASE.len(),
        l[1]
    );
    put_accepted(&r, "v", "dups", OCI_MANIFEST, &dups);

    // Go decodes a later array into the earlier slice: elements merge, and elements past the
    // shorter array's length come back from the backing array. Layers end as g's three.
    let (cfg, l) = parts(&g);
    let leftover = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{cfg},"layers":[{}],"layers":[{{"size":{}}}],"layers":[{{}},null,{{}}]}}"#,
        l.join(","),
        BASE.len()
    );
    put_accepted(&r, "v", "leftover", OCI_MANIFEST, &leftover);

    // Unknown fields are ignored (layers named only there are not referenced), `null` lists.
    let (cfg, l) = parts(&e);
    let nulls = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{cfg},"layers":null,"manifests":null,"x-layers":[{}],"annotations":{{"layers":"x"}}}}"#,
        l.join(",")
    );
    put_accepted(&r, "v", "nulls", OCI_MANIFEST, &nulls);

    // An index without mediaType, its children under a folded key after a `null`.
    let nomt = format!(
        r#"{{"schemaVersion":2,"Manifests":null,"MANIFEſTS":[{}],"config":null}}"#,
        child_desc(&f)
    );
    put_accepted(&r, "v", "nomt", OCI_INDEX, &nomt);

    // A referrer whose subject key is folded, pushed by digest (untagged): it stays while
    // its subject (v:upper) stays. (2.8.2 itself has no `subject` field: this is regclean's
    // own rule, read with Go's key matching.)
    let (cfg, l) = parts(&a);
    let referrer = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{cfg},"layers":[{}],"ſubject":{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":{}}}}}"#,
        l[0],
        sha(upper.as_bytes()),
        upper.len()
    );
    let referrer_digest = sha(referrer.as_bytes());
    let (status, resp) = put_manifest(&r, "v", &referrer_digest, OCI_MANIFEST, &referrer);
    assert_eq!(status, 201, "{resp}");

    // Refused by the registry (recorded, not crafted around): an OCI manifest that also has
    // `manifests`, and a media type in another case.
    let (cfg, _) = parts(&a);
    let ambiguous = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{cfg},"layers":[],"manifests":[]}}"#
    );
    let (status, resp) = put_manifest(&r, "v", "ambiguous", OCI_MANIFEST, &ambiguous);
    assert_eq!(status, 400, "{resp}");
    let shouting = upper.replace(OCI_MANIFEST, &OCI_MANIFEST.to_uppercase());
    let (status, resp) = put_manifest(&r, "v", "shouting", OCI_MANIFEST, &shouting);
    assert!((400..500).contains(&status), "{status} {resp}");

    r.stop();
    remove_and_collect(&r, &["v:src-*"]);
    let c_own_sha = sha(b"c own");
    assert!(blob_exists(&r.root, &c_own_sha), "dups references c own");
    for (what, d) in [
        (
            "e's own layer, named only in an unknown field",
            sha(b"e own"),
        ),
        ("c's top manifest", c.digest.clone()),
    ] {
        assert!(!blob_exists(&r.root, &d), "{what} {d} must be swept");
    }
    for (what, d) in [
        ("f, child of v:nomt", f.digest.clone()),
        ("g's own layer, a leftover in v:leftover", sha(b"g own")),
        ("the referrer of v:upper", referrer_digest.clone()),
        ("second layer", sha(b"second layer")),
    ] {
        assert!(blob_exists(&r.root, &d), "{what} {d} must stay");
    }
    r.serve(&[]);
    r.assert_pull(&[
        "v:upper",
        "v:longs",
        "v:dups",
        "v:leftover",
        "v:nulls",
        "v:nomt",
    ]);
    let (status, _) = r
        .get(&format!("/v2/v/manifests/{referrer_digest}"))
        .unwrap();
    assert_eq!(status, 200, "the referrer of a kept manifest stays");
    let (code, findings) = check(&r);
    assert_eq!(code, Some(0), "{findings:#?}");
}
