//! The upstream API: where it is, the credential the gateway adds, and [`HttpUpstream`], the
//! innermost service of a session's stack — one HTTP/1.1 connection per session, opened
//! when needed, requests and responses streamed both ways.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request as HttpRequest, Uri, header};
use http_body::{Body, Frame};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use portcullis_core::tls::{UpstreamTls, UpstreamTlsMode, server_name};
use portcullis_core::{Error, Refusal, ReplyBody, Request, Response, Upload};
use tokio::net::TcpStream;

use crate::command::{HttpCommand, strip_hop_by_hop};
use crate::event::HttpEvent;

/// Where and how the gateway reaches the API (`[http.upstream]`).
#[derive(Clone)]
#[non_exhaustive]
pub struct HttpUpstreamConfig {
    /// `http://host:port` or `https://host:port` (a path prefix is prepended to every
    /// request's path).
    pub url: Uri,
    /// TLS for `https`: `require` (no verification) or `verify-full` (with `ca`, or the
    /// Mozilla roots when no `ca` is given).
    pub tls: UpstreamTls,
    /// Headers the gateway adds to every request (its API key, `Authorization: Basic …`);
    /// clients never see them, and theirs are replaced.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Deadline to connect.
    pub connect_timeout: Duration,
    /// Speak HTTP/2 to the API (ALPN `h2` over TLS, prior knowledge on plain TCP): one
    /// connection per session carries its requests concurrently.
    pub http2: bool,
}

impl std::fmt::Debug for HttpUpstreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpUpstreamConfig")
            .field("url", &self.url)
            .field("tls", &self.tls.mode)
            .field(
                "headers",
                &self.headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl HttpUpstreamConfig {
    /// An upstream at `url`, no injected headers, 10 s to connect.
    pub fn new(url: Uri) -> Self {
        HttpUpstreamConfig {
            url,
            tls: UpstreamTls::disabled(),
            headers: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            http2: false,
        }
    }

    /// `host:port`.
    pub fn address(&self) -> String {
        let https = self.url.scheme_str() == Some("https");
        format!(
            "{}:{}",
            self.url.host().unwrap_or_default(),
            self.url.port_u16().unwrap_or(if https { 443 } else { 80 })
        )
    }
}

/// The request body going upstream: nothing, or the client's body as it streams in.
pub(crate) struct UploadBody(Option<Upload>);

impl Body for UploadBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match &mut self.0 {
            None => Poll::Ready(None),
            Some(upload) => match ready!(upload.poll_chunk(cx)) {
                Some(chunk) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
                None => {
                    self.0 = None;
                    Poll::Ready(None)
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }
}

fn unavailable(message: impl Into<String>) -> Error {
    Box::new(Refusal::UpstreamUnavailable {
        message: message.into(),
    })
}

/// The API's side of a switched protocol (a `101` answer): the server joins it to the
/// client's side. Put in the response's extensions.
#[derive(Clone)]
pub struct UpstreamUpgrade(pub(crate) Arc<std::sync::Mutex<Option<hyper::upgrade::OnUpgrade>>>);

impl std::fmt::Debug for UpstreamUpgrade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamUpgrade").finish_non_exhaustive()
    }
}

/// The innermost service of a session's stack. Clones share the session's connection.
#[derive(Clone)]
pub struct HttpUpstream {
    config: Arc<HttpUpstreamConfig>,
    conn: Arc<tokio::sync::Mutex<Option<Sender>>>,
    allow_upgrades: bool,
    /// Runs the connection's tasks (under the stall detector, when the server gave one).
    watched: crate::watch::Watched,
}

/// A connection to the API.
enum Sender {
    H1(SendRequest<UploadBody>),
    H2(hyper::client::conn::http2::SendRequest<UploadBody>),
}

impl Sender {
    fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }
}

impl std::fmt::Debug for HttpUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpUpstream")
            .field("url", &self.config.url)
            .finish_non_exhaustive()
    }
}

impl HttpUpstream {
    /// A session's upstream.
    pub fn new(config: Arc<HttpUpstreamConfig>) -> Self {
        HttpUpstream {
            config,
            conn: Arc::default(),
            allow_upgrades: false,
            watched: crate::watch::Watched::default(),
        }
    }

