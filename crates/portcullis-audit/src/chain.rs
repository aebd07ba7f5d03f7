//! The hash chain and checkpoint signatures shared by every chained sink.
//!
//! A record is one line of JSON:
//!
//! ```text
//! {"v":1,"seq":7,"ts":"2026-11-28T09:30:00.123456Z","type":"command",...,"prev":"<hex>","hash":"<hex>"}
//! ```
//!
//! `hash` is the SHA-256 of the line's bytes up to (not including) `,"hash":`; `prev` is the
//! `hash` of the record before it (64 zeros for the first record of a trail). Editing any
//! byte of a record changes its hash; removing, reordering or inserting records breaks the
//! `prev` links. Recomputing every hash after an edit is caught by the next checkpoint: a
//! `checkpoint` record's `sig` is an Ed25519 signature over its own `seq` and `prev`
//! ([`checkpoint_message`]), which only the holder of the signing key can make.

use std::path::Path;
use std::time::SystemTime;

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use crate::event::{AuditEvent, Checkpoint, SCHEMA_VERSION};

/// The `prev` of a trail's first record.
pub const GENESIS: [u8; 32] = [0; 32];

/// Length of the suffix `,"hash":"<64 hex>"}` that ends every record.
const HASH_SUFFIX: usize = 9 + 64 + 2;

/// SHA-256.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// RFC 3339 in UTC with microseconds, as written in `ts`.
pub fn rfc3339(at: SystemTime) -> String {
    let at = time::OffsetDateTime::from(at);
    let micros = at.microsecond();
    let at = at.replace_nanosecond(micros * 1000).unwrap_or(at);
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "invalid-time".into())
}

/// Parse a `ts` written by [`rfc3339`].
pub fn parse_rfc3339(ts: &str) -> Option<SystemTime> {
    time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(SystemTime::from)
}

/// The bytes an Ed25519 checkpoint signature covers.
pub fn checkpoint_message(seq: u64, prev: &str) -> Vec<u8> {
    format!("portcullis-audit-checkpoint\0{SCHEMA_VERSION}\0{seq}\0{prev}").into_bytes()
}

/// The Ed25519 key that signs checkpoints.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    public_hex: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("public", &self.public_hex)
            .finish_non_exhaustive()
    }
}

/// A key file could not be read or made.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file does not hold a key.
    #[error(
        "{path}: not an audit signing key (expected 64 hex digits, as written by `portcullis audit keygen`)"
    )]
    Format {
        /// The file.
        path: String,
    },
    /// No randomness.
    #[error("cannot generate a key: the system random source failed")]
    Random,
}

impl SigningKey {
    fn from_seed(seed: &[u8; 32]) -> Option<Self> {
        let pair = Ed25519KeyPair::from_seed_unchecked(seed).ok()?;
        let public_hex = hex::encode(pair.public_key().as_ref());
        Some(SigningKey { pair, public_hex })
    }

    /// Read a key file: the 32-byte seed in hex (whitespace ignored).
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let mut seed = [0u8; 32];
        let format = || KeyError::Format {
            path: path.display().to_string(),
        };
        hex::decode_to_slice(text.trim(), &mut seed).map_err(|_| format())?;
        Self::from_seed(&seed).ok_or_else(format)
    }

    /// A new random key and its seed in hex: the key file's contents, to keep secret.
    pub fn generate() -> Result<(Self, String), KeyError> {
        use ring::rand::SecureRandom as _;
        let mut seed = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut seed)
            .map_err(|_| KeyError::Random)?;
        let key = Self::from_seed(&seed).ok_or(KeyError::Random)?;
        Ok((key, hex::encode(seed)))
    }

    /// The public key in hex.
    pub fn public_hex(&self) -> &str {
        &self.public_hex
    }

    /// Sign `message`, hex.
    pub fn sign_hex(&self, message: &[u8]) -> String {
        hex::encode(self.pair.sign(message).as_ref())
    }
}

/// Whether `sig_hex` is `key_hex`'s signature of `message`.
pub fn verify_signature(key_hex: &str, sig_hex: &str, message: &[u8]) -> bool {
    let (Ok(key), Ok(sig)) = (hex::decode(key_hex), hex::decode(sig_hex)) else {
        return false;
    };
    UnparsedPublicKey::new(&ED25519, key)
        .verify(message, &sig)
        .is_ok()
}

/// The chain fields every record starts with.
#[derive(Serialize)]
struct Head<'a> {
    v: u32,
    seq: u64,
    ts: &'a str,
    #[serde(flatten)]
    event: &'a AuditEvent,
    prev: &'a str,
}

/// The position of a chain: the next record's `seq` and `prev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainState {
    /// The next record's sequence number.
    pub next_seq: u64,
    /// The hash of the last record.
    pub prev: [u8; 32],
    /// Records written since the last checkpoint.
    pub unsealed: u64,
}

