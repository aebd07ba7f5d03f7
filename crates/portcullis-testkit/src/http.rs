//! An in-process HTTP/1.1 upstream with known behaviour (axum on hyper), for tests of
//! the HTTP gateway: planted personal data, a lazily generated chunked stream, slow
//! answers, errors, a body that breaks off, text, binary, gzip, an echo, and a record of
//! every request it received.
//!
//! Each connection runs in a task of a [`JoinSet`] owned by the server task; dropping the
//! [`HttpUpstream`] cancels a token: the listener closes at once, idle connections close,
//! answers in flight get [`SHUTDOWN_GRACE`] to finish and are then aborted, and the
//! server task ends. Nothing outlives that.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, delete, get, post};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, Version, header};
use hyper::body::{Body as HttpBody, Frame, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::certs::Certs;
use crate::error::{Error, IoContext};

/// The e-mail address of the first user of `GET /v1/users`, also in `/v1/error`,
/// `/v1/text`, `/v1/binary` and inside [`PLANTED_NOTES`].
pub const PLANTED_EMAIL: &str = "jane.doe@example.com";
/// The first user's payment card (Luhn-valid Visa test number).
pub const PLANTED_CARD: &str = "4242 4242 4242 4242";
/// The first user's US social security number.
pub const PLANTED_SSN: &str = "123-45-6789";
/// The first user's phone (`contact.phone`), also in `/v1/text`.
pub const PLANTED_PHONE: &str = "+1 415-555-0132";
/// The first user's `contact.notes`: free text with [`PLANTED_EMAIL`] inside it.
pub const PLANTED_NOTES: &str = "write to jane.doe@example.com today";
/// The second user's e-mail address.
pub const PLANTED_EMAIL_2: &str = "john.smith@example.org";
/// The second user's payment card (Luhn-valid Mastercard test number).
pub const PLANTED_CARD_2: &str = "5555 5555 5555 4444";
/// The second user's US social security number.
pub const PLANTED_SSN_2: &str = "234-56-7890";
/// The second user's phone (`contact.phone`).
pub const PLANTED_PHONE_2: &str = "+44 20 7946 0958";
/// Every planted value of `GET /v1/users`, each appearing literally (unescaped) in
/// [`USERS_JSON`]; a masking gateway should let none of them through.
pub const PLANTED: &[&str] = &[
    PLANTED_EMAIL,
    PLANTED_CARD,
    PLANTED_SSN,
    PLANTED_PHONE,
    PLANTED_EMAIL_2,
    PLANTED_CARD_2,
    PLANTED_SSN_2,
    PLANTED_PHONE_2,
];
/// A 16-digit number that fails the Luhn check (`order_ref` of the first user).
pub const NEAR_MISS_CARD: &str = "4242 4242 4242 4241";
/// Not an e-mail address (`reply_to` of the first user).
pub const NEAR_MISS_EMAIL: &str = "not an email";
/// SSN-shaped but invalid (area 999; `order_ref` of the second user).
pub const NEAR_MISS_SSN: &str = "999-12-3456";
/// Look-alikes in [`USERS_JSON`] that a masking gateway must leave untouched.
pub const NEAR_MISSES: &[&str] = &[NEAR_MISS_CARD, NEAR_MISS_EMAIL, NEAR_MISS_SSN];

/// The exact body of `GET /v1/users` (and, decompressed, of `GET /v1/gzip`): nested
/// objects, arrays, numbers, booleans, `null`, raw UTF-8 (`café ☕ 🦀`), JSON escapes
/// (`"caf\u00e9"`, a surrogate pair `"\ud83d\ude80"`, `\"`, `\\`, `\t`, `\n`), the
/// [`PLANTED`] values and the [`NEAR_MISSES`].
pub const USERS_JSON: &str = r#"{
  "users": [
    {
      "id": 1,
      "name": "Jane Doe",
      "email": "jane.doe@example.com",
      "card": "4242 4242 4242 4242",
      "ssn": "123-45-6789",
      "contact": {
        "phone": "+1 415-555-0132",
        "notes": "write to jane.doe@example.com today"
      },
      "tags": ["vip", "caf\u00e9", "\ud83d\ude80", "🦀", ""],
      "balance": 1234.5,
      "visits": 42,
      "ratio": -0.25,
      "big": 1.5e21,
      "active": true,
      "manager": null,
      "order_ref": "4242 4242 4242 4241",
      "reply_to": "not an email",
      "bio": "likes \"quotes\", back\\slashes,\ttabs and\nnew lines; café ☕"
    },
    {
      "id": 2,
      "name": "John Smith",
      "email": "john.smith@example.org",
      "card": "5555 5555 5555 4444",
      "ssn": "234-56-7890",
      "contact": {
        "phone": "+44 20 7946 0958",
        "notes": null
      },
      "tags": [],
      "balance": 0,
      "visits": 7,
      "ratio": 0.5,
      "big": -3,
      "active": false,
      "manager": 1,
      "order_ref": "999-12-3456",
      "reply_to": "",
      "bio": "plain"
    }
  ],
  "total": 2,
  "page": { "next": null, "size": 50, "cursor": [1, 2, [3, {"deep": true}]] }
}
"#;