    /// Run the upstream connection's tasks under the session's stall detector.
    pub(crate) fn watched(mut self, watched: crate::watch::Watched) -> Self {
        self.watched = watched;
        self
    }

    /// Pass protocol upgrades (WebSocket) through instead of refusing them.
    pub fn allow_upgrades(mut self, yes: bool) -> Self {
        self.allow_upgrades = yes;
        self
    }

    async fn connect(
        config: &HttpUpstreamConfig,
        watched: &crate::watch::Watched,
    ) -> Result<Sender, Error> {
        let address = config.address();
        let host = config.url.host().unwrap_or_default().to_owned();
        let https = config.url.scheme_str() == Some("https");
        let work = async {
            let tcp = TcpStream::connect(&address)
                .await
                .map_err(|e| unavailable(format!("could not connect to {address}: {e}")))?;
            let _ = tcp.set_nodelay(true);
            // Reads and writes count as progress for the stall detector.
            let tcp = portcullis_core::stall::Metered::new(tcp);
            let io: portcullis_core::io::BoxIo = match (https, config.tls.client_config()) {
                (false, _) => Box::new(tcp),
                (true, Some(client)) if config.tls.mode != UpstreamTlsMode::Disable => {
                    let name = server_name(&host).map_err(|e| unavailable(e.to_string()))?;
                    let client = if config.http2 {
                        let mut c = (**client).clone();
                        c.alpn_protocols = vec![b"h2".to_vec()];
                        Arc::new(c)
                    } else {
                        client.clone()
                    };
                    let stream = tokio_rustls::TlsConnector::from(client)
                        .connect(name, tcp)
                        .await
                        .map_err(|e| unavailable(format!("TLS to {address}: {e}")))?;
                    Box::new(stream)
                }
                (true, _) => {
                    return Err(unavailable(
                        "an https upstream needs TLS settings (tls = \"require\" or \"verify-full\")",
                    ));
                }
            };
            if config.http2 {
                let (sender, connection) =
                    hyper::client::conn::http2::handshake(watched.clone(), TokioIo::new(io))
                        .await
                        .map_err(|e| {
                            unavailable(format!("HTTP/2 handshake with {address}: {e}"))
                        })?;
                watched.spawn("the upstream HTTP/2 connection", async move {
                    let _ = connection.await;
                });
                return Ok::<_, Error>(Sender::H2(sender));
            }
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
                .await
                .map_err(|e| unavailable(format!("HTTP handshake with {address}: {e}")))?;
            watched.spawn("the upstream HTTP connection", async move {
                let _ = connection.with_upgrades().await;
            });
            Ok::<_, Error>(Sender::H1(sender))
        };
        tokio::time::timeout(config.connect_timeout, work)
            .await
            .map_err(|_| unavailable(format!("connecting to {address} timed out")))?
    }

