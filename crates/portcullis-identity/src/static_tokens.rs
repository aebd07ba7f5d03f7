use std::future::{Ready, ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use portcullis_core::{AuthMethod, Error, Identity, Refusal};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::Credentials;

/// Hex SHA-256 of a token: the value to put in the configuration (`portcullis token hash`).
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A configured token: a name (the identity recorded), the token's SHA-256, and groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenEntry {
    name: String,
    digest: [u8; 32],
    groups: Vec<String>,
}

/// The digest in the configuration is not 64 hex digits.
#[derive(Debug, Clone, thiserror::Error)]
#[error("token \"{name}\": sha256 must be 64 hexadecimal digits (use `portcullis token hash`)")]
pub struct InvalidDigest {
    /// The entry's name.
    pub name: String,
}

impl TokenEntry {
    /// An entry from a hex SHA-256 digest.
    pub fn new(name: &str, sha256_hex: &str, groups: Vec<String>) -> Result<Self, InvalidDigest> {
        let mut digest = [0u8; 32];
        hex::decode_to_slice(sha256_hex.trim(), &mut digest).map_err(|_| InvalidDigest {
            name: name.to_owned(),
        })?;
        Ok(TokenEntry {
            name: name.to_owned(),
            digest,
            groups,
        })
    }

    /// The entry's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The groups the entry grants.
    pub fn groups(&self) -> &[String] {
        &self.groups
    }
}

/// Authenticates static tokens from the configuration.
///
/// The presented token is hashed and compared with every configured digest in constant time,
/// so neither the timing nor the order of entries tells an attacker anything. An empty or
/// unknown token is refused ([`Refusal::Unauthenticated`], PostgreSQL `28P01`).
#[derive(Clone, Debug, Default)]
pub struct StaticTokens {
    entries: Arc<[TokenEntry]>,
}

impl StaticTokens {
    /// A set of tokens.
    pub fn new(entries: Vec<TokenEntry>) -> Self {
        StaticTokens {
            entries: entries.into(),
        }
    }

    /// The configured entries.
    pub fn entries(&self) -> &[TokenEntry] {
        &self.entries
    }

    /// Check a token; the identity on success.
    pub fn verify(&self, token: &str) -> Result<Identity, Refusal> {
        if token.is_empty() {
            return Err(Refusal::Unauthenticated {
                reason: "empty token".into(),
            });
        }
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found: Option<&TokenEntry> = None;
        for entry in self.entries.iter() {
            // Visit every entry whatever matches, so timing does not depend on the position.
            let equal: bool = entry.digest.ct_eq(&presented).into();
            if equal && found.is_none() {
                found = Some(entry);
            }
        }
        match found {
            Some(entry) => Ok(Identity::new(
                entry.name.clone(),
                entry.groups.clone(),
                AuthMethod::StaticToken,
            )),
            None => Err(Refusal::Unauthenticated {
                reason: "unknown token".into(),
            }),
        }
    }
}

impl tower_service::Service<Credentials> for StaticTokens {
    type Response = Identity;
    type Error = Error;
    type Future = Ready<Result<Identity, Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, credentials: Credentials) -> Self::Future {
        ready(self.verify(&credentials.token).map_err(Error::from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> StaticTokens {
        StaticTokens::new(vec![
            TokenEntry::new("a", &hash_token("token-a"), vec!["g1".into()]).unwrap(),
            TokenEntry::new("b", &hash_token("token-b"), vec![]).unwrap(),
        ])
    }

    #[test]
    fn known_tokens_map_to_their_identity() {
        let t = tokens();
        assert_eq!(t.verify("token-a").unwrap().subject, "a");
        assert_eq!(t.verify("token-b").unwrap().subject, "b");
        assert_eq!(t.verify("token-a").unwrap().groups, vec!["g1".to_string()]);
    }

    #[test]
    fn empty_and_unknown_tokens_are_refused() {
        let t = tokens();
        assert_eq!(
            t.verify("").unwrap_err().to_string(),
            "authentication failed: empty token"
        );
        assert_eq!(
            t.verify("token-c").unwrap_err().to_string(),
            "authentication failed: unknown token"
        );
        // A digest presented as the token is not the token.
        assert!(t.verify(&hash_token("token-a")).is_err());
    }

    #[test]
    fn bad_digest_in_config_is_an_error() {
        assert!(TokenEntry::new("x", "abc", vec![]).is_err());
        assert!(TokenEntry::new("x", &"zz".repeat(32), vec![]).is_err());
    }

    #[test]
    fn hash_is_hex_sha256() {
        assert_eq!(
            hash_token("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