/// The exact `text/plain; charset=utf-8` body of `GET /v1/text`.
pub const TEXT_BODY: &str = "Hello from the Portcullis test upstream.\n\
     Write to jane.doe@example.com or call +1 415-555-0132 for access.\n";

/// The exact JSON body of `GET /v1/error` (status 500); it names [`PLANTED_EMAIL`].
pub const ERROR_JSON: &str =
    r#"{"error":"internal","message":"lookup failed for jane.doe@example.com"}"#;

/// The filler text in every object of `GET /v1/stream`.
pub const STREAM_FILLER: &str =
    "The quick brown fox jumps over the lazy dog while five boxing wizards jump quickly.";
/// `GET /v1/stream` produces chunks of at least this many bytes (whole objects; the
/// last chunk may be shorter).
pub const STREAM_CHUNK: usize = 64 * 1024;
/// `n` of `GET /v1/stream` when the query names none.
pub const STREAM_DEFAULT_N: u64 = 100;
/// `n` of `GET /v1/fail-mid` when the query names none.
pub const FAIL_MID_DEFAULT_N: u64 = 10_000;
/// `ms` of `GET /v1/slow` when the query names none.
pub const SLOW_DEFAULT_MS: u64 = 1_000;
/// Recorded request bodies up to this size are kept whole in [`RecordedRequest::body`].
pub const RECORDED_BODY_LIMIT: usize = 1024 * 1024;
/// How long answers in flight may take to finish once the upstream is dropped.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// How long `/v1/fail-mid` waits (with its prefix flushed) before it aborts.
const FAIL_MID_PAUSE: Duration = Duration::from_millis(50);
/// How long a TLS client may take to finish its handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The length and SHA-256 of a body.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BodyDigest {
    /// Its length in bytes.
    pub len: u64,
    /// Its SHA-256, lowercase hex.
    pub sha256: String,
}

impl BodyDigest {
    /// The digest of `data`.
    pub fn of(data: &[u8]) -> BodyDigest {
        BodyDigest {
            len: data.len() as u64,
            sha256: sha256_hex(data),
        }
    }
}

/// The SHA-256 of `data`, lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// One request as the upstream received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// The method.
    pub method: Method,
    /// The path, as sent (not percent-decoded).
    pub path: String,
    /// The query string without `?`, as sent.
    pub query: Option<String>,
    /// The HTTP version.
    pub version: Version,
    /// Every header, as received (names are lowercase).
    pub headers: HeaderMap,
    /// Length and SHA-256 of the body (of the part received, if it was cut short).
    pub body_digest: BodyDigest,
    /// The body itself when it is at most [`RECORDED_BODY_LIMIT`] bytes.
    pub body: Option<Bytes>,
    /// Whether the body arrived whole (`false`: the client broke off; the upstream then
    /// answered 400 without routing the request).
    pub body_complete: bool,
    /// The client's address.
    pub peer: SocketAddr,
}

