//! HTTP requests as statements: an HTTP protocol server presents each request as the text
//! `METHOD /path?query`; [`classify_http`] gives it the same [`Classified`] shape as SQL, so
//! rules apply unchanged — `statements` name methods (`get`, `post`, `delete`, ...) or
//! classes (`GET`/`HEAD`/`OPTIONS` read, `POST`/`PUT`/`PATCH`/`DELETE` write, anything else
//! admin), and a rule's `paths` globs match the request path.
//!
//! The path is read as a server would route it, and what a server might route differently
//! is refused rather than guessed (then `on_unparsed` decides): empty or dot segments
//! (`//`, `/./`, `/../`), encoded separators or dots (`%2F`, `%5C`, `%2E`), backslashes,
//! control characters and invalid percent-encoding. Other percent-encoded bytes are decoded
//! before matching (`/%61dmin` is `/admin`).

use crate::classify::{Class, Classified, Unparsed};

/// Classify `METHOD /path?query`.
pub fn classify_http(text: &str) -> Result<Vec<Classified>, Unparsed> {
    let bad = |why: &str| Unparsed::new(format!("HTTP request {text:?}: {why}"));
    let (method, target) = text.split_once(' ').ok_or_else(|| bad("no method"))?;
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(bad("invalid method"));
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let path = normalize_path(path).map_err(|why| bad(&why))?;
    let method_lower = method.to_ascii_lowercase();
    let class = match method_lower.as_str() {
        "get" | "head" | "options" => Class::Read,
        "post" | "put" | "patch" | "delete" => Class::Write,
        _ => Class::Admin,
    };
    let mut c = Classified::reading(text.to_owned());
    c.kinds.insert(method_lower.clone());
    c.class = class;
    c.classes.insert(class);
    c.reason = format!("HTTP {method}");
    c.path = Some(path);
    Ok(vec![c])
}

/// The request path as a router reads it, or why it cannot be read safely.
fn normalize_path(path: &str) -> Result<String, String> {
    if !path.starts_with('/') {
        return Err("the path must start with /".into());
    }
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("invalid percent-encoding")?;
            if matches!(hex, b'/' | b'\\' | b'.') || hex < 0x20 || hex == 0x7f {
                return Err(format!("an encoded {:?} in the path", hex as char));
            }
            out.push(hex);
            i += 3;
            continue;
        }
        if b == b'\\' || b < 0x20 || b == 0x7f {
            return Err("a backslash or control character in the path".into());
        }
        out.push(b);
        i += 1;
    }
    let decoded = String::from_utf8(out).map_err(|_| "the path is not UTF-8 once decoded")?;
    let segments: Vec<&str> = decoded[1..].split('/').collect();
    let last = segments.len().saturating_sub(1);
    for (n, s) in segments.iter().enumerate() {
        // A trailing slash is an empty last segment: allowed.
        if (s.is_empty() && n != last) || *s == "." || *s == ".." {
            return Err("an empty or dot segment in the path".into());
        }
        // `/admin;jsessionid=x/reindex`: Tomcat and others drop path parameters when routing,
        // other routers do not.
        if s.contains(';') {
            return Err("a ';' (path parameter) in a path segment".into());
        }
    }
    Ok(decoded)
}

/// Whether `path` matches `glob`: segments separated by `/`, `*` and `?` within a segment,
/// `**` for any number of segments (none included). `/v1/indices/*` matches
/// `/v1/indices/logs` but not `/v1/indices/logs/_doc`; `/admin/**` matches `/admin` and
/// everything under it.
pub fn path_matches(glob: &str, path: &str) -> bool {
    let g: Vec<&str> = glob.trim_end_matches('/').split('/').collect();
    let p: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    segments_match(&g, &p)
}

