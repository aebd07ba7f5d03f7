//! The provider's signing keys: a JWKS parsed into verification keys, each pinned to the
//! algorithms its key type allows.

use std::str::FromStr;

use jsonwebtoken::{Algorithm, DecodingKey, jwk::Jwk};
use serde_json::Value;
use tracing::warn;

/// One verification key from the provider's JWKS.
pub(crate) struct Key {
    /// `kid`, when the JWKS names it.
    pub(crate) kid: Option<String>,
    /// The algorithms this key verifies: one when the JWK names its `alg`, else its type's.
    pub(crate) algorithms: Vec<Algorithm>,
    /// What it is, for messages: `RSA`, `EC P-256`, `OKP Ed25519`.
    pub(crate) kind: String,
    pub(crate) key: DecodingKey,
}

/// The keys in force.
#[derive(Default)]
pub(crate) struct KeySet {
    pub(crate) keys: Vec<Key>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|k| (&k.kid, &k.kind)))
            .finish()
    }
}

/// The algorithms a key type may sign with: never HMAC (the keys are public), never `none`.
fn family(kty: &str, crv: Option<&str>) -> Option<(Vec<Algorithm>, String)> {
    use Algorithm::*;
    match (kty, crv) {
        ("RSA", _) => Some((vec![RS256, RS384, RS512, PS256, PS384, PS512], "RSA".into())),
        ("EC", Some("P-256")) => Some((vec![ES256], "EC P-256".into())),
        ("EC", Some("P-384")) => Some((vec![ES384], "EC P-384".into())),
        ("OKP", Some("Ed25519")) => Some((vec![EdDSA], "OKP Ed25519".into())),
        _ => None,
    }
}

/// EC and OKP coordinates have their curve's exact length (the JWK parser does not check).
fn coordinates_fit(entry: &Value, kind: &str) -> Result<(), String> {
    use base64::Engine as _;
    let want: &[(&str, usize)] = match kind {
        "EC P-256" => &[("x", 32), ("y", 32)],
        "EC P-384" => &[("x", 48), ("y", 48)],
        "OKP Ed25519" => &[("x", 32)],
        _ => &[],
    };
    for (name, len) in want {
        let raw = entry.get(*name).and_then(Value::as_str).unwrap_or_default();
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(raw)
            .map_err(|e| format!("{name}: {e}"))?;
        if bytes.len() != *len {
            return Err(format!("{name} has {} bytes, not {len}", bytes.len()));
        }
    }
    Ok(())
}

impl KeySet {
    /// Parse a JWKS document. Keys for encryption, of types this gateway does not verify
    /// with (symmetric `oct` among them), or malformed are skipped with a warning; the set
    /// may end up empty.
    pub(crate) fn parse(jwks: &[u8]) -> Result<KeySet, String> {
        let doc: Value =
            serde_json::from_slice(jwks).map_err(|e| format!("the JWKS is not JSON: {e}"))?;
        let Some(entries) = doc.get("keys").and_then(Value::as_array) else {
            return Err("the JWKS has no \"keys\" array".into());
        };
        let mut keys = Vec::new();
        for entry in entries {
            let text = |name: &str| entry.get(name).and_then(Value::as_str);
            let kid = text("kid").map(str::to_owned);
            let name = kid.as_deref().unwrap_or("(no kid)");
            if text("use").is_some_and(|u| u != "sig") {
                continue;
            }
            let kty = text("kty").unwrap_or_default();
            let Some((allowed, kind)) = family(kty, text("crv")) else {
                warn!(target: "portcullis::identity", kid = name, kty, "JWKS key of a type not used for verification: skipped");
                continue;
            };
            if let Err(e) = coordinates_fit(entry, &kind) {
                warn!(target: "portcullis::identity", kid = name, kind, error = %e, "malformed JWKS key: skipped");
                continue;
            }
            let algorithms = match text("alg") {
                None => allowed,
                Some(alg) => match Algorithm::from_str(alg) {
                    Ok(a) if allowed.contains(&a) => vec![a],
                    _ => {
                        warn!(target: "portcullis::identity", kid = name, alg, kind, "JWKS key whose alg does not fit its type: skipped");
                        continue;
                    }
                },
            };
            let key = serde_json::from_value::<Jwk>(entry.clone())
                .map_err(|e| e.to_string())
                .and_then(|jwk| DecodingKey::from_jwk(&jwk).map_err(|e| e.to_string()));
            match key {
                Ok(key) => keys.push(Key {
                    kid,
                    algorithms,
                    kind,
                    key,
                }),
                Err(e) => {
                    warn!(target: "portcullis::identity", kid = name, error = %e, "malformed JWKS key: skipped");
                }
            }
        }
        Ok(KeySet { keys })
    }

    /// The key a token's `kid` names; a token without `kid` matches only a set of one key.
    pub(crate) fn find(&self, kid: Option<&str>) -> Option<&Key> {
        match kid {
            Some(kid) => self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
            None if self.keys.len() == 1 => self.keys.first(),
            None => None,
        }
    }

    /// The `kid`s, for messages and logs.
    pub(crate) fn kids(&self) -> Vec<&str> {
        self.keys
            .iter()
            .map(|k| k.kid.as_deref().unwrap_or("(none)"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA_N: &str = "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw";

    #[test]
    fn keys_are_pinned_to_their_family() {
        let jwks = serde_json::json!({"keys": [
            {"kty": "RSA", "kid": "r1", "n": RSA_N, "e": "AQAB"},
            {"kty": "RSA", "kid": "r2", "alg": "RS256", "use": "sig", "n": RSA_N, "e": "AQAB"},
            {"kty": "RSA", "kid": "r3", "alg": "HS256", "n": RSA_N, "e": "AQAB"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": RSA_N, "e": "AQAB"},
            {"kty": "oct", "kid": "h", "k": "c2VjcmV0"},
            {"kty": "EC", "kid": "bad", "crv": "P-256", "x": "AA", "y": "AA"},
        ]});
        let set = KeySet::parse(jwks.to_string().as_bytes()).unwrap();
        assert_eq!(set.kids(), vec!["r1", "r2"]);
        let r1 = set.find(Some("r1")).unwrap();
        assert!(r1.algorithms.contains(&Algorithm::PS256));
        assert!(!r1.algorithms.contains(&Algorithm::HS256));
        assert_eq!(
            set.find(Some("r2")).unwrap().algorithms,
            vec![Algorithm::RS256]
        );
        assert!(set.find(None).is_none(), "two keys: a kid is needed");
        assert!(set.find(Some("../r1")).is_none());
    }

    #[test]
    fn bad_documents_are_errors() {
        assert!(KeySet::parse(b"not json").is_err());
        assert!(KeySet::parse(b"{\"nokeys\": 1}").is_err());
        assert!(KeySet::parse(b"{\"keys\": []}").unwrap().keys.is_empty());
    }
}