impl RecordedRequest {
    /// The first value of header `name` (any case), if it is valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Every value of header `name` (any case), lossily decoded.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }
}

/// An in-process HTTP/1.1 server on `127.0.0.1` (optionally HTTPS) with known endpoints;
/// dropping it stops it.
///
/// All JSON answers have `content-type: application/json`.
///
/// | request | answer |
/// | --- | --- |
/// | `GET /v1/users` | 200, [`USERS_JSON`] (`content-length`) |
/// | `GET /v1/stream?n=N` | 200, [`stream_bytes`]`(N)`, chunked, generated lazily in chunks of ~[`STREAM_CHUNK`] |
/// | `GET /v1/slow?ms=M` | after M ms: 200, `{"slept_ms":M}` |
/// | `GET /v1/error` | 500, [`ERROR_JSON`] |
/// | `GET /v1/fail-mid?n=N` | 200, chunked: the first [`fail_mid_prefix_len`]`(N)` bytes of [`stream_bytes`]`(N)`, a pause, then the connection is aborted (no final chunk) |
/// | `GET /v1/text` | 200, `text/plain; charset=utf-8`, [`TEXT_BODY`] |
/// | `GET /v1/redirect` | 302, `location: /v1/users?owner=`[`PLANTED_EMAIL`], `x-owner:` [`PLANTED_EMAIL`], `{"moved":true}` |
/// | `GET /v1/binary` | 200, `application/octet-stream`, [`binary_body`] |
/// | `GET /v1/gzip` | 200, [`USERS_JSON`] with `content-encoding: gzip` if `accept-encoding` allows gzip (q > 0, or `*`), as is otherwise; `vary: accept-encoding` |
/// | `POST /v1/echo` | 200, `{"len":…,"sha256":"…","headers":{"lowercase-name":"value, value",…}}` of the request |
/// | `DELETE /v1/indices/{name}` | 200, `{"deleted":name}` (percent-decoded) |
/// | `POST /admin/{*rest}` | 200, `{"admin":rest}` (`/admin/a/b` gives `"a/b"`) |
/// | any `/v1/status/{code}` | that status, `{"status":code}` |
/// | anything else | 404 `{"error":"not found","path":…}` (405 with no body for a known path, other method) |
///
/// A bad `n` or `ms` gets 400. Every request is recorded ([`HttpUpstream::requests`])
/// before it is answered: its body is read whole first.
///
/// There is no WebSocket endpoint (axum's `ws` feature would add tokio-tungstenite and
/// its dependencies to the tree).
#[derive(Debug)]
pub struct HttpUpstream {
    addr: SocketAddr,
    url: String,
    tls: bool,
    records: Arc<Mutex<Vec<RecordedRequest>>>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl HttpUpstream {
    /// Starts a plain-HTTP server on `127.0.0.1:0`, spawned on the current tokio runtime
    /// (which needs IO and time enabled). Fails with [`Error::Environment`] outside one.
    pub async fn start() -> Result<HttpUpstream, Error> {
        HttpUpstream::launch(None).await
    }

    /// Starts an HTTPS server (rustls with ring, TLS 1.2 and 1.3, ALPN `http/1.1`) on
    /// `127.0.0.1:0` presenting `certs.cert_pem`; clients trust `certs.ca_pem`.
    pub async fn start_tls(certs: &Certs) -> Result<HttpUpstream, Error> {
        let acceptor = tls_acceptor(certs)?;
        HttpUpstream::launch(Some(acceptor)).await
    }

    async fn launch(tls: Option<TlsAcceptor>) -> Result<HttpUpstream, Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| {
            Error::Environment(format!(
                "HttpUpstream must start inside a tokio runtime: {e}"
            ))
        })?;
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .ctx(|| "binding 127.0.0.1:0 for the HTTP upstream")?;
        let addr = listener
            .local_addr()
            .ctx(|| "reading the HTTP upstream's address")?;
        let records = Arc::new(Mutex::new(Vec::new()));
        let app = App {
            router: router(),
            records: Arc::clone(&records),
        };
        let stop = CancellationToken::new();
        let is_tls = tls.is_some();
        let task = runtime.spawn(accept_loop(listener, tls, app, stop.clone()));
        let scheme = if is_tls { "https" } else { "http" };
        Ok(HttpUpstream {
            addr,
            url: format!("{scheme}://{addr}"),
            tls: is_tls,
            records,
            stop,
            task: Some(task),
        })
    }

    /// The listening address (`127.0.0.1:PORT`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:PORT` (`https://` for [`HttpUpstream::start_tls`]), no trailing slash.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether it serves HTTPS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().clone()
    }

    /// Every request received so far, oldest first, forgetting them.
    pub fn take_requests(&self) -> Vec<RecordedRequest> {
        std::mem::take(&mut *self.lock())
    }

    /// The latest request received, if any.
    pub fn last_request(&self) -> Option<RecordedRequest> {
        self.lock().last().cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<RecordedRequest>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops the server and waits until it has: the listener is closed, idle connections
    /// are closed, answers in flight got up to [`SHUTDOWN_GRACE`] and every task ended.
    /// (Dropping does the same without waiting.)
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for HttpUpstream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// What every connection shares.
#[derive(Clone)]
struct App {
    router: Router,
    records: Arc<Mutex<Vec<RecordedRequest>>>,
}

fn tls_acceptor(certs: &Certs) -> Result<TlsAcceptor, Error> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    let chain = CertificateDer::pem_slice_iter(certs.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Tls(format!("server certificate: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(certs.key_pem.as_bytes())
        .map_err(|e| Error::Tls(format!("server key: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| Error::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Accepts connections until `stop`, then drains them (see [`SHUTDOWN_GRACE`]).
async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: App,
    stop: CancellationToken,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    let (app, stop) = (app.clone(), stop.clone());
                    match tls.clone() {
                        None => {
                            conns.spawn(serve_connection(tcp, peer, app, stop));
                        }
                        Some(acceptor) => {
                            conns.spawn(async move {
                                let handshake = tokio::time::timeout(
                                    TLS_HANDSHAKE_TIMEOUT,
                                    acceptor.accept(tcp),
                                );
                                let stream = tokio::select! {
                                    r = handshake => r,
                                    () = stop.cancelled() => return,
                                };
                                if let Ok(Ok(stream)) = stream {
                                    serve_connection(stream, peer, app, stop).await;
                                }
                            });
                        }
                    }
                }
                // Out of file descriptors and the like: back off a little.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
        }
    }
    drop(listener);
    let drain = async { while conns.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, drain).await;
    conns.shutdown().await;
}

/// Serves one connection; on `stop`, shuts it down gracefully.
async fn serve_connection<I>(io: I, peer: SocketAddr, app: App, stop: CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| handle(app.clone(), peer, req));
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(io), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Reads the body whole, records the request, then routes it.
async fn handle(
    app: App,
    peer: SocketAddr,
    req: http::Request<Incoming>,
) -> Result<Response, Infallible> {
    let (parts, mut body) = req.into_parts();
    let mut data = Vec::new();
    let mut complete = true;
    loop {
        match std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            None => break,
            Some(Ok(frame)) => {
                if let Some(chunk) = frame.data_ref() {
                    data.extend_from_slice(chunk);
                }
            }
            Some(Err(_)) => {
                complete = false;
                break;
            }
        }
    }
    let data = Bytes::from(data);
    let record = RecordedRequest {
        method: parts.method.clone(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        version: parts.version,
        headers: parts.headers.clone(),
        body_digest: BodyDigest::of(&data),
        body: (data.len() <= RECORDED_BODY_LIMIT).then(|| data.clone()),
        body_complete: complete,
        peer,
    };
    app.records
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(record);
    if !complete {
        let answer = json!({"error": "the request body was cut short"});
        return Ok(json_response(StatusCode::BAD_REQUEST, &answer));
    }
    app.router
        .oneshot(http::Request::from_parts(parts, Body::from(data)))
        .await
}

fn router() -> Router {
    Router::new()
        .route("/v1/users", get(users))
        .route("/v1/stream", get(stream))
        .route("/v1/slow", get(slow))
        .route("/v1/error", get(error))
        .route("/v1/fail-mid", get(fail_mid))
        .route("/v1/text", get(text))
        .route("/v1/redirect", get(redirect))
        .route("/v1/binary", get(binary))
        .route("/v1/gzip", get(gzip))
        .route("/v1/echo", post(echo))
        .route("/v1/indices/{name}", delete(delete_index))
        .route("/admin/{*rest}", post(admin))
        .route("/v1/status/{code}", any(status))
        .route("/idp/{port}/{*rest}", get(downgrading_discovery))
        .route("/jwks", get(empty_jwks))
        .fallback(not_found)
}

/// A hostile OpenID Connect discovery document for the issuer `https://HOST/idp/PORT`: it
/// names `http://127.0.0.1:PORT/jwks` as the keys' address — keys fetched in clear for an
/// https issuer, which a gateway must refuse.
async fn downgrading_discovery(
    Path((port, rest)): Path<(u16, String)>,
    headers: HeaderMap,
) -> Response {
    if rest != ".well-known/openid-configuration" {
        return json_response(StatusCode::NOT_FOUND, &json!({ "error": "not found" }));
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    json_response(
        StatusCode::OK,
        &json!({
            "issuer": format!("https://{host}/idp/{port}"),
            "jwks_uri": format!("http://127.0.0.1:{port}/jwks"),
        }),
    )
}

/// An empty key set (its fetch is what a test looks for).
async fn empty_jwks() -> Response {
    json_response(StatusCode::OK, &json!({ "keys": [] }))
}

const JSON: &str = "application/json";

fn json_response(status: StatusCode, value: &Value) -> Response {
    (status, [(header::CONTENT_TYPE, JSON)], value.to_string()).into_response()
}

fn bad_request(message: String) -> Response {
    json_response(StatusCode::BAD_REQUEST, &json!({ "error": message }))
}

/// The integer query parameter `name`, or `default` when absent; a 400 answer when bad.
fn param(uri: &Uri, name: &str, default: u64) -> Result<u64, Box<Response>> {
    let Some(query) = uri.query() else {
        return Ok(default);
    };
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key == name {
            return value.parse().map_err(|_| {
                Box::new(bad_request(format!(
                    "`{name}` must be a non-negative integer, not {value:?}"
                )))
            });
        }
    }
    Ok(default)
}

async fn users() -> Response {
    ([(header::CONTENT_TYPE, JSON)], USERS_JSON).into_response()
}

async fn stream(uri: Uri) -> Response {
    match param(&uri, "n", STREAM_DEFAULT_N) {
        Ok(n) => generated(n, None),
        Err(bad) => *bad,
    }
}

async fn fail_mid(uri: Uri) -> Response {
    match param(&uri, "n", FAIL_MID_DEFAULT_N) {
        Ok(n) => generated(n, Some(fail_mid_prefix_len(n))),
        Err(bad) => *bad,
    }
}

/// A chunked answer with [`stream_bytes`]`(n)`, cut after `cut` bytes with an error.
fn generated(n: u64, cut: Option<u64>) -> Response {
    let body = GeneratedBody {
        chunks: StreamChunks::new(n),
        cut,
        pause: None,
        aborted: false,
    };
    ([(header::CONTENT_TYPE, JSON)], Body::new(body)).into_response()
}

async fn slow(uri: Uri) -> Response {
    match param(&uri, "ms", SLOW_DEFAULT_MS) {
        Ok(ms) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            json_response(StatusCode::OK, &json!({ "slept_ms": ms }))
        }
        Err(bad) => *bad,
    }
}

async fn error() -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        [(header::CONTENT_TYPE, JSON)],
        ERROR_JSON,
    )
        .into_response()
}

