//! The `portcullis` binary in front of an HTTP API (the test kit's): identity, path rules,
//! approvals, JSON masking as the body streams, and the audit trail — through curl.

use std::process::{Command, Stdio};

use portcullis_identity::hash_token;
use portcullis_testkit::{
    HttpUpstream, NEAR_MISS_CARD, PLANTED, PLANTED_EMAIL, PLANTED_SSN, free_port, stream_email,
};

use super::policy::{ALICE, DANA, approvals, first_pending};
use super::{Gateway, cli, verify};

fn config(gw: u16, admin: u16, api: &HttpUpstream, trail: &std::path::Path) -> String {
    let mut text = format!(
        r#"[gateway]
drain_timeout = "3s"

[admin]
listen = "127.0.0.1:{admin}"

[[http]]
name = "api"
listen = "127.0.0.1:{gw}"
allow_plaintext_tokens_on_loopback = true
[http.upstream]
url = "{url}"
headers = {{ "x-api-key" = "gateway-held-key" }}

[policy]
[[policy.rules]]
name = "no-index-delete"
statements = ["delete"]
paths = ["/v1/indices/*"]
action = "deny"
message = "indices are deleted by the platform team"
[[policy.rules]]
name = "admin-approval"
statements = ["post"]
paths = ["/admin/**"]
action = "approve"
approvers = ["dba"]

[masking]
detectors = ["email", "credit_card", "us_ssn", "phone"]
exempt_groups = ["dba"]
[[masking.json]]
path = "$..ssn"
strategy = "redact"

[approvals]
timeout = "2m"

[audit]
[[audit.sinks]]
kind = "jsonl"
path = "{trail}"
"#,
        url = api.url(),
        trail = trail.display(),
    );
    for (name, token, group) in [("alice", ALICE, "dev"), ("dana", DANA, "dba")] {
        text += &format!(
            "\n[[identity.tokens]]\nname = \"{name}\"\nsha256 = \"{}\"\ngroups = [\"{group}\"]\n",
            hash_token(token)
        );
    }
    text
}

