//! A throwaway OpenID Connect provider: panva's `oidc-provider` (npm) run by Node.js.
//!
//! The script is `oidc/provider.mjs` in this crate; its npm dependencies must be
//! installed first (`npm install --prefix crates/portcullis-testkit/oidc`, which
//! `scripts/test` does). The provider listens on `127.0.0.1` only and exits when its
//! stdin (a pipe from this process) closes, so it never outlives the test process.
//! Routes under `/__test/` exist only in this script and drive it from tests.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::error::{Error, IoContext};
use crate::free_port;
use crate::server::log_tail;

/// The public device-flow client (`token_endpoint_auth_method` `none`, grant types
/// device code and refresh token). Its ID tokens have `aud` = this id.
pub const DEVICE_CLIENT: &str = "portcullis-cli";
/// The confidential client-credentials client `(client_id, client_secret)`; it may
/// authenticate with `client_secret_basic` or `client_secret_post`.
pub const SERVICE_CLIENT: (&str, &str) = ("svc-reporting", "svc-reporting-secret");
/// The resource indicator a client-credentials request gets when it names none; its
/// access tokens are JWTs (`typ` `at+jwt`, RS256) with `aud` = [`AUDIENCE`].
pub const RESOURCE: &str = "urn:portcullis";
/// The `aud` of client-credentials access tokens.
pub const AUDIENCE: &str = "portcullis";
/// The groups (`groups` and `realm_access.roles`) of [`SERVICE_CLIENT`]'s access tokens.
pub const SERVICE_GROUPS: &[&str] = &["reporting"];
/// The scope [`OidcProvider::device_login`] asks for; `groups` adds the `groups` and
/// `realm_access` claims.
pub const DEVICE_SCOPE: &str = "openid profile email groups";
/// Lifetime of ID tokens, access tokens and device codes, in seconds.
pub const TOKEN_TTL: u64 = 600;

/// A user the provider knows (log in with [`OidcProvider::approve_device`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Account {
    /// The account id: the `sub` of its tokens.
    pub id: &'static str,
    /// The `name` claim.
    pub name: &'static str,
    /// The `email` claim (`email_verified` is `true`).
    pub email: &'static str,
    /// The `groups` claim, also nested as `realm_access.roles`.
    pub groups: &'static [&'static str],
}

/// Every account of the provider (mirrored in `oidc/provider.mjs`).
pub const ACCOUNTS: &[Account] = &[
    Account {
        id: "alice",
        name: "Alice Analyst",
        email: "alice@example.com",
        groups: &["analysts"],
    },
    Account {
        id: "dana",
        name: "Dana DBA",
        email: "dana@example.com",
        groups: &["dba"],
    },
    Account {
        id: "bob",
        name: "Bob Nogroups",
        email: "bob@example.com",
        groups: &[],
    },
];

/// A private signing key of the provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SigningKey {
    /// Its `kid` in the JWKS and in token headers.
    pub kid: String,
    /// The private key, PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    pub pem: String,
}

/// How long the provider may take to answer discovery.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one HTTP exchange with the provider may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `oidc-provider` on `127.0.0.1`; dropping it stops the provider.
///
/// It signs with an RSA key (RS256, the default) and an EC P-256 key (ES256), both in
/// the JWKS at `/jwks`; [`OidcProvider::rotate`] adds RSA keys. State (codes, grants)
/// lives in the provider's memory.
#[derive(Debug)]
pub struct OidcProvider {
    child: Child,
    stdin: Option<ChildStdin>,
    dir: tempfile::TempDir,
    port: u16,
    issuer: String,
}