async fn text() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        TEXT_BODY,
    )
        .into_response()
}

async fn redirect() -> Response {
    (
        StatusCode::FOUND,
        [
            (header::CONTENT_TYPE, JSON.to_owned()),
            (header::LOCATION, format!("/v1/users?owner={PLANTED_EMAIL}")),
            (
                header::HeaderName::from_static("x-owner"),
                PLANTED_EMAIL.to_owned(),
            ),
        ],
        r#"{"moved":true}"#,
    )
        .into_response()
}

async fn binary() -> Response {
    (
        [(header::CONTENT_TYPE, "application/octet-stream")],
        binary_body(),
    )
        .into_response()
}

/// The exact body of `GET /v1/binary`: bytes 0 to 255, [`PLANTED_EMAIL`] in ASCII, bytes
/// 255 down to 0 (so it is not UTF-8, and holds an e-mail address that a gateway should
/// not touch in a binary body).
pub fn binary_body() -> Vec<u8> {
    let mut out: Vec<u8> = (0..=255u8).collect();
    out.extend_from_slice(PLANTED_EMAIL.as_bytes());
    out.extend((0..=255u8).rev());
    out
}

async fn gzip(headers: HeaderMap) -> Response {
    let vary = (header::VARY, HeaderValue::from_static("accept-encoding"));
    let content_type = (header::CONTENT_TYPE, HeaderValue::from_static(JSON));
    if !accepts_gzip(&headers) {
        return ([content_type, vary], USERS_JSON).into_response();
    }
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    match encoder
        .write_all(USERS_JSON.as_bytes())
        .and_then(|()| encoder.finish())
    {
        Ok(gz) => {
            let encoding = (header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            ([content_type, vary, encoding], gz).into_response()
        }
        Err(e) => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({ "error": format!("gzip: {e}") }),
        ),
    }
}