/// curl as `token`: `(status, body)`.
fn curl(token: &str, args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "-o", "-", "-w", "\n%{http_code}", "-H"])
        .arg(format!("Authorization: Bearer {token}"))
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.parse().unwrap_or(0), body.to_owned())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_apis_get_identity_rules_approvals_json_masking_and_audit() {
    let api = HttpUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let trail = dir.path().join("trail.jsonl");
    let (gw, admin) = (free_port(), free_port());
    let path = dir.path().join("portcullis.toml");
    std::fs::write(&path, config(gw, admin, &api, &trail)).unwrap();
    let (code, out, err) = cli(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}{err}");
    let mut gateway = Gateway::started(&path, dir.path(), "", admin).await;
    let base = format!("http://127.0.0.1:{gw}");

    // Nested JSON is masked as it streams: detectors everywhere, the path rule on `ssn`;
    // near-misses and the structure come through; the caller's token stays behind.
    let b = base.clone();
    let (code, body) = blocking(move || curl(ALICE, &[&format!("{b}/v1/users")])).await;
    assert_eq!(code, 200, "{body}");
    let doc: serde_json::Value = serde_json::from_str(&body).expect("masked JSON is JSON");
    for planted in PLANTED {
        assert!(!body.contains(planted), "{planted} leaked: {body}");
    }
    assert!(body.contains(NEAR_MISS_CARD), "{body}");
    assert!(doc.is_object() || doc.is_array());
    let seen = api.last_request().unwrap();
    assert_eq!(seen.header("x-api-key"), Some("gateway-held-key"));
    assert!(seen.header("authorization").is_none());
    // The exempt DBA sees clear values.
    let b = base.clone();
    let (code, body) = blocking(move || curl(DANA, &[&format!("{b}/v1/users")])).await;
    assert_eq!(code, 200);
    assert!(
        body.contains(PLANTED_EMAIL) && body.contains(PLANTED_SSN),
        "{body}"
    );

    // A large streamed array: every object's email masked, the array intact.
    let b = base.clone();
    let (code, body) = blocking(move || curl(ALICE, &[&format!("{b}/v1/stream?n=20000")])).await;
    assert_eq!(code, 200);
    let items: Vec<serde_json::Value> = serde_json::from_str(&body).expect("a JSON array");
    assert_eq!(items.len(), 20000);
    assert!(!body.contains(&stream_email(1)) && !body.contains(&stream_email(19999)));
    // ~80 MB streamed and masked with bounded memory: the gateway's peak RSS stays far
    // below the body's size.
    let b = base.clone();
    let out = blocking(move || {
        Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{size_download}", "-H"])
            .arg(format!("Authorization: Bearer {ALICE}"))
            .arg(format!("{b}/v1/stream?n=600000"))
            .output()
            .unwrap()
    })
    .await;
    let size: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(size > 70_000_000, "{size}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", gateway.child.id())).unwrap();
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(
        peak_kib < 48 * 1024,
        "peak RSS {peak_kib} KiB for a {size}-byte body"
    );

    // Not JSON: passed unchanged (other_bodies = "pass").
    let b = base.clone();
    let (code, body) = blocking(move || curl(ALICE, &[&format!("{b}/v1/text")])).await;
    assert_eq!(code, 200);
    assert!(body.contains(PLANTED_EMAIL));
    // Header values pass the detectors: a Location or a custom header naming a person.
    let b = base.clone();
    let (code, head_and_body) =
        blocking(move || curl(ALICE, &["-D", "-", &format!("{b}/v1/redirect")])).await;
    assert_eq!(code, 302, "{head_and_body}");
    assert!(
        head_and_body.to_ascii_lowercase().contains("x-owner:"),
        "{head_and_body}"
    );
    assert!(
        !head_and_body.contains(PLANTED_EMAIL),
        "a header leaked {PLANTED_EMAIL}: {head_and_body}"
    );
    // An error body is JSON too: masked.
    let b = base.clone();
    let (code, body) = blocking(move || curl(ALICE, &[&format!("{b}/v1/error")])).await;
    assert_eq!(code, 500);
    assert!(!body.contains(PLANTED_EMAIL), "{body}");

    // A path rule denies: 403 with a problem document naming the rule; nothing reaches
    // the API.
    let before = api.requests().len();
    let b = base.clone();
    let (code, body) =
        blocking(move || curl(ALICE, &["-X", "DELETE", &format!("{b}/v1/indices/logs")])).await;
    assert_eq!(code, 403, "{body}");
    let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(problem["rule"], "no-index-delete");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("platform team")
    );
    assert_eq!(api.requests().len(), before);

    // curl killed while its request waits: the request is withdrawn, and an approval after
    // that sends nothing to the API (issue 20).
    let before = api.requests().len();
    let child = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-H"])
        .arg(format!("Authorization: Bearer {ALICE}"))
        .args([
            "-X",
            "POST",
            "--data",
            "{}",
            &format!("{base}/admin/reindex"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    super::policy::killed_while_held(&mut gateway, admin, child).await;
    assert_eq!(
        api.requests().len(),
        before,
        "the killed client's request reached the API"
    );

    // An approval holds the request, then it completes.
    let b = base.clone();
    let waiting = std::thread::spawn(move || {
        curl(
            ALICE,
            &["-X", "POST", "--data", "{}", &format!("{b}/admin/reindex")],
        )
    });
    let r = first_pending(&mut gateway, admin, DANA).await;
    assert_eq!(r["statement"], "POST /admin/reindex");
    let id = r["id"].as_str().unwrap();
    let (code, out, err) = approvals(admin, DANA, &["approve", id]);
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, body) = waiting.join().unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("reindex"));

    // The trail: HTTP sessions and requests, masked, verifiable.
    super::run_until_stopped(&mut gateway).await;
    let text = std::fs::read_to_string(&trail).unwrap();
    assert!(text.contains("\"protocol\":\"http\""), "{text}");
    assert!(text.contains("GET /v1/users"));
    // Every response was read to its end: recorded `ok` (with the status as its tag); the one
    // request `abandoned` is the killed client's, whose approval was withdrawn.
    assert!(text.contains("\"status\":\"ok\""), "{text}");
    assert!(text.contains("\"tag\":\"200\""), "{text}");
    assert_eq!(
        text.matches("\"status\":\"abandoned\"").count(),
        1,
        "{text}"
    );
    assert!(text.contains("no-index-delete"));
    assert!(
        !text.contains(PLANTED_EMAIL),
        "the trail holds a planted email"
    );
    let (code, out) = verify(&[&trail], &[]);
    assert_eq!(code, Some(0), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_timeout_is_a_504_problem() {
    let api = HttpUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let trail = dir.path().join("trail.jsonl");
    let (gw, admin) = (free_port(), free_port());
    let path = dir.path().join("portcullis.toml");
    let text = config(gw, admin, &api, &trail).replace("timeout = \"2m\"", "timeout = \"1s\"");
    std::fs::write(&path, text).unwrap();
    let _gateway = Gateway::started(&path, dir.path(), "", admin).await;
    let b = format!("http://127.0.0.1:{gw}");
    let (code, body) = blocking(move || {
        curl(
            ALICE,
            &["-X", "POST", "--data", "{}", &format!("{b}/admin/x")],
        )
    })
    .await;
    assert_eq!(code, 504, "{body}");
    let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("timed out"),
        "{body}"
    );
    assert!(api.requests().is_empty(), "the API was called");
}
