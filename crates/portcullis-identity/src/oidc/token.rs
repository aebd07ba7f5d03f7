//! Reading a compact JWS before its signature is checked: sizes, base64, the header's
//! parameters, claim nesting — everything that must be refused before any key is looked up.
//! The signature itself is verified by `jsonwebtoken` (see `super::Oidc`).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use serde_json::{Map, Value};

/// A token split and decoded, its signature not yet verified.
#[derive(Debug)]
pub(crate) struct Unverified<'a> {
    /// `header.payload`: what the signature covers.
    pub(crate) signing_input: &'a str,
    /// The signature, base64url as sent.
    pub(crate) signature: &'a str,
    pub(crate) alg: Algorithm,
    pub(crate) kid: Option<String>,
    pub(crate) kind: TokenKind,
    pub(crate) claims: Map<String, Value>,
}

/// What a token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// An OpenID Connect ID token (a person signed in to a client).
    IdToken,
    /// An OAuth access token in JWT form (RFC 9068: header `typ` `at+jwt`; also Keycloak's
    /// `"typ": "Bearer"` claim).
    AccessToken,
}

impl TokenKind {
    /// The kind of a token whose header `typ` and payload `typ` claim are these: an access
    /// token when the header says `at+jwt` (or `application/at+jwt`, any case) or the claim
    /// says `Bearer`; else an ID token.
    pub fn of(header_typ: Option<&str>, claim_typ: Option<&str>) -> TokenKind {
        let at_jwt = header_typ
            .map(|t| t.trim_start_matches("application/"))
            .is_some_and(|t| t.eq_ignore_ascii_case("at+jwt"));
        if at_jwt || claim_typ == Some("Bearer") {
            TokenKind::AccessToken
        } else {
            TokenKind::IdToken
        }
    }

    /// [`TokenKind::of`], refusing tokens of another type: a header `typ` other than none,
    /// `JWT` or `at+jwt` (`logout+jwt`, `secevent+jwt`, `dpop+jwt`, …), or a `typ` claim
    /// other than `ID` or `Bearer` (Keycloak's `Refresh`, `Logout`, `Offline`).
    pub fn checked(header_typ: Option<&str>, claim_typ: Option<&str>) -> Result<TokenKind, String> {
        if let Some(t) = header_typ {
            let bare = t.trim_start_matches("application/");
            if !(bare.eq_ignore_ascii_case("jwt") || bare.eq_ignore_ascii_case("at+jwt")) {
                return Err(format!(
                    "the token's type (header typ {t:?}) is neither an ID token nor an access token"
                ));
            }
        }
        if let Some(t) = claim_typ
            && t != "ID"
            && t != "Bearer"
        {
            return Err(format!(
                "the token's type (typ claim {t:?}) is neither an ID token nor an access token"
            ));
        }
        Ok(TokenKind::of(header_typ, claim_typ))
    }
}

impl std::fmt::Display for TokenKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenKind::IdToken => "ID token",
            TokenKind::AccessToken => "access token",
        })
    }
}

/// The JOSE header parameters that matter here; any other parameter is ignored.
#[derive(Deserialize)]
struct Header {
    alg: Option<Value>,
    kid: Option<Value>,
    typ: Option<String>,
    crit: Option<Value>,
    jku: Option<Value>,
    x5u: Option<Value>,
    jwk: Option<Value>,
    x5c: Option<Value>,
    enc: Option<Value>,
}

/// Limits on what a token may be.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_bytes: usize,
    pub(crate) max_depth: usize,
}