/// Whether `accept-encoding` allows gzip: `gzip`/`x-gzip` with q > 0, or else `*` with q > 0.
fn accepts_gzip(headers: &HeaderMap) -> bool {
    let (mut gzip, mut star) = (None, None);
    for value in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .find_map(|p| {
                    let p = p.trim();
                    p.strip_prefix("q=").or_else(|| p.strip_prefix("Q="))
                })
                .map_or(1.0, |q| q.trim().parse::<f32>().unwrap_or(0.0));
            match coding.as_str() {
                "gzip" | "x-gzip" => gzip = Some(q > 0.0),
                "*" => star = Some(q > 0.0),
                _ => {}
            }
        }
    }
    gzip.or(star).unwrap_or(false)
}

async fn echo(req: Request) -> Response {
    let mut headers = serde_json::Map::new();
    for name in req.headers().keys() {
        let values: Vec<String> = req
            .headers()
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        headers.insert(name.as_str().to_owned(), Value::String(values.join(", ")));
    }
    match axum::body::to_bytes(req.into_body(), usize::MAX).await {
        Ok(body) => json_response(
            StatusCode::OK,
            &json!({
                "len": body.len(),
                "sha256": sha256_hex(&body),
                "headers": headers,
            }),
        ),
        Err(e) => bad_request(format!("reading the body: {e}")),
    }
}

