//! The upstream side: connecting to PostgreSQL with the credentials the gateway holds.

use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::codec::{
    AuthRequest, BackendMessage, Frame, FrontendMessage, StartupPacket, decode_frame,
};
use portcullis_core::io::BoxIo;
use portcullis_core::tls::{UpstreamTlsMode, server_name};
pub use portcullis_core::upstream::{UpstreamConfig, UpstreamRole};

/// Why the upstream could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// Network or TLS failure.
    #[error("could not connect to the database at {address}: {source}")]
    Io {
        /// The address.
        address: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The server refused (its own ErrorResponse, forwarded to the client verbatim).
    #[error("the database refused the connection")]
    Refused(Frame),
    /// TLS was required but the server does not offer it.
    #[error(
        "the database at {0} does not offer TLS, and the gateway's upstream tls mode requires it"
    )]
    TlsUnavailable(String),
    /// The server asked for an authentication method the gateway cannot do.
    #[error("the database asked for an unsupported authentication method ({0})")]
    UnsupportedAuth(String),
    /// The server broke the protocol during login.
    #[error("protocol error while logging in to the database: {0}")]
    Protocol(String),
    /// Login did not finish in time.
    #[error("logging in to the database at {0} timed out")]
    Timeout(String),
}

/// An open, logged-in upstream connection.
pub struct Connected {
    pub(crate) io: BoxIo,
    /// Bytes read after the first ReadyForQuery (normally none).
    pub(crate) leftover: BytesMut,
    /// The backend's process id.
    pub pid: i32,
    /// The backend's secret key.
    pub key: i32,
    /// ParameterStatus frames, forwarded to the client as they are.
    pub parameters: Vec<Frame>,
    /// Whether the connection is encrypted.
    pub tls: bool,
}

impl std::fmt::Debug for Connected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connected")
            .field("pid", &self.pid)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

const MAX_LOGIN_MESSAGE: usize = 1 << 20;

/// Connect and log in as `user`/`password` to `database`, sending `params` (the client's
/// startup parameters that the gateway passes on: `application_name`, `client_encoding`...).
pub async fn connect(
    config: &UpstreamConfig,
    user: &str,
    password: &str,
    database: &str,
    params: &[(String, String)],
) -> Result<Connected, ConnectError> {
    let address = config.address();
    match tokio::time::timeout(
        config.connect_timeout,
        connect_inner(config, user, password, database, params),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(ConnectError::Timeout(address)),
    }
}