impl OidcProvider {
    /// The directory holding `provider.mjs`, `package.json` and `node_modules`.
    pub fn script_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("oidc")
    }

    /// Starts the provider on a free port and waits until discovery answers.
    ///
    /// Fails with [`Error::Environment`] when `node` or the npm package is missing.
    pub fn start() -> Result<OidcProvider, Error> {
        let dir = Self::script_dir();
        if !dir
            .join("node_modules/oidc-provider/package.json")
            .is_file()
        {
            return Err(Error::Environment(format!(
                "the npm package oidc-provider is not installed: run \
                 `npm install --no-audit --no-fund --prefix {}` (scripts/test does)",
                dir.display()
            )));
        }
        let tmp = tempfile::Builder::new()
            .prefix("portcullis-oidc-")
            .tempdir()
            .ctx(|| "creating a temporary directory")?;
        for _ in 0..5 {
            let mut provider = Self::spawn(&dir, tmp.path(), free_port())?;
            match provider.wait_ready() {
                Ok(()) => return Ok(provider.adopt(tmp)),
                Err(Some(e)) => return Err(e),
                Err(None) => {} // the port was taken meanwhile: try another
            }
        }
        Err(Error::Oidc("no free port found in 5 attempts".into()))
    }

    fn spawn(dir: &Path, tmp: &Path, port: u16) -> Result<Spawned, Error> {
        let log_path = tmp.join(format!("provider-{port}.log"));
        let log = File::create(&log_path).ctx(|| format!("creating {}", log_path.display()))?;
        let log2 = log
            .try_clone()
            .ctx(|| format!("opening {}", log_path.display()))?;
        let mut child = Command::new("node")
            .arg(dir.join("provider.mjs"))
            .arg(port.to_string())
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(log)
            .stderr(log2)
            .process_group(0) // Ctrl-C reaches the test, whose death closes our stdin
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Error::Environment(
                    "`node` (Node.js >= 18) not found on PATH: install nodejs and npm".into(),
                ),
                _ => Error::io("starting node provider.mjs", e),
            })?;
        let stdin = child.stdin.take();
        Ok(Spawned {
            child,
            stdin,
            log: log_path,
            port,
        })
    }

    /// `http://127.0.0.1:PORT`, no trailing slash: the `iss` of every token and of discovery.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where the provider's stdout and stderr go.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("provider-{}.log", self.port))
    }

    /// Sends an HTTP/1.1 request to the provider: `(status, body)`. `path` starts with `/`.
    pub fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<(u16, String), Error> {
        http(self.port, method, path, headers, body)
    }

    /// POSTs an `application/x-www-form-urlencoded` form and expects `200 OK`.
    fn post_ok(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        fields: &[(&str, &str)],
    ) -> Result<String, Error> {
        let mut all = vec![("Content-Type", "application/x-www-form-urlencoded")];
        all.extend_from_slice(headers);
        expect_ok(path, self.http("POST", path, &all, &form(fields))?)
    }

    /// Client-credentials grant for [`SERVICE_CLIENT`] (`client_secret_basic`, no
    /// `resource`, so [`RESOURCE`]): returns the access token, a JWT with header `typ`
    /// `at+jwt`, signed RS256, claims `iss`, `sub` and `client_id` (the client id),
    /// `aud` = [`AUDIENCE`], `groups` and `realm_access.roles` = [`SERVICE_GROUPS`],
    /// `jti`, `iat`, `exp` (`iat` + [`TOKEN_TTL`]).
    pub fn client_credentials(&self) -> Result<String, Error> {
        let basic = base64(format!("{}:{}", SERVICE_CLIENT.0, SERVICE_CLIENT.1).as_bytes());
        let auth = format!("Basic {basic}");
        let body = self.post_ok(
            "/token",
            &[("Authorization", &auth)],
            &[("grant_type", "client_credentials")],
        )?;
        json_str(&body, "access_token")
    }

    /// Acts as the user's browser for a device-flow login: opens the verification page
    /// for `user_code` (or a `verification_uri_complete`), confirms the code, logs in as
    /// `account` (an [`ACCOUNTS`] id) and consents to everything requested. Returns once
    /// the provider shows success; the device client's next poll then gets its tokens.
    pub fn approve_device(&self, user_code: &str, account: &str) -> Result<(), Error> {
        self.post_ok(
            "/__test/approve-device",
            &[],
            &[("user_code", user_code), ("account", account)],
        )
        .map(drop)
        .map_err(|e| {
            Error::Oidc(format!(
                "approving device code {user_code} as {account}: {e}"
            ))
        })
    }

    /// Runs a whole device flow for [`DEVICE_CLIENT`] with scope [`DEVICE_SCOPE`],
    /// approved as `account`, and returns the ID token: `sub` = the account id, `aud` =
    /// [`DEVICE_CLIENT`], `name`, `email`, `email_verified`, `groups`,
    /// `realm_access.roles`, `jti`, `at_hash`, `iss`, `iat`, `exp`.
    pub fn device_login(&self, account: &str) -> Result<String, Error> {
        let start = self.post_ok(
            "/device/auth",
            &[],
            &[("client_id", DEVICE_CLIENT), ("scope", DEVICE_SCOPE)],
        )?;
        self.approve_device(&json_str(&start, "verification_uri_complete")?, account)?;
        let device_code = json_str(&start, "device_code")?;
        let grant = "urn:ietf:params:oauth:grant-type:device_code";
        let fields = [
            ("grant_type", grant),
            ("client_id", DEVICE_CLIENT),
            ("device_code", &device_code),
        ];
        json_str(&self.post_ok("/token", &[], &fields)?, "id_token")
    }

    /// The private half of the key the provider currently signs `alg` (`RS256` or
    /// `ES256`) tokens with, to forge tokens (expired, wrong `aud`, ...) in tests.
    pub fn signing_key(&self, alg: &str) -> Result<SigningKey, Error> {
        let text = expect_ok(
            "signing-key",
            self.http("GET", &format!("/__test/signing-key?alg={alg}"), &[], "")?,
        )?;
        let (kid, pem) = text
            .split_once('\n')
            .ok_or_else(|| Error::Oidc(format!("bad signing key answer: {text}")))?;
        Ok(SigningKey {
            kid: kid.to_owned(),
            pem: pem.to_owned(),
        })
    }

    /// Generates a fresh RSA key with a new `kid`, signs RS256 tokens with it from now
    /// on and publishes it first in the JWKS. Earlier keys stay published, unless
    /// `drop_old`: then the earlier RSA keys go (the ES256 key stays). The listener and
    /// port stay; issued codes and grants stay valid. Returns the new `kid`.
    pub fn rotate(&self, drop_old: bool) -> Result<String, Error> {
        let path = format!("/__test/rotate?drop_old={}", u8::from(drop_old));
        expect_ok("rotate", self.http("POST", &path, &[], "")?)
    }

    /// How many times the JWKS (`/jwks`) has been fetched so far.
    pub fn jwks_fetches(&self) -> Result<u64, Error> {
        let text = expect_ok(
            "jwks-fetches",
            self.http("GET", "/__test/jwks-fetches", &[], "")?,
        )?;
        text.trim()
            .parse()
            .map_err(|_| Error::Oidc(format!("bad JWKS fetch count: {text}")))
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        drop(self.stdin.take()); // the script exits when its stdin closes
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A started but not yet ready provider.
struct Spawned {
    child: Child,
    stdin: Option<ChildStdin>,
    log: PathBuf,
    port: u16,
}

impl Spawned {
    /// Polls discovery; `Err(None)` when the port was taken (the child has exited).
    fn wait_ready(&mut self) -> Result<(), Option<Error>> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .try_wait()
                .map_err(|e| Error::io("waiting for node", e))?
            {
                let log = log_tail(&self.log, 0);
                if log.contains("EADDRINUSE") {
                    return Err(None);
                }
                let what = format!("node provider.mjs {}", self.port);
                return Err(Some(Error::Command {
                    what,
                    status,
                    stderr: log,
                }));
            }
            if http(
                self.port,
                "GET",
                "/.well-known/openid-configuration",
                &[],
                "",
            )
            .is_ok_and(|(s, _)| s == 200)
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let what = format!(
                    "the OIDC provider did not answer within 30s; log:\n{}",
                    log_tail(&self.log, 0)
                );
                return Err(Some(Error::Timeout { what }));
            }
            sleep(Duration::from_millis(20));
        }
    }

    fn adopt(mut self, dir: tempfile::TempDir) -> OidcProvider {
        let port = self.port;
        let stdin = self.stdin.take();
        // `Spawned` has no Drop, so the child moves out intact.
        OidcProvider {
            child: self.child,
            stdin,
            dir,
            port,
            issuer: format!("http://127.0.0.1:{port}"),
        }
    }
}