async fn delete_index(Path(name): Path<String>) -> Response {
    json_response(StatusCode::OK, &json!({ "deleted": name }))
}

async fn admin(Path(rest): Path<String>) -> Response {
    json_response(StatusCode::OK, &json!({ "admin": rest }))
}

async fn status(Path(code): Path<String>) -> Response {
    match code
        .parse::<u16>()
        .ok()
        .and_then(|c| StatusCode::from_u16(c).ok())
    {
        Some(status) => json_response(status, &json!({ "status": status.as_u16() })),
        None => bad_request(format!("not a status code: {code:?}")),
    }
}

async fn not_found(uri: Uri) -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        &json!({ "error": "not found", "path": uri.path() }),
    )
}

/// The e-mail address of object `id` of `GET /v1/stream`: `user{id}@example.com`.
pub fn stream_email(id: u64) -> String {
    format!("user{id}@example.com")
}

/// Appends object `id` of the stream:
/// `{"id":ID,"email":"userID@example.com","filler":"…"}`.
fn write_object(out: &mut String, id: u64) {
    let _ = write!(
        out,
        r#"{{"id":{id},"email":"user{id}@example.com","filler":"{STREAM_FILLER}"}}"#
    );
}

/// The exact body of `GET /v1/stream?n=N`: a JSON array (no whitespace) of the objects
/// `{"id":ID,"email":"userID@example.com","filler":STREAM_FILLER}` for ids 1 to `n`.
/// Builds it whole: for large `n` prefer [`stream_digest`].
pub fn stream_bytes(n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in StreamChunks::new(n) {
        out.extend_from_slice(&chunk);
    }
    out
}