async fn connect_inner(
    config: &UpstreamConfig,
    user: &str,
    password: &str,
    database: &str,
    params: &[(String, String)],
) -> Result<Connected, ConnectError> {
    let address = config.address();
    let io_err = |source| ConnectError::Io {
        address: address.clone(),
        source,
    };
    let tcp = TcpStream::connect((config.host.as_str(), config.port))
        .await
        .map_err(io_err)?;
    tcp.set_nodelay(true).map_err(io_err)?;
    let (mut io, tls): (BoxIo, bool) = match (config.tls.client_config(), config.tls.mode) {
        (Some(client_config), mode) if mode != UpstreamTlsMode::Disable => {
            let mut tcp = tcp;
            let mut buf = BytesMut::new();
            StartupPacket::SslRequest.encode(&mut buf);
            tcp.write_all(&buf).await.map_err(io_err)?;
            let answer = tcp.read_u8().await.map_err(io_err)?;
            match answer {
                b'S' => {
                    let connector = tokio_rustls::TlsConnector::from(client_config.clone());
                    let name = server_name(&config.host).map_err(io_err)?;
                    let stream = connector.connect(name, tcp).await.map_err(io_err)?;
                    (Box::new(stream), true)
                }
                b'N' if mode == UpstreamTlsMode::Prefer => (Box::new(tcp), false),
                b'N' => return Err(ConnectError::TlsUnavailable(address)),
                other => {
                    return Err(ConnectError::Protocol(format!(
                        "unexpected answer {other:#x} to SSLRequest"
                    )));
                }
            }
        }
        _ => (Box::new(tcp), false),
    };

    let mut startup = vec![
        ("user".to_owned(), user.to_owned()),
        ("database".to_owned(), database.to_owned()),
    ];
    startup.extend(params.iter().cloned());
    let mut out = BytesMut::new();
    StartupPacket::Startup {
        major: 3,
        minor: 0,
        params: startup,
    }
    .encode(&mut out);
    io.write_all(&out).await.map_err(io_err)?;

    let mut rbuf = BytesMut::with_capacity(4096);
    let mut scram: Option<ScramSha256> = None;
    let mut parameters = Vec::new();
    let mut key_data = None;
    loop {
        let frame = loop {
            match decode_frame(&mut rbuf, MAX_LOGIN_MESSAGE) {
                Ok(Some(f)) => break f,
                Ok(None) => {}
                Err(e) => return Err(ConnectError::Protocol(e.to_string())),
            }
            if io.read_buf(&mut rbuf).await.map_err(io_err)? == 0 {
                return Err(ConnectError::Protocol(
                    "the database closed the connection during login".into(),
                ));
            }
        };
        if frame.tag() == b'E' {
            return Err(ConnectError::Refused(frame));
        }
        let msg =
            BackendMessage::decode(&frame).map_err(|e| ConnectError::Protocol(e.to_string()))?;
        out.clear();
        match msg {
            BackendMessage::Authentication(auth) => match auth {
                AuthRequest::Ok => {}
                AuthRequest::CleartextPassword => {
                    let mut p = password.as_bytes().to_vec();
                    p.push(0);
                    FrontendMessage::Password(p.into()).encode(&mut out);
                }
                AuthRequest::Md5Password { salt } => {
                    let hash = md5_hash(user.as_bytes(), password.as_bytes(), salt);
                    let mut p = hash.into_bytes();
                    p.push(0);
                    FrontendMessage::Password(p.into()).encode(&mut out);
                }
                AuthRequest::Sasl { mechanisms } => {
                    if !mechanisms
                        .iter()
                        .any(|m| &m[..] == SCRAM_SHA_256.as_bytes())
                    {
                        return Err(ConnectError::UnsupportedAuth(format!(
                            "SASL mechanisms {:?}",
                            mechanisms
                                .iter()
                                .map(|m| String::from_utf8_lossy(m).into_owned())
                                .collect::<Vec<_>>()
                        )));
                    }
                    let s = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
                    let first = s.message();
                    let mut body = Vec::with_capacity(first.len() + 32);
                    body.extend_from_slice(SCRAM_SHA_256.as_bytes());
                    body.push(0);
                    body.extend_from_slice(&(first.len() as i32).to_be_bytes());
                    body.extend_from_slice(first);
                    FrontendMessage::Password(body.into()).encode(&mut out);
                    scram = Some(s);
                }
                AuthRequest::SaslContinue(data) => {
                    let s = scram.as_mut().ok_or_else(|| {
                        ConnectError::Protocol("SASLContinue without SASL".into())
                    })?;
                    s.update(&data)
                        .map_err(|e| ConnectError::Protocol(format!("SCRAM: {e}")))?;
                    FrontendMessage::Password(s.message().to_vec().into()).encode(&mut out);
                }
                AuthRequest::SaslFinal(data) => {
                    let mut s = scram
                        .take()
                        .ok_or_else(|| ConnectError::Protocol("SASLFinal without SASL".into()))?;
                    s.finish(&data).map_err(|e| {
                        ConnectError::Protocol(format!("SCRAM server signature: {e}"))
                    })?;
                }
                AuthRequest::Other { code, .. } => {
                    return Err(ConnectError::UnsupportedAuth(format!("code {code}")));
                }
            },
            BackendMessage::ParameterStatus { .. } => parameters.push(frame),
            BackendMessage::BackendKeyData { pid, key } => key_data = Some((pid, key)),
            BackendMessage::NoticeResponse { .. } => {}
            BackendMessage::NegotiateProtocolVersion { .. } => {}
            BackendMessage::ReadyForQuery { .. } => {
                let (pid, key) = key_data.ok_or_else(|| {
                    ConnectError::Protocol("no BackendKeyData before ReadyForQuery".into())
                })?;
                return Ok(Connected {
                    io,
                    leftover: rbuf,
                    pid,
                    key,
                    parameters,
                    tls,
                });
            }
            other => {
                return Err(ConnectError::Protocol(format!(
                    "unexpected message during login: {other:?}"
                )));
            }
        }
        if !out.is_empty() {
            io.write_all(&out).await.map_err(io_err)?;
        }
    }
}

/// Send a CancelRequest for backend `pid` with its real `key` to the database.
pub async fn send_cancel(host: &str, port: u16, pid: i32, key: i32) -> std::io::Result<()> {
    let mut tcp = TcpStream::connect((host, port)).await?;
    let mut buf = BytesMut::new();
    StartupPacket::CancelRequest { pid, key }.encode(&mut buf);
    tcp.write_all(&buf).await?;
    // The server closes the connection once it has read the request.
    let mut sink = [0u8; 16];
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut sink)).await;
    Ok(())
}