/// One HTTP/1.1 exchange (`Connection: close`, read to EOF) with 127.0.0.1:`port`.
fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, String), Error> {
    let what = || format!("{method} http://127.0.0.1:{port}{path}");
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT).ctx(what)?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT)).ctx(what)?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).ctx(what)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ctx(what)?;
    let bad = || Error::Oidc(format!("{}: malformed HTTP response", what()));
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(bad)?;
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    let mut payload = raw[split + 4..].to_vec();
    if head.contains("\r\ntransfer-encoding: chunked") {
        payload = dechunk(&payload).ok_or_else(bad)?;
    }
    Ok((status, String::from_utf8_lossy(&payload).into_owned()))
}

/// Decodes a `Transfer-Encoding: chunked` body.
fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(line_end + 2..line_end + 2 + size)?);
        data = data.get(line_end + 4 + size..)?;
    }
}

fn expect_ok(what: &str, (status, body): (u16, String)) -> Result<String, Error> {
    if status == 200 {
        Ok(body)
    } else {
        Err(Error::Oidc(format!("{what}: HTTP {status}: {body}")))
    }
}

/// The string member `key` of the JSON object `body`.
fn json_str(body: &str, key: &str) -> Result<String, Error> {
    let value: serde_json::Value =
        serde_json::from_str(body).map_err(|e| Error::Oidc(format!("bad JSON ({e}): {body}")))?;
    value[key]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| Error::Oidc(format!("no string `{key}` in {body}")))
}