/// Length and SHA-256 of [`stream_bytes`]`(n)`, computed chunk by chunk.
pub fn stream_digest(n: u64) -> BodyDigest {
    let mut hasher = Sha256::new();
    let mut len = 0;
    for chunk in StreamChunks::new(n) {
        len += chunk.len() as u64;
        hasher.update(&chunk);
    }
    BodyDigest {
        len,
        sha256: hex(&hasher.finalize()),
    }
}

/// The length of [`stream_bytes`]`(n)`, by arithmetic.
pub fn stream_len(n: u64) -> u64 {
    let mut probe = String::new();
    write_object(&mut probe, 0);
    // Without the two one-digit ids.
    let fixed = probe.len() as u64 - 2;
    // Total digits of the ids 1..=n.
    let mut digits = 0;
    let (mut width, mut low) = (1, 1u64);
    while low <= n {
        let next = low.checked_mul(10);
        let high = next.map_or(u64::MAX, |x| x - 1).min(n);
        digits += (high - low + 1) * width;
        match next {
            Some(next) => (width, low) = (width + 1, next),
            None => break,
        }
    }
    let commas = n.saturating_sub(1);
    2 + commas + n * fixed + 2 * digits
}

/// How many bytes of [`stream_bytes`]`(n)` `GET /v1/fail-mid?n=N` sends before it aborts:
/// half, rounded down (at least 1: the `[`).
pub fn fail_mid_prefix_len(n: u64) -> u64 {
    stream_len(n) / 2
}

/// The chunks of [`stream_bytes`], generated one at a time.
struct StreamChunks {
    next: u64,
    n: u64,
    started: bool,
    done: bool,
}

impl StreamChunks {
    fn new(n: u64) -> Self {
        StreamChunks {
            next: 1,
            n,
            started: false,
            done: false,
        }
    }
}

impl Iterator for StreamChunks {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        let mut buf = String::with_capacity(STREAM_CHUNK + 256);
        if !self.started {
            buf.push('[');
            self.started = true;
        }
        while self.next <= self.n && buf.len() < STREAM_CHUNK {
            if self.next > 1 {
                buf.push(',');
            }
            write_object(&mut buf, self.next);
            self.next += 1;
        }
        if self.next > self.n {
            buf.push(']');
            self.done = true;
        }
        Some(Bytes::from(buf))
    }
}

/// The body of `/v1/stream` and `/v1/fail-mid`: no size hint, so hyper sends it chunked.
struct GeneratedBody {
    chunks: StreamChunks,
    /// Bytes left to send before aborting (`None`: never abort).
    cut: Option<u64>,
    /// The pause before the abort, which lets hyper flush what was sent.
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
    aborted: bool,
}

