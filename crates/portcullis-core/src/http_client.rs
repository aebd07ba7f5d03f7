//! A one-shot HTTP/1.1 client on hyper, for webhooks, the `portcullis approvals` CLI and
//! OpenID Connect (discovery, keys, token requests): `http://` and `https://` (rustls with
//! the web PKI roots, or a CA file of one's own). Feature `http-client`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

/// A request failed before an HTTP status came back.
#[derive(Debug, thiserror::Error)]
#[error("{url}: {message}")]
pub struct ClientError {
    /// The URL.
    pub url: String,
    /// What went wrong.
    pub message: String,
}

/// Where to trust server certificates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Trust {
    /// The web PKI roots (webpki-roots).
    #[default]
    WebPki,
    /// These PEM certificates only (a private CA).
    Pem(Vec<u8>),
}

fn tls_config(trust: &Trust) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    match trust {
        Trust::WebPki => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Trust::Pem(pem) => {
            use rustls_pki_types::pem::PemObject as _;
            for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| format!("CA file: {e}"))?;
                roots.add(cert).map_err(|e| format!("CA file: {e}"))?;
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A request body and its media type.
#[derive(Debug, Clone)]
pub struct Body {
    /// `Content-Type`.
    pub content_type: &'static str,
    /// The bytes.
    pub bytes: Vec<u8>,
}

impl Body {
    /// A JSON body.
    pub fn json(bytes: Vec<u8>) -> Self {
        Body {
            content_type: "application/json",
            bytes,
        }
    }

    /// An `application/x-www-form-urlencoded` body (already encoded).
    pub fn form(encoded: String) -> Self {
        Body {
            content_type: "application/x-www-form-urlencoded",
            bytes: encoded.into_bytes(),
        }
    }
}

/// Send one request and read the whole (small, at most 8 MiB) answer, within `timeout`.
pub async fn send(
    method: Method,
    url: &str,
    headers: &[(&str, String)],
    body: Option<Body>,
    trust: &Trust,
    timeout: Duration,
) -> Result<(StatusCode, Bytes), ClientError> {
    let fail = |message: String| ClientError {
        url: url.to_owned(),
        message,
    };
    match tokio::time::timeout(timeout, send_inner(method, url, headers, body, trust)).await {
        Ok(r) => r.map_err(fail),
        Err(_) => Err(fail(format!("no answer within {}s", timeout.as_secs()))),
    }
}

/// Most bytes read from an answer.
const MAX_ANSWER: usize = 8 * 1024 * 1024;

async fn send_inner(
    method: Method,
    url: &str,
    headers: &[(&str, String)],
    body: Option<Body>,
    trust: &Trust,
) -> Result<(StatusCode, Bytes), String> {
    let uri: Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err("the URL must start with http:// or https://".into()),
    };
    let host = uri.host().ok_or("the URL has no host")?.to_owned();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let bare_host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let tcp = TcpStream::connect((bare_host.as_str(), port))
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let path = uri
        .path_and_query()
        .map_or("/".to_owned(), |p| p.as_str().to_owned());
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header(
            header::HOST,
            uri.authority().map_or(host.clone(), |a| a.to_string()),
        )
        .header(
            header::USER_AGENT,
            concat!("portcullis/", env!("CARGO_PKG_VERSION")),
        );
    for (name, value) in headers {
        builder = builder.header(*name, value);
    }
    let bytes = match body {
        Some(body) => {
            builder = builder.header(header::CONTENT_TYPE, body.content_type);
            body.bytes
        }
        None => Vec::new(),
    };
    let request = builder
        .body(Full::new(Bytes::from(bytes)))
        .map_err(|e| e.to_string())?;
    if tls {
        let config = tls_config(trust)?;
        let name = ServerName::try_from(bare_host).map_err(|e| e.to_string())?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        exchange(TokioIo::new(stream), request).await
    } else {
        exchange(TokioIo::new(tcp), request).await
    }
}

async fn exchange<I>(io: I, request: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(conn);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = http_body_util::Limited::new(response.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    driver.abort();
    Ok((status, body))
}