/// Split and decode `token`, refusing anything malformed or unsafe; `Err` is the reason.
pub(crate) fn read(token: &str, limits: Limits) -> Result<Unverified<'_>, String> {
    if token.len() > limits.max_bytes {
        return Err(format!(
            "token too large ({} bytes; the limit is {})",
            token.len(),
            limits.max_bytes
        ));
    }
    let token = token.trim();
    let parts = token.split('.').count();
    if parts == 5 {
        return Err("encrypted tokens (JWE) are not accepted".into());
    }
    let (Some((signing_input, signature)), 3) = (token.rsplit_once('.'), parts) else {
        return Err("not a JWT: expected three base64url parts separated by dots".into());
    };
    let Some((header_b64, payload_b64)) = signing_input.split_once('.') else {
        return Err("not a JWT: expected three base64url parts separated by dots".into());
    };
    if signature.is_empty() {
        return Err("the token is unsigned (empty signature)".into());
    }
    let header = URL_SAFE_NO_PAD
        .decode(header_b64)
        .map_err(|e| format!("malformed base64 in the token header: {e}"))?;
    check_depth(&header, 2).map_err(|_| "the token header is nested too deeply".to_owned())?;
    let header: Header = serde_json::from_slice(&header)
        .map_err(|e| format!("the token header is not a JSON object: {e}"))?;
    let alg = match &header.alg {
        Some(Value::String(alg)) => alg.as_str(),
        Some(_) => return Err("the token header's alg is not a string".into()),
        None => return Err("the token header has no alg".into()),
    };
    if alg.eq_ignore_ascii_case("none") {
        return Err("unsigned tokens (alg none) are not accepted".into());
    }
    if alg.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("HS")) {
        return Err(format!(
            "{alg} (HMAC) tokens are not accepted: the provider signs with public keys"
        ));
    }
    if header.enc.is_some() {
        return Err("encrypted tokens (JWE) are not accepted".into());
    }
    let alg = match alg.parse::<Algorithm>() {
        Ok(a) => a,
        Err(_) => return Err(format!("algorithm {alg:?} is not supported")),
    };
    if let Some(crit) = &header.crit {
        return Err(format!(
            "the token header marks extensions as critical ({crit}), and none are supported"
        ));
    }
    for (name, present) in [
        ("jku", header.jku.is_some()),
        ("x5u", header.x5u.is_some()),
        ("jwk", header.jwk.is_some()),
        ("x5c", header.x5c.is_some()),
    ] {
        if present {
            return Err(format!(
                "the token header carries its own key reference ({name}); keys are taken only from the provider's JWKS"
            ));
        }
    }
    let kid = match header.kid {
        None => None,
        Some(Value::String(kid)) if kid_is_plain(&kid) => Some(kid),
        Some(Value::String(_)) => {
            return Err("the token's kid is not a plain key id (length or characters)".into());
        }
        Some(_) => return Err("the token's kid is not a string".into()),
    };
    let payload = URL_SAFE_NO_PAD
        .decode(payload_b64)
        .map_err(|e| format!("malformed base64 in the token payload: {e}"))?;
    check_depth(&payload, limits.max_depth).map_err(|depth| {
        format!(
            "the token's claims are nested deeper than {} levels ({depth} or more)",
            limits.max_depth
        )
    })?;
    let claims: Map<String, Value> = serde_json::from_slice(&payload)
        .map_err(|e| format!("the token payload is not a JSON object: {e}"))?;
    let kind = TokenKind::checked(
        header.typ.as_deref(),
        claims.get("typ").and_then(Value::as_str),
    )?;
    Ok(Unverified {
        signing_input,
        signature,
        alg,
        kid,
        kind,
        claims,
    })
}

/// The header and claims of a compact JWS, decoded but **not verified** — for showing a
/// token to a person (`portcullis token inspect`), never for deciding anything.
pub fn decode_unverified(token: &str) -> Result<(Value, Value), String> {
    let mut parts = token.trim().split('.');
    let (Some(header), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not a JWT: expected three base64url parts separated by dots".into());
    };
    let json = |what: &str, b64: &str| -> Result<Value, String> {
        let bytes = URL_SAFE_NO_PAD
            .decode(b64)
            .map_err(|e| format!("malformed base64 in the token {what}: {e}"))?;
        serde_json::from_slice(&bytes).map_err(|e| format!("the token {what} is not JSON: {e}"))
    };
    Ok((json("header", header)?, json("payload", payload)?))
}

/// A `kid` as providers make them: at most 256 characters from the URL-safe, base64 and
/// common punctuation sets — no path separators' tricks like `..`, no quotes, no spaces.
fn kid_is_plain(kid: &str) -> bool {
    !kid.is_empty()
        && kid.len() <= 256
        && !kid.contains("..")
        && kid.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'+' | b'=' | b':' | b'/')
        })
        && !kid.starts_with('/')
}