impl HttpBody for GeneratedBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        match this.cut {
            None => Poll::Ready(this.chunks.next().map(|c| Ok(Frame::data(c)))),
            Some(0) => {
                if this.aborted {
                    return Poll::Ready(None);
                }
                let pause = this
                    .pause
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(FAIL_MID_PAUSE)));
                ready!(pause.as_mut().poll(cx));
                this.aborted = true;
                Poll::Ready(Some(Err(std::io::Error::other(
                    "the test upstream aborts /v1/fail-mid on purpose",
                ))))
            }
            Some(left) => match this.chunks.next() {
                Some(mut chunk) => {
                    if chunk.len() as u64 > left {
                        chunk.truncate(usize::try_from(left).unwrap_or(usize::MAX));
                    }
                    this.cut = Some(left - chunk.len() as u64);
                    Poll::Ready(Some(Ok(Frame::data(chunk))))
                }
                None => {
                    this.cut = Some(0);
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
            },
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn stream_len_digest_and_bytes_agree() {
        for n in [0, 1, 2, 9, 10, 11, 99, 100, 101, 999, 1000, 1001, 12_345] {
            let bytes = stream_bytes(n);
            assert_eq!(stream_len(n), bytes.len() as u64, "n = {n}");
            assert_eq!(stream_digest(n), BodyDigest::of(&bytes), "n = {n}");
            let value: Value = serde_json::from_slice(&bytes).unwrap();
            let items = value.as_array().unwrap();
            assert_eq!(items.len() as u64, n);
            if let Some(last) = items.last() {
                assert_eq!(last["id"], json!(n));
                assert_eq!(last["email"], json!(stream_email(n)));
                assert_eq!(last["filler"], json!(STREAM_FILLER));
            }
        }
        assert_eq!(stream_bytes(0), b"[]");
        assert_eq!(fail_mid_prefix_len(0), 1);
        // Chunks are whole objects of at least STREAM_CHUNK bytes, save the last.
        let chunks: Vec<Bytes> = StreamChunks::new(5_000).collect();
        assert!(chunks.len() > 3);
        let (last, rest) = chunks.split_last().unwrap();
        assert!(
            rest.iter()
                .all(|c| c.len() >= STREAM_CHUNK && c.ends_with(b"}"))
        );
        assert!(last.ends_with(b"}]"));
    }

    #[test]
    fn planted_values_are_in_the_documents() {
        let users: Value = serde_json::from_str(USERS_JSON).unwrap();
        let first = &users["users"][0];
        assert_eq!(first["email"], PLANTED_EMAIL);
        assert_eq!(first["card"], PLANTED_CARD);
        assert_eq!(first["ssn"], PLANTED_SSN);
        assert_eq!(first["contact"]["phone"], PLANTED_PHONE);
        assert_eq!(first["contact"]["notes"], PLANTED_NOTES);
        assert_eq!(first["order_ref"], NEAR_MISS_CARD);
        assert_eq!(first["reply_to"], NEAR_MISS_EMAIL);
        assert_eq!(first["tags"][1], "café");
        assert_eq!(first["tags"][2], "🚀");
        let second = &users["users"][1];
        assert_eq!(second["email"], PLANTED_EMAIL_2);
        assert_eq!(second["card"], PLANTED_CARD_2);
        assert_eq!(second["ssn"], PLANTED_SSN_2);
        assert_eq!(second["contact"]["phone"], PLANTED_PHONE_2);
        assert_eq!(second["order_ref"], NEAR_MISS_SSN);
        for value in PLANTED.iter().chain(NEAR_MISSES) {
            assert!(USERS_JSON.contains(value), "{value}");
        }
        assert!(PLANTED_NOTES.contains(PLANTED_EMAIL));
        assert!(TEXT_BODY.contains(PLANTED_EMAIL) && TEXT_BODY.contains(PLANTED_PHONE));
        let error: Value = serde_json::from_str(ERROR_JSON).unwrap();
        assert!(error["message"].as_str().unwrap().contains(PLANTED_EMAIL));
        let binary = binary_body();
        assert!(std::str::from_utf8(&binary).is_err());
        assert!(
            binary
                .windows(PLANTED_EMAIL.len())
                .any(|w| w == PLANTED_EMAIL.as_bytes())
        );
    }

    #[test]
    fn accept_encoding() {
        let accepts = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::ACCEPT_ENCODING, value.parse().unwrap());
            accepts_gzip(&headers)
        };
        assert!(!accepts_gzip(&HeaderMap::new()));
        assert!(accepts("gzip"));
        assert!(accepts("br, GZIP;q=0.5"));
        assert!(accepts("x-gzip"));
        assert!(accepts("*"));
        assert!(!accepts("identity"));
        assert!(!accepts("gzip;q=0"));
        assert!(!accepts("gzip;q=0, *"));
        assert!(!accepts("deflate, br"));
        assert!(!accepts("*;q=0"));
    }

    #[test]
    fn hex_digest() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
