//! Pull activity from the registry's own notifications.
//!
//! The supervisor listens for notification events on a loopback port and adds itself to the
//! registry's `notifications.endpoints` through the environment
//! (`REGISTRY_NOTIFICATIONS_ENDPOINTS`, a YAML list that replaces the config's): the list is
//! the user's own endpoints (from the config, or from that variable if the user set it) plus
//! this one, so the user's endpoints keep working and the config file is never touched.
//! Layer events (`application/octet-stream`) are ignored at the source; every manifest pull
//! is recorded by digest, and by tag when it was pulled by tag ([`crate::activity`]).

use crate::activity::{Pull, Recorder};
use crate::digest::Digest;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// The endpoint's name in the registry's config.
const NAME: &str = "regclean-activity";

/// Starts the receiver; returns its address.
pub fn start(root: &Path) -> Result<SocketAddr, String> {
    let db = crate::activity::path(root);
    let rec = Recorder::open(&db).map_err(|e| format!("{}: {e}", db.display()))?;
    let rec = Arc::new(Mutex::new(rec));
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(conn) = conn else { continue };
            let rec = Arc::clone(&rec);
            std::thread::spawn(move || serve(conn, &rec));
        }
    });
    Ok(addr)
}

/// The `REGISTRY_NOTIFICATIONS_ENDPOINTS` value: the user's endpoints plus ours.
pub fn endpoints(user: Option<serde_yaml_ng::Value>, addr: SocketAddr) -> String {
    let mut list = match user {
        Some(serde_yaml_ng::Value::Sequence(s)) => s,
        _ => Vec::new(),
    };
    let ours: serde_yaml_ng::Value = serde_yaml_ng::from_str(&format!(
        "{{name: {NAME}, url: 'http://{addr}/events', timeout: 2s, threshold: 10, backoff: 1s, ignoredmediatypes: [application/octet-stream]}}"
    ))
    .expect("valid YAML");
    list.retain(|e| e.get("name").and_then(|n| n.as_str()) != Some(NAME));
    list.push(ours);
    serde_yaml_ng::to_string(&list).expect("serializes")
}

/// Answers HTTP requests on one connection (the registry keeps it alive) until it closes.
fn serve(conn: TcpStream, rec: &Mutex<Recorder>) {
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut r = BufReader::new(conn);
    loop {
        let mut len = 0usize;
        let mut line = String::new();
        // Request line and headers.
        let mut first = true;
        loop {
            line.clear();
            match r.read_line(&mut line) {
                Ok(0) => return,
                Ok(_) => {}
                Err(_) => return,
            }
            if line == "\r\n" || line == "\n" {
                if first {
                    continue;
                }
                break;
            }
            first = false;
            if let Some((k, v)) = line.split_once(':') {
                if k.trim().eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; len.min(64 << 20)];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let pulls = pulls_of(&body, SystemTime::now());
        let ok = pulls.is_empty() || rec.lock().expect("recorder").record(&pulls).is_ok();
        let status = if ok {
            "200 OK"
        } else {
            "503 Service Unavailable"
        };
        if write!(out, "HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").is_err() {
            return;
        }
    }
}

/// The manifest pulls in a notification envelope (`{"events": [...]}`).
pub fn pulls_of(body: &[u8], now: SystemTime) -> Vec<Pull> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Vec::new();
    };
    let Some(events) = v["events"].as_array() else {
        return Vec::new();
    };
    events
        .iter()
        .filter(|e| e["action"] == "pull")
        .filter_map(|e| {
            let t = &e["target"];
            if t["mediaType"] == "application/octet-stream" {
                return None;
            }
            let digest = Digest::parse(t["digest"].as_str()?.as_bytes())?;
            // The registry writes local time with its offset: honour it; never in the future.
            let at = e["timestamp"]
                .as_str()
                .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                .map(SystemTime::from)
                .unwrap_or(now)
                .min(now);
            Some(Pull {
                repo: t["repository"].as_str()?.to_string(),
                digest,
                tag: t["tag"]
                    .as_str()
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
                at,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_pulls_are_read_from_a_notification_envelope() {
        let d = "sha256:".to_string() + &"ab".repeat(32);
        let body = format!(
            r#"{{"events":[
            {{"action":"pull","timestamp":"2026-12-05T06:00:00.123456Z","target":{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{d}","repository":"team/app","tag":"v1"}}}},
            {{"action":"pull","target":{{"mediaType":"application/octet-stream","digest":"{d}","repository":"team/app"}}}},
            {{"action":"push","target":{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{d}","repository":"team/app","tag":"v2"}}}},
            {{"action":"pull","target":{{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"{d}","repository":"x"}}}}
            ]}}"#
        );
        let now = humantime::parse_rfc3339("2030-01-01T00:00:00Z").unwrap();
        let p = pulls_of(body.as_bytes(), now);
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!(p[0].repo, "team/app");
        assert_eq!(p[0].tag.as_deref(), Some("v1"));
        assert_eq!(
            p[0].at,
            humantime::parse_rfc3339("2026-12-05T06:00:00.123456Z").unwrap()
        );
        // A local time with its offset is the same instant; a time ahead of now is now.
        let local = body.replace(
            "2026-12-05T06:00:00.123456Z",
            "2026-12-05T15:00:00.123456+09:00",
        );
        assert_eq!(pulls_of(local.as_bytes(), now)[0].at, p[0].at);
        let early = humantime::parse_rfc3339("2020-01-01T00:00:00Z").unwrap();
        assert_eq!(pulls_of(body.as_bytes(), early)[0].at, early);
        assert_eq!(p[1].tag, None);
        assert_eq!(p[1].at, now);
        assert!(pulls_of(b"not json", now).is_empty());
    }

    #[test]
    fn the_users_endpoints_stay_and_ours_is_added_once() {
        let user: serde_yaml_ng::Value = serde_yaml_ng::from_str(
            "[{name: audit, url: 'http://audit/events'}, {name: regclean-activity, url: 'http://old'}]",
        )
        .unwrap();
        let addr: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let v: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(&endpoints(Some(user), addr)).unwrap();
        let names: Vec<&str> = v
            .as_sequence()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["audit", "regclean-activity"]);
        assert_eq!(v[1]["url"].as_str(), Some("http://127.0.0.1:4000/events"));
    }
}