/// `application/x-www-form-urlencoded` encoding.
fn form(fields: &[(&str, &str)]) -> String {
    let encode = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    char::from(b).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    let pairs: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect();
    pairs.join("&")
}

/// Standard base64 with padding.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            let sextet = (n >> (18 - 6 * i)) & 63;
            out.push(if i <= chunk.len() {
                char::from(ALPHABET[sextet as usize])
            } else {
                '='
            });
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use ring::signature;
    use serde_json::{Value, json};

    /// Decodes base64 or base64url, padded or not, ignoring line breaks.
    fn unbase64(text: &str) -> Vec<u8> {
        let sextet = |c: u8| match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => panic!("bad base64 byte {c}"),
        };
        let digits: Vec<u8> = text
            .bytes()
            .filter(|c| !b"=\r\n".contains(c))
            .map(sextet)
            .collect();
        let mut out = Vec::new();
        for chunk in digits.chunks(4) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, &d)| n | u32::from(d) << (18 - 6 * i));
            out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
        }
        out
    }

    fn b64url(data: &[u8]) -> String {
        base64(data)
            .replace('+', "-")
            .replace('/', "_")
            .replace('=', "")
    }

    /// `(header, payload, signing input, signature)` of a compact JWS.
    fn jwt(token: &str) -> (Value, Value, String, Vec<u8>) {
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3, "not a JWS: {token}");
        let json = |s: &str| serde_json::from_slice::<Value>(&unbase64(s)).unwrap();
        (
            json(parts[0]),
            json(parts[1]),
            format!("{}.{}", parts[0], parts[1]),
            unbase64(parts[2]),
        )
    }

    fn get_json(p: &OidcProvider, path: &str) -> Value {
        let (status, body) = p.http("GET", path, &[], "").unwrap();
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Verifies `token`'s signature with the JWKS key its header names; returns the claims.
    fn verify(jwks: &Value, token: &str) -> (Value, Value) {
        let (header, payload, input, sig) = jwt(token);
        let keys = jwks["keys"].as_array().unwrap();
        let jwk = keys
            .iter()
            .find(|k| k["kid"] == header["kid"])
            .expect("kid not in JWKS");
        let b = |name: &str| unbase64(jwk[name].as_str().unwrap());
        match header["alg"].as_str().unwrap() {
            "RS256" => signature::RsaPublicKeyComponents {
                n: b("n"),
                e: b("e"),
            }
            .verify(
                &signature::RSA_PKCS1_2048_8192_SHA256,
                input.as_bytes(),
                &sig,
            ),
            "ES256" => {
                let point = [vec![4], b("x"), b("y")].concat();
                signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(input.as_bytes(), &sig)
            }
            other => panic!("unexpected alg {other}"),
        }
        .unwrap_or_else(|_| panic!("bad signature on {header}"));
        (header, payload)
    }

    /// Signs `claims` with the provider's private `alg` key, as a test would forge a token.
    fn forge(key: &SigningKey, alg: &str, claims: &Value) -> String {
        let der = unbase64(
            key.pem
                .lines()
                .filter(|l| !l.starts_with("-----"))
                .collect::<String>()
                .as_str(),
        );
        let enc = |v: &Value| b64url(v.to_string().as_bytes());
        let input = format!(
            "{}.{}",
            enc(&json!({"alg": alg, "kid": key.kid, "typ": "JWT"})),
            enc(claims)
        );
        let rng = ring::rand::SystemRandom::new();
        let sig = if alg == "RS256" {
            let pair = signature::RsaKeyPair::from_pkcs8(&der).unwrap();
            let mut sig = vec![0; pair.public().modulus_len()];
            pair.sign(
                &signature::RSA_PKCS1_SHA256,
                &rng,
                input.as_bytes(),
                &mut sig,
            )
            .unwrap();
            sig
        } else {
            let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
            let pair = signature::EcdsaKeyPair::from_pkcs8(alg, &der, &rng).unwrap();
            pair.sign(&rng, input.as_bytes()).unwrap().as_ref().to_vec()
        };
        format!("{input}.{}", b64url(&sig))
    }

    fn kids(jwks: &Value) -> Vec<String> {
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Asserts `claims[name] == value` for each pair, and a `jti` and a [`TOKEN_TTL`] lifetime.
    fn assert_claims(claims: &Value, expected: &[(&str, Value)]) {
        for (name, value) in expected {
            assert_eq!(&claims[name], value, "{name} in {claims}");
        }
        assert!(
            claims["jti"].as_str().is_some_and(|j| !j.is_empty()),
            "{claims}"
        );
        let lifetime = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
        assert_eq!(lifetime, TOKEN_TTL, "{claims}");
    }

    #[test]
    fn provider_issues_verifiable_tokens_and_rotates_keys() {
        let started = Instant::now();
        let p =
            OidcProvider::start().unwrap_or_else(|e| panic!("cannot start the OIDC provider: {e}"));
        eprintln!("OIDC provider ready in {:?}", started.elapsed());
        let (port, iss) = (p.port(), json!(p.issuer()));
        assert_eq!(p.issuer(), format!("http://127.0.0.1:{port}"));

        // Discovery and JWKS: an RS256 RSA key and an ES256 P-256 key, public halves only.
        let discovery = get_json(&p, "/.well-known/openid-configuration");
        assert_eq!(discovery["issuer"], iss);
        assert_eq!(discovery["jwks_uri"], format!("{}/jwks", p.issuer()));
        let grants = discovery["grant_types_supported"].to_string();
        assert!(
            grants.contains("client_credentials") && grants.contains("device_code"),
            "{grants}"
        );
        assert_eq!(p.jwks_fetches().unwrap(), 0);
        let jwks = get_json(&p, "/jwks");
        assert_eq!(p.jwks_fetches().unwrap(), 1);
        let keys = jwks["keys"].as_array().unwrap();
        let shape = |k: &Value| format!("{} {} {}", k["kty"], k["alg"], k["crv"]);
        assert_eq!(
            keys.iter().map(shape).collect::<Vec<_>>(),
            [r#""RSA" "RS256" null"#, r#""EC" "ES256" "P-256""#]
        );
        assert!(
            keys.iter().all(|k| k.get("d").is_none()),
            "private parts published: {jwks}"
        );
        let (rsa, ec) = (
            p.signing_key("RS256").unwrap(),
            p.signing_key("ES256").unwrap(),
        );
        assert_eq!(kids(&jwks), [rsa.kid.clone(), ec.kid.clone()]);
        assert!(
            rsa.pem.starts_with("-----BEGIN PRIVATE KEY-----"),
            "{}",
            rsa.pem
        );
        assert!(p.signing_key("HS256").is_err());
        // The private PEMs belong to the published keys: tokens forged with them verify.
        for (key, alg) in [(&rsa, "RS256"), (&ec, "ES256")] {
            let (header, claims) = verify(&jwks, &forge(key, alg, &json!({"sub": "mallory"})));
            assert_eq!(
                (&header["alg"], &claims["sub"]),
                (&json!(alg), &json!("mallory"))
            );
        }

        // Client credentials (client_secret_basic): an RFC 9068 JWT for the gateway.
        let (header, claims) = verify(&jwks, &p.client_credentials().unwrap());
        assert_eq!(
            header,
            json!({"alg": "RS256", "typ": "at+jwt", "kid": rsa.kid})
        );
        let service_claims = [
            ("iss", iss.clone()),
            ("aud", json!(AUDIENCE)),
            ("sub", json!(SERVICE_CLIENT.0)),
            ("client_id", json!(SERVICE_CLIENT.0)),
            ("groups", json!(SERVICE_GROUPS)),
            ("realm_access", json!({ "roles": SERVICE_GROUPS })),
        ];
        assert_claims(&claims, &service_claims);
        // client_secret_post works too; a wrong secret does not.
        let form_header = [("Content-Type", "application/x-www-form-urlencoded")];
        let post = |fields: &[(&str, &str)]| {
            p.http("POST", "/token", &form_header, &form(fields))
                .unwrap()
        };
        let by_post = |secret| {
            post(&[
                ("grant_type", "client_credentials"),
                ("client_id", SERVICE_CLIENT.0),
                ("client_secret", secret),
            ])
        };
        let (status, body) = by_post(SERVICE_CLIENT.1);
        assert_eq!(status, 200, "{body}");
        assert_claims(
            &verify(&jwks, &json_str(&body, "access_token").unwrap()).1,
            &service_claims,
        );
        assert_eq!(by_post("wrong").0, 401);

        // Device flow by hand: pending until the user approves, then an ID token.
        let start = p.post_ok(
            "/device/auth",
            &[],
            &[("client_id", DEVICE_CLIENT), ("scope", DEVICE_SCOPE)],
        );
        let start = start.unwrap();
        let device_code = json_str(&start, "device_code").unwrap();
        let user_code = json_str(&start, "user_code").unwrap();
        let poll = || {
            post(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("client_id", DEVICE_CLIENT),
                ("device_code", &device_code),
            ])
        };
        let (status, body) = poll();
        assert_eq!(
            (status, json_str(&body, "error").unwrap().as_str()),
            (400, "authorization_pending"),
            "{body}"
        );
        let err = p
            .approve_device(&user_code, "nobody")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown account"), "{err}");
        let err = p
            .approve_device("BBBB-CCCC", "alice")
            .unwrap_err()
            .to_string();
        assert!(err.contains("rejected"), "{err}");
        p.approve_device(&user_code, "alice").unwrap();
        assert!(
            p.approve_device(&user_code, "alice").is_err(),
            "a code is approved once"
        );
        let (status, body) = poll();
        assert_eq!(status, 200, "{body}");
        let alice_token = json_str(&body, "id_token").unwrap();
        let (header, claims) = verify(&jwks, &alice_token);
        assert_eq!(
            (&header["alg"], &header["kid"]),
            (&json!("RS256"), &json!(rsa.kid))
        );
        let id_claims = |a: &Account, kid: &str| {
            let (header, claims) = verify(&get_json(&p, "/jwks"), &p.device_login(a.id).unwrap());
            assert_eq!(header["kid"], kid);
            claims
        };
        let account_claims = |a: &Account| {
            [
                ("iss", iss.clone()),
                ("aud", json!(DEVICE_CLIENT)),
                ("sub", json!(a.id)),
                ("name", json!(a.name)),
                ("email", json!(a.email)),
                ("email_verified", json!(true)),
                ("groups", json!(a.groups)),
                ("realm_access", json!({ "roles": a.groups })),
            ]
        };
        assert_claims(&claims, &account_claims(&ACCOUNTS[0]));
        assert_eq!(
            (ACCOUNTS[0].id, ACCOUNTS[0].groups),
            ("alice", &["analysts"][..])
        );

        // Rotation: a new RSA key signs, the old one stays published; the port stays.
        let new_kid = p.rotate(false).unwrap();
        assert_ne!(new_kid, rsa.kid);
        assert_eq!(p.port(), port);
        assert_eq!(
            kids(&get_json(&p, "/jwks")),
            [new_kid.clone(), rsa.kid.clone(), ec.kid.clone()]
        );
        assert_eq!(p.signing_key("RS256").unwrap().kid, new_kid);
        assert_eq!(p.signing_key("ES256").unwrap(), ec);
        // A token issued before the rotation still verifies with the new JWKS.
        verify(&get_json(&p, "/jwks"), &alice_token);
        // Every account (as the script knows it) matches ACCOUNTS, signed with the new key.
        for account in ACCOUNTS {
            assert_claims(&id_claims(account, &new_kid), &account_claims(account));
        }

        // Rotation dropping the old RSA keys.
        let newest = p.rotate(true).unwrap();
        let jwks3 = get_json(&p, "/jwks");
        assert_eq!(kids(&jwks3), [newest.clone(), ec.kid.clone()]);
        assert_eq!(
            verify(&jwks3, &p.client_credentials().unwrap()).0["kid"],
            newest.as_str()
        );
        assert_eq!(p.jwks_fetches().unwrap(), 4 + ACCOUNTS.len() as u64);

        // The script exits by itself when its stdin closes (as when the test process dies).
        let mut p = p;
        drop(p.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while p.child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "node did not exit when its stdin closed"
            );
            sleep(Duration::from_millis(10));
        }
        assert!(
            TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err(),
            "still listening"
        );
    }
}