/// `Err(depth)` when JSON `bytes` nest arrays/objects deeper than `max` (scanned before
/// parsing, so a hostile token never reaches the parser's recursion).
fn check_depth(bytes: &[u8], max: usize) -> Result<(), usize> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return Err(depth);
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_bytes: 16 * 1024,
        max_depth: 8,
    };

    fn b64(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(v.to_string())
    }

    fn token(header: Value, payload: Value) -> String {
        format!("{}.{}.c2ln", b64(&header), b64(&payload))
    }

    fn reason(t: &str) -> String {
        read(t, LIMITS).unwrap_err()
    }

    #[test]
    fn a_plain_token_reads() {
        let t = token(
            serde_json::json!({"alg": "RS256", "kid": "k1", "typ": "JWT"}),
            serde_json::json!({"sub": "alice"}),
        );
        let u = read(&t, LIMITS).unwrap();
        assert_eq!(u.alg, Algorithm::RS256);
        assert_eq!(u.kid.as_deref(), Some("k1"));
        assert_eq!(u.kind, TokenKind::IdToken);
        for (header, claim) in [
            (Some("logout+jwt"), None),
            (Some("secevent+jwt"), None),
            (Some("application/dpop+jwt"), None),
            (None, Some("Refresh")),
            (None, Some("Logout")),
        ] {
            assert!(
                TokenKind::checked(header, claim).is_err(),
                "{header:?} {claim:?}"
            );
        }
        for (header, claim) in [
            (None, None),
            (Some("JWT"), Some("ID")),
            (Some("application/at+jwt"), None),
            (Some("jwt"), Some("Bearer")),
        ] {
            assert!(
                TokenKind::checked(header, claim).is_ok(),
                "{header:?} {claim:?}"
            );
        }
        assert_eq!(u.signature, "c2ln");
        let at = token(
            serde_json::json!({"alg": "ES256", "typ": "at+jwt"}),
            serde_json::json!({"sub": "svc"}),
        );
        assert_eq!(read(&at, LIMITS).unwrap().kind, TokenKind::AccessToken);
    }

    #[test]
    fn unsafe_headers_are_refused() {
        let p = serde_json::json!({"sub": "x"});
        for alg in ["none", "None", "NONE", "nOnE"] {
            let r = reason(&token(serde_json::json!({"alg": alg}), p.clone()));
            assert!(r.contains("alg none"), "{alg}: {r}");
        }
        assert!(
            reason(&format!(
                "{}.{}.",
                b64(&serde_json::json!({"alg": "none"})),
                b64(&p)
            ))
            .contains("unsigned")
        );
        assert!(reason(&token(serde_json::json!({"alg": "HS256"}), p.clone())).contains("HMAC"));
        assert!(
            reason(&token(serde_json::json!({"alg": "XS999"}), p.clone()))
                .contains("not supported")
        );
        assert!(reason(&token(serde_json::json!({"kid": "k"}), p.clone())).contains("no alg"));
        assert!(
            reason(&token(
                serde_json::json!({"alg": "RS256", "crit": ["exp"], "exp": 1}),
                p.clone()
            ))
            .contains("critical")
        );
        for param in ["jku", "x5u", "jwk", "x5c"] {
            let r = reason(&token(
                serde_json::json!({"alg": "RS256", param: "https://evil.example/keys"}),
                p.clone(),
            ));
            assert!(r.contains(param), "{param}: {r}");
        }
        for kid in ["../../etc/passwd", "k' OR '1'='1", "/dev/null", "", "a b"] {
            let r = reason(&token(
                serde_json::json!({"alg": "RS256", "kid": kid}),
                p.clone(),
            ));
            assert!(r.contains("kid"), "{kid:?}: {r}");
        }
        assert!(reason(&token(serde_json::json!({"alg": "RS256", "kid": 7}), p)).contains("kid"));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        assert!(reason("abc").contains("three"));
        assert!(reason("a.b.c.d.e").contains("JWE"));
        assert!(reason("!!!.e30.c2ln").contains("base64 in the token header"));
        let h = b64(&serde_json::json!({"alg": "RS256"}));
        assert!(reason(&format!("{h}.e30=.c2ln")).contains("base64 in the token payload"));
        assert!(
            reason(&format!("{h}.{}.c2ln", URL_SAFE_NO_PAD.encode("[1]"))).contains("JSON object")
        );
        let big = "a".repeat(LIMITS.max_bytes + 1);
        assert!(reason(&big).contains("too large"));
        let nested = format!("{{\"a\":{}1{}}}", "[".repeat(40), "]".repeat(40));
        let r = reason(&format!("{h}.{}.c2ln", URL_SAFE_NO_PAD.encode(nested)));
        assert!(r.contains("nested"), "{r}");
        // Brackets inside strings do not count.
        let flat = serde_json::json!({"a": "[[[[[[[[[[[[[[[[[[[[[[\\\"{{{{{{{{{{{{{"});
        assert!(read(&format!("{h}.{}.c2ln", b64(&flat)), LIMITS).is_ok());
    }
}