    async fn send(self, req: Request<HttpCommand>) -> Result<Response<HttpReply>, Error> {
        let Request {
            command, upload, ..
        } = req;
        if command.upgrade.is_some() && !self.allow_upgrades {
            return Err(Box::new(Refusal::Blocked {
                rule: "upgrades".into(),
                message: "protocol upgrades (WebSocket) are not passed through this gateway".into(),
            }));
        }
        let base = self.config.url.path().trim_end_matches('/');
        let target = format!("{base}{}", command.path_and_query);
        let mut request = HttpRequest::builder()
            .method(command.method.clone())
            .uri(target)
            .body(UploadBody(upload))
            .map_err(|e| {
                Box::new(Refusal::Protocol {
                    message: format!("the request cannot be forwarded: {e}"),
                }) as Error
            })?;
        *request.headers_mut() = command.headers.clone();
        if let Ok(host) = HeaderValue::from_str(&self.config.address()) {
            request.headers_mut().insert(header::HOST, host);
        }
        for (name, value) in &self.config.headers {
            request.headers_mut().insert(name.clone(), value.clone());
        }
        if let Some(protocol) = &command.upgrade {
            request
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            request
                .headers_mut()
                .insert(header::UPGRADE, protocol.clone());
        }
        let response = {
            let mut guard = self.conn.lock().await;
            let reuse = guard.as_ref().is_some_and(|s| !s.is_closed());
            if !reuse {
                *guard = Some(HttpUpstream::connect(&self.config, &self.watched).await?);
            }
            match guard.as_mut() {
                Some(Sender::H1(sender)) => {
                    if sender.ready().await.is_err() {
                        *guard = Some(HttpUpstream::connect(&self.config, &self.watched).await?);
                    }
                }
                Some(Sender::H2(sender)) => {
                    if sender.ready().await.is_err() {
                        *guard = Some(HttpUpstream::connect(&self.config, &self.watched).await?);
                    }
                }
                None => return Err(unavailable("no connection to the upstream")),
            }
            match guard.as_mut() {
                Some(Sender::H1(sender)) => {
                    sender
                        .ready()
                        .await
                        .map_err(|e| unavailable(format!("the upstream connection failed: {e}")))?;
                    Box::pin(sender.send_request(request))
                        as Pin<
                            Box<
                                dyn Future<Output = hyper::Result<http::Response<Incoming>>> + Send,
                            >,
                        >
                }
                Some(Sender::H2(sender)) => {
                    // HTTP/2 multiplexes: the request goes out on a clone, the lock is free.
                    let mut sender = sender.clone();
                    *request.version_mut() = http::Version::HTTP_2;
                    let full = format!(
                        "{}://{}{}",
                        self.config.url.scheme_str().unwrap_or("http"),
                        self.config.address(),
                        request.uri()
                    );
                    if let Ok(uri) = full.parse() {
                        *request.uri_mut() = uri;
                    }
                    request.headers_mut().remove(header::HOST);
                    Box::pin(async move { sender.send_request(request).await })
                }
                None => return Err(unavailable("no connection to the upstream")),
            }
        };
        let mut response = response
            .await
            .map_err(|e| unavailable(format!("the upstream failed: {e}")))?;
        let switched =
            response.status() == http::StatusCode::SWITCHING_PROTOCOLS && command.upgrade.is_some();
        let upgraded = switched.then(|| hyper::upgrade::on(&mut response));
        let (mut parts, body) = response.into_parts();
        let protocol = parts.headers.get(header::UPGRADE).cloned();
        strip_hop_by_hop(&mut parts.headers);
        if let (true, Some(protocol)) = (switched, protocol) {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, protocol);
        }
        let mut reply = Response::new(HttpReply {
            head: Some(parts),
            body: Some(body),
            status: None,
        });
        if let Some(upgraded) = upgraded {
            reply
                .extensions
                .insert(UpstreamUpgrade(Arc::new(std::sync::Mutex::new(Some(
                    upgraded,
                )))));
        }
        Ok(reply)
    }
}

impl tower_service::Service<Request<HttpCommand>> for HttpUpstream {
    type Response = Response<HttpReply>;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<HttpReply>, Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<HttpCommand>) -> Self::Future {
        Box::pin(self.clone().send(req))
    }
}

/// A response as events: its head, then its body piece by piece, the last piece marked.
pub struct HttpReply {
    head: Option<http::response::Parts>,
    body: Option<Incoming>,
    status: Option<String>,
}

impl std::fmt::Debug for HttpReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpReply").finish_non_exhaustive()
    }
}

impl ReplyBody for HttpReply {
    type Event = HttpEvent;

    fn poll_event(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<HttpEvent, Error>>> {
        if let Some(parts) = self.head.take() {
            self.status = Some(parts.status.as_u16().to_string());
            return Poll::Ready(Some(Ok(HttpEvent::head(parts))));
        }
        let Some(body) = self.body.as_mut() else {
            return Poll::Ready(None);
        };
        loop {
            match ready!(Pin::new(&mut *body).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        if data.is_empty() {
                            continue;
                        }
                        return Poll::Ready(Some(Ok(HttpEvent::Data {
                            bytes: data,
                            last: false,
                            status: None,
                        })));
                    }
                    // Trailers are not forwarded.
                }
                Some(Err(e)) => {
                    self.body = None;
                    return Poll::Ready(Some(Err(unavailable(format!(
                        "the upstream's response broke off: {e}"
                    )))));
                }
                None => {
                    self.body = None;
                    return Poll::Ready(Some(Ok(HttpEvent::Data {
                        bytes: Bytes::new(),
                        last: true,
                        status: self.status.take(),
                    })));
                }
            }
        }
    }
}