fn segments_match(g: &[&str], p: &[&str]) -> bool {
    match g.split_first() {
        None => p.is_empty(),
        Some((&"**", rest)) => (0..=p.len()).any(|skip| segments_match(rest, &p[skip..])),
        Some((first, rest)) => match p.split_first() {
            Some((seg, prest)) => {
                portcullis_core::wildcard(first, seg) && segments_match(rest, prest)
            }
            None => false,
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn methods_and_classes() {
        let c = &classify_http("DELETE /v1/indices/logs").unwrap()[0];
        assert!(c.kinds.contains("delete") && c.class == Class::Write);
        assert_eq!(c.path.as_deref(), Some("/v1/indices/logs"));
        let g = &classify_http("GET /v1/users?limit=10").unwrap()[0];
        assert_eq!(
            (g.class, g.path.as_deref()),
            (Class::Read, Some("/v1/users"))
        );
        assert_eq!(classify_http("TRACE /").unwrap()[0].class, Class::Admin);
        assert!(classify_http("GET").is_err());
        assert!(classify_http("G3T /").is_err());
    }

    #[test]
    fn ambiguous_paths_are_refused_and_encodings_decoded() {
        for bad in [
            "GET //admin",
            "GET /a/../admin",
            "GET /./admin",
            "GET /%2e%2e/admin",
            "GET /a%2Fb",
            "GET /a%5cb",
            "GET /a\\b",
            "GET /a%zz",
            "GET /a%00",
            "GET admin",
            "GET /admin;jsessionid=x/reindex",
            "POST /admin%3Bx/reindex",
        ] {
            assert!(classify_http(bad).is_err(), "{bad}");
        }
        let c = &classify_http("POST /%61dmin/users/").unwrap()[0];
        assert_eq!(c.path.as_deref(), Some("/admin/users/"));
    }

    #[test]
    fn rules_match_methods_and_paths() {
        use portcullis_core::{AuthMethod, Identity, Verdict};

        use crate::rules::{Action, Dialect, Policy, Rule};
        let policy = Policy::new(vec![
            Rule::new("no-index-delete", Action::Deny)
                .statements(["delete"])
                .paths(["/v1/indices/*"]),
            Rule::new("admin-approval", Action::Approve)
                .statements(["post"])
                .paths(["/admin/**"])
                .approvers(["ops"], 1),
        ])
        .unwrap();
        let who = Identity::new("alice", vec![], AuthMethod::StaticToken);
        let judge = |text: &str| {
            let c = policy.classify_in(Dialect::Http, text);
            let list = c.as_ref().as_ref().unwrap();
            policy.judge_classified(&who, &list[0]).verdict
        };
        assert!(matches!(
            judge("DELETE /v1/indices/logs"),
            Verdict::Deny { .. }
        ));
        assert_eq!(judge("GET /v1/indices/logs"), Verdict::Allow);
        assert_eq!(judge("DELETE /v1/other/logs"), Verdict::Allow);
        assert!(matches!(
            judge("POST /admin/reindex"),
            Verdict::Approve { .. }
        ));
        // A path rule never matches SQL: it has no path.
        let sql = policy.classify_in(Dialect::Postgres, "delete from victims");
        let list = sql.as_ref().as_ref().unwrap();
        assert_eq!(
            policy.judge_classified(&who, &list[0]).verdict,
            Verdict::Allow
        );
    }

    #[test]
    fn path_globs() {
        assert!(path_matches("/v1/indices/*", "/v1/indices/logs"));
        assert!(!path_matches("/v1/indices/*", "/v1/indices/logs/_doc"));
        assert!(!path_matches("/v1/indices/*", "/v1/indices"));
        assert!(path_matches("/admin/**", "/admin"));
        assert!(path_matches("/admin/**", "/admin/x/y"));
        assert!(path_matches("/admin/**", "/admin/"));
        assert!(!path_matches("/admin/**", "/administrator"));
        assert!(path_matches("/**/secret", "/a/b/secret"));
        assert!(path_matches("/v?/users", "/v1/users"));
        assert!(path_matches("/", "/"));
    }
}
