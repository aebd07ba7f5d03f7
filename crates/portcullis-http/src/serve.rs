//! [`ServeHttp`]: the client side of the gateway for HTTP APIs (HTTP/1.1 and HTTP/2, TLS).
//! Each request's `Authorization: Bearer` token is authenticated through the same
//! `Authenticate` service as database logins; the first request of a connection opens its
//! session (one identity per connection), each request is one command unit through the
//! session's stack, and the response streams back as the upstream sends it.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request as HttpRequest, Response as HttpResponse, StatusCode, header};
use http_body::{Body, Frame};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use portcullis_core::listener::{
    IdentitySlot, ListenerMetrics, OnBoard, SessionBoard, SessionCaps, SessionSlot, catch_panic,
    is_loopback,
};
use portcullis_core::{
    ConnectionEvent, ConnectionEventKind, ConnectionObserver, Credentials, Error, Identity,
    NewService, Protocol, ReplyBody, Request, Response, Session, Target, UploadSender,
    upload_channel,
};
use tokio::sync::Mutex as AsyncMutex;
use tower_service::Service;
use tracing::{debug, info};

use crate::command::HttpCommand;
use crate::event::HttpEvent;
use crate::problem::{for_error, problem};
use crate::upstream::{HttpUpstream, HttpUpstreamConfig};
use crate::watch::Watched;
use portcullis_core::stall::StallReport;

/// Settings of one HTTP listener (`[[http]]`).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServeHttpConfig {
    /// The target's name, recorded on every session.
    pub name: String,
    /// TLS for clients (ALPN `h2` and `http/1.1`); `None` = plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Accept tokens without TLS from loopback peers.
    pub allow_plaintext_tokens_on_loopback: bool,
    /// Most sessions (connections with an identity) at once on this listener.
    pub max_sessions: Option<usize>,
    /// Most sessions at once per identity.
    pub max_sessions_per_identity: Option<usize>,
    /// The API.
    pub upstream: HttpUpstreamConfig,
    /// Pass protocol upgrades (WebSocket) through, spliced once the API switches; refused
    /// (`403`, recorded) by default.
    pub allow_upgrades: bool,
    /// What to do with request headers through which frameworks act on another method or
    /// path than the request's own ([`OVERRIDE_HEADERS`]): strip them (the default), refuse
    /// the request, or pass them.
    pub override_headers: OverrideHeaders,
}

/// Headers some frameworks honour to act on another method or path than the request line's
/// (Express method-override, Symfony, IIS URL rewriting): the gateway judges the request
/// line, so by default these never reach the API.
pub const OVERRIDE_HEADERS: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-url",
    "x-rewrite-url",
];

/// What a listener does with [`OVERRIDE_HEADERS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OverrideHeaders {
    /// Remove them before the request goes on (the API acts on the judged request line).
    #[default]
    Strip,
    /// Refuse the request (400).
    Refuse,
    /// Pass them unchanged (only for an API known to ignore them).
    Pass,
}

impl ServeHttpConfig {
    /// Defaults: no TLS, no plaintext tokens, no caps.
    pub fn new(name: impl Into<String>, upstream: HttpUpstreamConfig) -> Self {
        ServeHttpConfig {
            name: name.into(),
            tls: None,
            allow_plaintext_tokens_on_loopback: false,
            max_sessions: None,
            max_sessions_per_identity: None,
            upstream,
            allow_upgrades: false,
            override_headers: OverrideHeaders::default(),
        }
    }
}

/// Counters of an HTTP listener.
pub type HttpMetrics = ListenerMetrics;

#[derive(Debug, Default)]
struct Shared {
    caps: Arc<SessionCaps>,
    metrics: Arc<HttpMetrics>,
}

/// The HTTP protocol server: one per listener, shared by its connections.
pub struct ServeHttp<A, N> {
    config: Arc<ServeHttpConfig>,
    upstream: Arc<HttpUpstreamConfig>,
    tls: Option<Arc<rustls::ServerConfig>>,
    auth: A,
    stack: Arc<N>,
    shared: Arc<Shared>,
    observer: Option<ConnectionObserver>,
}