impl ChainState {
    /// The start of a new trail.
    pub fn genesis() -> Self {
        ChainState {
            next_seq: 0,
            prev: GENESIS,
            unsealed: 0,
        }
    }

    /// After `record` (a parsed, hash-checked line).
    pub fn after(record: &ParsedLine) -> Self {
        ChainState {
            next_seq: record.seq + 1,
            prev: record.hash,
            unsealed: 0,
        }
    }

    /// Append `event` made at `at` to `out` as one line (with its newline) and advance.
    /// Returns the record's `ts`, as written.
    pub fn append(&mut self, out: &mut Vec<u8>, at: SystemTime, event: &AuditEvent) -> String {
        let start = out.len();
        let ts = rfc3339(at);
        let mut prev = [0u8; 64];
        let _ = hex::encode_to_slice(self.prev, &mut prev);
        let head = Head {
            v: SCHEMA_VERSION,
            seq: self.next_seq,
            ts: &ts,
            event,
            prev: std::str::from_utf8(&prev).unwrap_or_default(),
        };
        if serde_json::to_writer(&mut *out, &head).is_err() {
            // Serializing our own types into memory cannot fail; keep the chain whole anyway.
            out.truncate(start);
            out.extend_from_slice(b"{}");
        }
        // Replace the closing brace with the hash field.
        out.pop();
        let hash = sha256(&out[start..]);
        let mut hex = [0u8; 64];
        let _ = hex::encode_to_slice(hash, &mut hex);
        out.extend_from_slice(b",\"hash\":\"");
        out.extend_from_slice(&hex);
        out.extend_from_slice(b"\"}\n");
        self.prev = hash;
        self.next_seq += 1;
        self.unsealed += 1;
        ts
    }

    /// Append a checkpoint sealing everything so far, signed with `key` when there is one.
    /// Returns the checkpoint's `ts`.
    pub fn seal(
        &mut self,
        out: &mut Vec<u8>,
        at: SystemTime,
        reason: &str,
        key: Option<&SigningKey>,
    ) -> String {
        let prev = hex::encode(self.prev);
        let message = checkpoint_message(self.next_seq, &prev);
        let event = AuditEvent::Checkpoint(Checkpoint {
            reason: reason.to_owned(),
            key: key.map(|k| k.public_hex().to_owned()),
            sig: key.map(|k| k.sign_hex(&message)),
        });
        let ts = self.append(out, at, &event);
        self.unsealed = 0;
        ts
    }
}

/// The chain fields of a line, read back.
#[derive(Debug, Clone, Deserialize)]
struct RawHead {
    v: u32,
    seq: u64,
    ts: String,
    prev: String,
}

/// One line of a trail, parsed and hash-checked.
#[derive(Debug, Clone)]
pub struct ParsedLine {
    /// Schema version.
    pub v: u32,
    /// Sequence number in the trail.
    pub seq: u64,
    /// Timestamp as written.
    pub ts: String,
    /// The previous record's hash, as written.
    pub prev: [u8; 32],
    /// This record's hash (checked against its content).
    pub hash: [u8; 32],
    /// The event.
    pub event: AuditEvent,
}

/// Why a line is not a valid record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// The line does not end with a hash field, or is not JSON.
    #[error("not a record (malformed)")]
    Malformed,
    /// The hash does not match the content.
    #[error("its content does not match its hash")]
    HashMismatch,
    /// The JSON does not fit the schema.
    #[error("not a record of schema version {SCHEMA_VERSION}: {0}")]
    Schema(String),
}

/// Parse one line (without its newline) and check its own hash.
pub fn parse_line(line: &[u8]) -> Result<ParsedLine, LineError> {
    let n = line.len();
    if n < HASH_SUFFIX + 2 || !line.starts_with(b"{") {
        return Err(LineError::Malformed);
    }
    let (body, suffix) = line.split_at(n - HASH_SUFFIX);
    let hex_part = suffix
        .strip_prefix(b",\"hash\":\"")
        .and_then(|s| s.strip_suffix(b"\"}"))
        .ok_or(LineError::Malformed)?;
    let mut hash = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut hash).map_err(|_| LineError::Malformed)?;
    if sha256(body) != hash {
        return Err(LineError::HashMismatch);
    }
    let mut json = Vec::with_capacity(body.len() + 1);
    json.extend_from_slice(body);
    json.push(b'}');
    let head: RawHead =
        serde_json::from_slice(&json).map_err(|e| LineError::Schema(e.to_string()))?;
    let event: AuditEvent =
        serde_json::from_slice(&json).map_err(|e| LineError::Schema(e.to_string()))?;
    let mut prev = [0u8; 32];
    hex::decode_to_slice(&head.prev, &mut prev)
        .map_err(|_| LineError::Schema("prev is not 64 hex digits".into()))?;
    Ok(ParsedLine {
        v: head.v,
        seq: head.seq,
        ts: head.ts,
        prev,
        hash,
        event,
    })
}