impl<A: Clone, N> Clone for ServeHttp<A, N> {
    fn clone(&self) -> Self {
        ServeHttp {
            config: self.config.clone(),
            upstream: self.upstream.clone(),
            tls: self.tls.clone(),
            auth: self.auth.clone(),
            stack: self.stack.clone(),
            shared: self.shared.clone(),
            observer: self.observer.clone(),
        }
    }
}

impl<A, N> std::fmt::Debug for ServeHttp<A, N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeHttp")
            .field("name", &self.config.name)
            .finish_non_exhaustive()
    }
}

/// A session: the identity a connection authenticated, and its stack.
struct Live<S> {
    session: Arc<Session>,
    service: Arc<AsyncMutex<S>>,
    _slots: (IdentitySlot, SessionSlot),
    /// On the listener's board of live sessions while the connection lasts.
    _board: OnBoard,
}

impl<S> Drop for Live<S> {
    fn drop(&mut self) {
        self.session.set_end_reason("the connection closed");
    }
}

/// The body the client gets: a problem document, or the upstream's body as it streams.
pub enum OutBody<B> {
    /// A complete body.
    Full(Option<Bytes>),
    /// The reply's pieces.
    Stream {
        /// The reply.
        body: Pin<Box<B>>,
        /// Done.
        done: bool,
        /// Counters.
        metrics: Arc<HttpMetrics>,
    },
}

impl<B> Body for OutBody<B>
where
    B: ReplyBody<Event = HttpEvent>,
{
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        match self.get_mut() {
            OutBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            OutBody::Stream {
                body,
                done,
                metrics,
            } => loop {
                if *done {
                    return Poll::Ready(None);
                }
                match body.as_mut().poll_event(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(None) => {
                        *done = true;
                        return Poll::Ready(None);
                    }
                    Poll::Ready(Some(Err(e))) => {
                        // The response is cut off: the client must not take it as complete.
                        *done = true;
                        metrics.command_errors.fetch_add(1, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(e)));
                    }
                    Poll::Ready(Some(Ok(HttpEvent::Data { bytes, .. }))) => {
                        // After the last piece the reply is polled once more, to its end, so
                        // the layers see it finish (the audit records `ok`, not `abandoned`).
                        if bytes.is_empty() {
                            continue;
                        }
                        metrics
                            .bytes_to_clients
                            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                        return Poll::Ready(Some(Ok(Frame::data(bytes))));
                    }
                    Poll::Ready(Some(Ok(HttpEvent::Head { .. }))) => continue,
                }
            },
        }
    }
}

type Reply<B> = HttpResponse<OutBody<B>>;

fn full<B>(response: HttpResponse<Bytes>) -> Reply<B> {
    response.map(|b| OutBody::Full(Some(b)))
}

impl<A, N, S, B> ServeHttp<A, N>
where
    A: Service<Credentials, Response = Identity, Error = Error> + Clone + Send + Sync + 'static,
    A::Future: Send,
    N: NewService<Target<HttpUpstream>, Service = S> + Send + Sync + 'static,
    S: Service<Request<HttpCommand>, Response = Response<B>, Error = Error> + Send + 'static,
    S::Future: Send + 'static,
    B: ReplyBody<Event = HttpEvent> + Send + 'static,
{
    /// A server for one listener.
    pub fn new(config: ServeHttpConfig, auth: A, stack: N) -> Self {
        let tls = config.tls.as_ref().map(|t| {
            let mut t = (**t).clone();
            t.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            Arc::new(t)
        });
        ServeHttp {
            upstream: Arc::new(config.upstream.clone()),
            config: Arc::new(config),
            tls,
            auth,
            stack: Arc::new(stack),
            shared: Arc::default(),
            observer: None,
        }
    }

    /// Report refused requests' identities (bad tokens) to `observer`, e.g. the audit trail.
    pub fn with_connection_observer(mut self, observer: ConnectionObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    /// A server with another configuration, authenticator and stack sharing this one's
    /// session caps and metrics (a configuration reload).
    pub fn reconfigure<A2, N2>(
        &self,
        config: ServeHttpConfig,
        auth: A2,
        stack: N2,
    ) -> ServeHttp<A2, N2>
    where
        A2: Service<Credentials, Response = Identity, Error = Error>
            + Clone
            + Send
            + Sync
            + 'static,
        A2::Future: Send,
        N2: NewService<Target<HttpUpstream>, Service = S> + Send + Sync + 'static,
    {
        let mut next = ServeHttp::new(config, auth, stack);
        next.shared = self.shared.clone();
        next.observer = self.observer.clone();
        next
    }

    /// The listener's counters.
    pub fn metrics(&self) -> Arc<HttpMetrics> {
        self.shared.metrics.clone()
    }

    /// The listener's configuration.
    pub fn config(&self) -> &ServeHttpConfig {
        &self.config
    }

    /// Serve one client connection to its end.
    pub fn serve_connection<I: portcullis_core::io::Io>(
        &self,
        io: I,
        peer: SocketAddr,
    ) -> impl Future<Output = ()> + Send + 'static {
        let this = self.clone();
        async move {
            // Reads and writes count as progress for the stall detector.
            let io = portcullis_core::stall::Metered::new(io);
            let watched = Watched {
                stalls: Some(StallReport::new(
                    this.shared.metrics.clone(),
                    this.observer.clone(),
                    Protocol::Http,
                    &this.config.name,
                    peer,
                )),
            };
            let io: portcullis_core::io::BoxIo = match &this.tls {
                Some(tls) => {
                    let accept = tokio_rustls::TlsAcceptor::from(tls.clone()).accept(io);
                    match tokio::time::timeout(Duration::from_secs(10), accept).await {
                        Ok(Ok(stream)) => Box::new(stream),
                        Ok(Err(e)) => {
                            this.observe(ConnectionEventKind::TlsFailure, peer, e.to_string());
                            return;
                        }
                        Err(_) => {
                            this.observe(
                                ConnectionEventKind::HandshakeTimeout,
                                peer,
                                "the TLS handshake did not finish in time".into(),
                            );
                            return;
                        }
                    }
                }
                None => Box::new(io),
            };
            let tls = this.tls.is_some();
            let live: Arc<Mutex<Option<Arc<Live<S>>>>> = Arc::default();
            let handler = this.clone();
            let conn_live = live.clone();
            let conn_watched = watched.clone();
            let service = hyper::service::service_fn(move |req: HttpRequest<Incoming>| {
                let handler = handler.clone();
                let live = conn_live.clone();
                let watched = conn_watched.clone();
                async move {
                    let handled = catch_panic(handler.handle(req, peer, tls, live, watched)).await;
                    Ok::<_, Infallible>(handled.unwrap_or_else(|panic| handler.panicked(&panic)))
                }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(watched.clone());
            let serve = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
            if let Err(e) = watched.watch("an HTTP connection", serve).await {
                debug!(target: "portcullis::http", %peer, error = %e, "connection ended");
            }
            // The session ends with its connection.
            drop(live.lock().unwrap_or_else(|p| p.into_inner()).take());
        }
    }

    fn observe(&self, kind: ConnectionEventKind, peer: SocketAddr, reason: String) {
        if let Some(observer) = &self.observer {
            observer(ConnectionEvent::new(
                kind,
                Protocol::Http,
                &self.config.name,
                peer,
                reason,
            ));
        }
    }

    async fn handle(
        &self,
        req: HttpRequest<Incoming>,
        peer: SocketAddr,
        tls: bool,
        live: Arc<Mutex<Option<Arc<Live<S>>>>>,
        watched: Watched,
    ) -> Reply<B> {
        let cfg = &self.config;
        if !(tls || (is_loopback(&peer) && cfg.allow_plaintext_tokens_on_loopback)) {
            return full(problem(
                StatusCode::FORBIDDEN,
                "this gateway accepts tokens only over TLS (use https)",
                None,
            ));
        }
        let token = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(portcullis_core::bearer_token)
            .map(str::to_owned);
        let Some(token) = token else {
            self.shared
                .metrics
                .logins_refused
                .fetch_add(1, Ordering::Relaxed);
            return full(problem(
                StatusCode::UNAUTHORIZED,
                "missing bearer token: send Authorization: Bearer <token>",
                None,
            ));
        };
        let mut auth = self.auth.clone();
        let credentials = Credentials::new("", token).with_peer(peer);
        let identity = match std::future::poll_fn(|cx| auth.poll_ready(cx)).await {
            Ok(()) => auth.call(credentials).await,
            Err(e) => Err(e),
        };
        let identity = match identity {
            Ok(i) => i,
            Err(e) => {
                self.shared
                    .metrics
                    .logins_refused
                    .fetch_add(1, Ordering::Relaxed);
                let r = portcullis_core::rescue(&e);
                self.observe(
                    ConnectionEventKind::RefusedLogin,
                    peer,
                    r.message.to_string(),
                );
                return full(problem(StatusCode::UNAUTHORIZED, &r.message, None));
            }
        };
        let current = live.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let current = match current {
            Some(l) if l.session.identity.same_as(&identity) => l,
            Some(_) => {
                return full(problem(
                    StatusCode::UNAUTHORIZED,
                    "a connection carries one identity: open another connection for another token",
                    None,
                ));
            }
            None => match self.open_session(identity, peer, tls, &watched) {
                Ok(l) => {
                    *live.lock().unwrap_or_else(|p| p.into_inner()) = Some(l.clone());
                    l
                }
                Err(response) => return full(*response),
            },
        };
        self.shared
            .metrics
            .commands_total
            .fetch_add(1, Ordering::Relaxed);
        let mut req = req;
        let client_upgrade = req
            .headers()
            .contains_key(header::UPGRADE)
            .then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        if let Some(name) = OVERRIDE_HEADERS
            .iter()
            .find(|h| parts.headers.contains_key(**h))
        {
            match self.config.override_headers {
                OverrideHeaders::Strip => {
                    for h in OVERRIDE_HEADERS {
                        parts.headers.remove(*h);
                    }
                }
                OverrideHeaders::Refuse => {
                    return full(problem(
                        StatusCode::BAD_REQUEST,
                        &format!(
                            "the header {name} would make the API act on another method or path than the one the gateway judges; this listener refuses it"
                        ),
                        None,
                    ));
                }
                OverrideHeaders::Pass => {}
            }
        }
        let command = HttpCommand::new(parts.method, &parts.uri, parts.version, parts.headers);
        let mut request = Request::new(current.session.clone(), command);
        if !body.is_end_stream() {
            let (tx, upload) = upload_channel(8);
            request = request.with_upload(upload);
            watched.spawn(
                "a request body's upload",
                forward_body(body, tx, self.shared.metrics.clone()),
            );
        }
        let call = {
            let mut service = current.service.lock().await;
            if let Err(e) = std::future::poll_fn(|cx| service.poll_ready(cx)).await {
                return self.refused(&e);
            }
            service.call(request)
        };
        let mut response = match call.await {
            Ok(r) => r,
            Err(e) => return self.refused(&e),
        };
        let upstream_upgrade = response
            .extensions
            .remove::<crate::upstream::UpstreamUpgrade>()
            .and_then(|u| u.0.lock().unwrap_or_else(|p| p.into_inner()).take());
        let mut body = Box::pin(response.body);
        let head = std::future::poll_fn(|cx| body.as_mut().poll_event(cx)).await;
        let parts = match head {
            Some(Ok(HttpEvent::Head { parts, .. })) => parts,
            Some(Err(e)) => return self.refused(&e),
            _ => {
                return full(problem(
                    StatusCode::BAD_GATEWAY,
                    "the upstream's response had no head",
                    None,
                ));
            }
        };
        let mut out = HttpResponse::new(OutBody::Stream {
            body,
            done: false,
            metrics: self.shared.metrics.clone(),
        });
        *out.status_mut() = parts.status;
        *out.headers_mut() = parts.headers;
        if let (Some(client), Some(upstream)) = (client_upgrade, upstream_upgrade) {
            // The API switched protocols: once the client has too, join the two.
            watched.spawn("a spliced upgrade", async move {
                let (Ok(client), Ok(upstream)) = (client.await, upstream.await) else {
                    return;
                };
                let mut client = TokioIo::new(client);
                let mut upstream = TokioIo::new(upstream);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
            return out;
        }
        // A masking layer may change the body's length: stream it without one.
        out.headers_mut().remove(header::CONTENT_LENGTH);
        out
    }

    /// The session boundary: a panic while handling a request ends that request with a
    /// 500 and its connection; the process and the other connections go on.
    fn panicked(&self, panic: &str) -> Reply<B> {
        self.shared
            .metrics
            .session_panics
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(target: "portcullis::http", panic = %panic, "a panic ended a request");
        let mut response = problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal gateway error: this request was ended (the gateway goes on serving others)",
            None,
        );
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        full(response)
    }

    fn refused(&self, error: &Error) -> Reply<B> {
        self.shared
            .metrics
            .command_errors
            .fetch_add(1, Ordering::Relaxed);
        let (mut response, close) = for_error(error);
        if close {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        full(response)
    }

    fn open_session(
        &self,
        identity: Identity,
        peer: SocketAddr,
        tls: bool,
        watched: &Watched,
    ) -> Result<Arc<Live<S>>, Box<HttpResponse<Bytes>>> {
        let cfg = &self.config;
        let Some(session_slot) = self.shared.caps.reserve(cfg.max_sessions) else {
            return Err(Box::new(problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many sessions (the gateway's max_sessions)",
                None,
            )));
        };
        let Some(identity_slot) = self
            .shared
            .caps
            .acquire(&identity.subject, cfg.max_sessions_per_identity)
        else {
            return Err(Box::new(problem(
                StatusCode::TOO_MANY_REQUESTS,
                "too many sessions for this identity (the gateway's max_sessions_per_identity)",
                None,
            )));
        };
        let id = self.shared.caps.new_session_id();
        let mut session = Session::new(id, Protocol::Http, cfg.name.clone(), peer, identity);
        session.upstream = self.upstream.address();
        session.tls = tls;
        let session = Arc::new(session);
        let upstream = HttpUpstream::new(self.upstream.clone())
            .allow_upgrades(cfg.allow_upgrades)
            .watched(watched.clone());
        let service = self
            .stack
            .new_service(Target::new(session.clone(), upstream));
        self.shared
            .metrics
            .sessions_total
            .fetch_add(1, Ordering::Relaxed);
        info!(target: "portcullis::http", session = %session.id, identity = %session.identity.subject, %peer, "session started");
        Ok(Arc::new(Live {
            _board: SessionBoard::enter(
                &self.shared.metrics,
                session.clone(),
                "an HTTP connection with an identity (requests stream through it)",
            ),
            session,
            service: Arc::new(AsyncMutex::new(service)),
            _slots: (identity_slot, session_slot),
        }))
    }
}

/// Stream a request body into the command's upload.
async fn forward_body(mut body: Incoming, mut tx: UploadSender, metrics: Arc<HttpMetrics>) {
    loop {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        let data = match frame {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue,
            },
            // The client's body broke off or ended: the upload ends (the upstream sees a
            // shorter body if it was cut).
            _ => return,
        };
        metrics
            .bytes_from_clients
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        if std::future::poll_fn(|cx| tx.poll_reserve(cx))
            .await
            .is_err()
            || tx.send_item(data).is_err()
        {
            return;
        }
    }
}
