//! The upstream side: reading a MySQL / MariaDB server's greeting, then logging in with the
//! credentials the gateway holds — `mysql_native_password`, MariaDB's `client_ed25519`,
//! `caching_sha2_password` (fast path, and full authentication over TLS or with the server's
//! RSA key), `sha256_password` and `mysql_clear_password`, through `mysql_common`'s
//! authentication plugins.
//!
//! The greeting is read before the client logs in (its connection id and version go to the
//! client); the login itself waits until the client's identity — and so the database user
//! it maps to — is known.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use mysql_common::auth::plugins::{ChallengeResponsePlugin, Context as AuthContext};
use mysql_common::constants::{CapabilityFlags, MariadbCapabilities};
use mysql_common::io::ParseBuf;
use mysql_common::packets::{AuthPlugin, HandshakePacket, HandshakeResponse, SslRequest};
use mysql_common::proto::MySerialize;
use portcullis_core::tls::{UpstreamTlsMode, server_name};
use portcullis_core::upstream::UpstreamConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::BoxIo;
use crate::event::err_fields;
use crate::packet::{Packet, ReadError, encode_packet};

/// Capabilities the gateway can carry between a client and the database: what changes the
/// shape of packets it must read (compression, query attributes, optional metadata, MariaDB's
/// metadata cache and bulk operations) is never negotiated.
pub(crate) fn carried() -> CapabilityFlags {
    use CapabilityFlags as C;
    C::CLIENT_LONG_PASSWORD
        | C::CLIENT_FOUND_ROWS
        | C::CLIENT_LONG_FLAG
        | C::CLIENT_CONNECT_WITH_DB
        | C::CLIENT_NO_SCHEMA
        | C::CLIENT_ODBC
        | C::CLIENT_LOCAL_FILES
        | C::CLIENT_IGNORE_SPACE
        | C::CLIENT_PROTOCOL_41
        | C::CLIENT_INTERACTIVE
        | C::CLIENT_IGNORE_SIGPIPE
        | C::CLIENT_TRANSACTIONS
        | C::CLIENT_RESERVED
        | C::CLIENT_SECURE_CONNECTION
        | C::CLIENT_MULTI_STATEMENTS
        | C::CLIENT_MULTI_RESULTS
        | C::CLIENT_PS_MULTI_RESULTS
        | C::CLIENT_PLUGIN_AUTH
        | C::CLIENT_CONNECT_ATTRS
        | C::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
        | C::CLIENT_CAN_HANDLE_EXPIRED_PASSWORDS
        | C::CLIENT_SESSION_TRACK
        | C::CLIENT_DEPRECATE_EOF
}

/// MariaDB's extended capabilities the gateway carries: extended type metadata (a column
/// definition says `json`, `uuid`...), which clients such as mysql2 use to type values.
pub(crate) fn carried_mariadb() -> MariadbCapabilities {
    MariadbCapabilities::MARIADB_CLIENT_EXTENDED_METADATA
}

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
    /// The server refused (its ERR packet payload, forwarded to the client).
    #[error("the database refused the login: {}", describe_err(.0))]
    Refused(Bytes),
    /// TLS was required but the server does not offer it.
    #[error("the database at {0} does not offer TLS, which the gateway's configuration requires")]
    TlsUnavailable(String),
    /// The server broke the protocol or asked for something the gateway cannot do.
    #[error("the database at {address}: {message}")]
    Protocol {
        /// The address.
        address: String,
        /// What went wrong.
        message: String,
    },
    /// No answer in time.
    #[error("connecting to the database at {0} timed out")]
    Timeout(String),
}

fn describe_err(payload: &Bytes) -> String {
    match err_fields(payload) {
        Some((code, state, message)) => format!("ERROR {code} ({state}): {message}"),
        None => "an unreadable error".into(),
    }
}

/// What the server's greeting said.
#[derive(Debug, Clone)]
pub struct Greeting {
    /// Its version string (`10.11.6-MariaDB-0+deb12u1`).
    pub server_version: Vec<u8>,
    /// The connection id (what `CONNECTION_ID()` returns and `KILL` takes).
    pub connection_id: u32,
    /// Its capabilities.
    pub capabilities: CapabilityFlags,
    /// Its default collation id.
    pub collation: u8,
    /// Its status flags.
    pub status: u16,
    /// MariaDB's extended capabilities.
    pub mariadb_capabilities: MariadbCapabilities,
    nonce: Vec<u8>,
    plugin: Vec<u8>,
}

/// A connection whose greeting was read, not yet logged in.
pub struct Opened {
    io: BoxIo,
    rbuf: BytesMut,
    address: String,
    /// The greeting.
    pub greeting: Greeting,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("address", &self.address)
            .field("greeting", &self.greeting)
            .finish_non_exhaustive()
    }
}

/// A logged-in upstream connection.
pub struct Connected {
    pub(crate) io: BoxIo,
    pub(crate) rbuf: BytesMut,
    /// Capabilities in force on the connection.
    pub caps: CapabilityFlags,
    /// MariaDB extended capabilities in force.
    pub mariadb_caps: MariadbCapabilities,
    /// The payload of the server's final OK packet.
    pub ok: Bytes,
    /// The greeting.
    pub greeting: Greeting,
    /// Whether the connection is encrypted.
    pub tls: bool,
}

impl std::fmt::Debug for Connected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connected")
            .field("caps", &self.caps)
            .field("greeting", &self.greeting)
            .finish_non_exhaustive()
    }
}

/// What the client asked for at login, carried to the database.
#[derive(Debug, Clone)]
pub struct Login<'a> {
    /// The client's capabilities.
    pub capabilities: CapabilityFlags,
    /// The client's MariaDB extended capabilities.
    pub mariadb_capabilities: MariadbCapabilities,
    /// The client's collation id.
    pub collation: u8,
    /// The database to open, if any.
    pub database: Option<&'a str>,
    /// Connection attributes (`program_name`, ...).
    pub attributes: Option<HashMap<String, String>>,
    /// Largest packet the client accepts.
    pub max_packet: u32,
}

struct Ctx<'a> {
    pass: &'a [u8],
    tls: bool,
    scramble: &'a [u8],
}

impl AuthContext for &Ctx<'_> {
    fn pass(&self) -> &[u8] {
        self.pass
    }
    fn is_ipc_transport(&self) -> bool {
        false
    }
    fn is_tls_transport(&self) -> bool {
        self.tls
    }
    fn scramble(&self) -> &[u8] {
        self.scramble
    }
    fn server_key_pem(&self) -> Option<&[u8]> {
        None
    }
}

async fn read_packet(
    io: &mut BoxIo,
    rbuf: &mut BytesMut,
    address: &str,
) -> Result<Packet, ConnectError> {
    crate::packet::read_packet(io, rbuf, 1 << 20)
        .await
        .map_err(|e| match e {
            ReadError::Io(source) => ConnectError::Io {
                address: address.into(),
                source,
            },
            ReadError::Packet(e) => ConnectError::Protocol {
                address: address.into(),
                message: e.to_string(),
            },
        })
}

/// Connect to the database and read its greeting.
pub async fn open(config: &UpstreamConfig) -> Result<Opened, ConnectError> {
    let address = config.address();
    let work = async {
        let tcp = TcpStream::connect((config.host.as_str(), config.port))
            .await
            .map_err(|source| ConnectError::Io {
                address: address.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let mut io: BoxIo = Box::new(tcp);
        let mut rbuf = BytesMut::with_capacity(8192);
        let p = read_packet(&mut io, &mut rbuf, &address).await?;
        if p.payload.first() == Some(&0xff) {
            return Err(ConnectError::Refused(p.payload));
        }
        let hello: HandshakePacket<'_> =
            ParseBuf(&p.payload)
                .parse(())
                .map_err(|e| ConnectError::Protocol {
                    address: address.clone(),
                    message: format!("unreadable greeting: {e}"),
                })?;
        if hello.protocol_version() != 10
            || !hello
                .capabilities()
                .contains(CapabilityFlags::CLIENT_PROTOCOL_41)
        {
            return Err(ConnectError::Protocol {
                address: address.clone(),
                message: "the server does not speak protocol 4.1".into(),
            });
        }
        let greeting = Greeting {
            server_version: hello.server_version_ref().to_vec(),
            connection_id: hello.connection_id(),
            capabilities: hello.capabilities(),
            collation: hello.default_collation(),
            status: hello.status_flags().bits(),
            mariadb_capabilities: if hello
                .capabilities()
                .contains(CapabilityFlags::CLIENT_LONG_PASSWORD)
            {
                MariadbCapabilities::empty()
            } else {
                hello.mariadb_ext_capabilities()
            },
            nonce: hello.nonce(),
            plugin: hello
                .auth_plugin_name_ref()
                .map(<[u8]>::to_vec)
                .unwrap_or_else(|| b"mysql_native_password".to_vec()),
        };
        Ok(Opened {
            io,
            rbuf,
            address: address.clone(),
            greeting,
        })
    };
    tokio::time::timeout(config.connect_timeout, work)
        .await
        .map_err(|_| ConnectError::Timeout(config.address()))?
}

impl Opened {
    /// Log in as `user` with `password`, carrying what the client asked for.
    pub async fn login(
        self,
        config: &UpstreamConfig,
        user: &str,
        password: &str,
        login: &Login<'_>,
    ) -> Result<Connected, ConnectError> {
        let timeout = config.connect_timeout;
        let address = self.address.clone();
        tokio::time::timeout(timeout, self.login_inner(config, user, password, login))
            .await
            .map_err(|_| ConnectError::Timeout(address))?
    }

    async fn login_inner(
        self,
        config: &UpstreamConfig,
        user: &str,
        password: &str,
        login: &Login<'_>,
    ) -> Result<Connected, ConnectError> {
        let Opened {
            mut io,
            mut rbuf,
            address,
            greeting,
        } = self;
        let io_err = |source: std::io::Error| ConnectError::Io {
            address: address.clone(),
            source,
        };
        let proto = |message: String| ConnectError::Protocol {
            address: address.clone(),
            message,
        };
        let server = greeting.capabilities;
        let mut caps = (login.capabilities & carried() & server)
            | CapabilityFlags::CLIENT_PROTOCOL_41
            | CapabilityFlags::CLIENT_SECURE_CONNECTION
            | CapabilityFlags::CLIENT_PLUGIN_AUTH;
        caps &= server | CapabilityFlags::CLIENT_PLUGIN_AUTH;
        let mariadb_caps =
            login.mariadb_capabilities & greeting.mariadb_capabilities & carried_mariadb();
        let mut seq = 1u8;
        let mut wbuf = BytesMut::new();
        let mut tls = false;
        if config.tls.mode != UpstreamTlsMode::Disable {
            match config.tls.client_config() {
                Some(client) if server.contains(CapabilityFlags::CLIENT_SSL) => {
                    let mut payload = Vec::new();
                    // MariaDB reads the extended capabilities from this first packet.
                    SslRequest::new(
                        caps | CapabilityFlags::CLIENT_SSL,
                        login.max_packet,
                        login.collation,
                    )
                    .with_mariadb_capabilities(mariadb_caps)
                    .serialize(&mut payload);
                    seq = encode_packet(seq, &payload, &mut wbuf);
                    io.write_all(&wbuf).await.map_err(io_err)?;
                    wbuf.clear();
                    if !rbuf.is_empty() {
                        return Err(proto("data arrived before the TLS handshake".into()));
                    }
                    let connector = tokio_rustls::TlsConnector::from(client.clone());
                    let name = server_name(&config.host).map_err(io_err)?;
                    let stream = connector.connect(name, io).await.map_err(io_err)?;
                    io = Box::new(stream);
                    caps |= CapabilityFlags::CLIENT_SSL;
                    tls = true;
                }
                _ if config.tls.mode == UpstreamTlsMode::Prefer => {}
                _ => return Err(ConnectError::TlsUnavailable(address.clone())),
            }
        }
        let mut plugin = AuthPlugin::from_bytes(&greeting.plugin).into_owned();
        let mut nonce = greeting.nonce.clone();
        let mut proc = plugin
            .init()
            .map_err(|e| proto(format!("authentication: {e}")))?;
        let first = {
            let ctx = Ctx {
                pass: password.as_bytes(),
                tls,
                scramble: &nonce,
            };
            proc.run(&ctx, &nonce)
                .map_err(|e| proto(format!("authentication with {}: {e}", plugin_name(&plugin))))?
        };
        let mut attributes = login.attributes.clone();
        if let Some(a) = &mut attributes {
            a.retain(|k, _| !k.is_empty());
        }
        let response = HandshakeResponse::new(
            Some(first.data().unwrap_or_default().to_vec()),
            (5, 5, 3),
            Some(user.as_bytes().to_vec()),
            login.database.map(|d| d.as_bytes().to_vec()),
            Some(plugin.clone()),
            caps,
            attributes.filter(|_| caps.contains(CapabilityFlags::CLIENT_CONNECT_ATTRS)),
            login.max_packet,
        );
        let response = response.with_mariadb_ext_capabilities(mariadb_caps);
        let mut payload = Vec::new();
        response.serialize(&mut payload);
        // The client's collation (mysql_common writes utf8mb4_general_ci).
        if let Some(c) = payload.get_mut(8) {
            *c = login.collation;
        }
        let caps = CapabilityFlags::from_bits_truncate(u32::from_le_bytes(
            payload
                .get(..4)
                .and_then(|b| b.try_into().ok())
                .unwrap_or_default(),
        ));
        encode_packet(seq, &payload, &mut wbuf);
        io.write_all(&wbuf).await.map_err(io_err)?;
        wbuf.clear();
        let mut rounds = 0;
        loop {
            rounds += 1;
            if rounds > 16 {
                return Err(proto("authentication did not finish".into()));
            }
            let p = read_packet(&mut io, &mut rbuf, &address).await?;
            seq = p.last_seq.wrapping_add(1);
            let reply = match p.payload.first() {
                Some(0x00) => {
                    return Ok(Connected {
                        io,
                        rbuf,
                        caps,
                        mariadb_caps,
                        ok: p.payload,
                        greeting,
                        tls,
                    });
                }
                Some(0xff) => return Err(ConnectError::Refused(p.payload)),
                Some(0xfe) => {
                    // Auth switch: another plugin, another nonce.
                    let rest = &p.payload[1..];
                    let end = rest
                        .iter()
                        .position(|&b| b == 0)
                        .ok_or_else(|| proto("an old-style authentication switch (mysql_old_password is not supported)".into()))?;
                    plugin = AuthPlugin::from_bytes(&rest[..end]).into_owned();
                    let data = &rest[end + 1..];
                    nonce = data.strip_suffix(&[0]).unwrap_or(data).to_vec();
                    proc = plugin
                        .init()
                        .map_err(|e| proto(format!("authentication: {e}")))?;
                    let ctx = Ctx {
                        pass: password.as_bytes(),
                        tls,
                        scramble: &nonce,
                    };
                    proc.run(&ctx, &nonce).map_err(|e| {
                        proto(format!("authentication with {}: {e}", plugin_name(&plugin)))
                    })?
                }
                Some(0x01) => {
                    let ctx = Ctx {
                        pass: password.as_bytes(),
                        tls,
                        scramble: &nonce,
                    };
                    proc.run(&ctx, &p.payload[1..]).map_err(|e| {
                        proto(format!("authentication with {}: {e}", plugin_name(&plugin)))
                    })?
                }
                _ => return Err(proto("unexpected packet during authentication".into())),
            };
            if let Some(data) = reply.data() {
                encode_packet(seq, data, &mut wbuf);
                io.write_all(&wbuf).await.map_err(io_err)?;
                wbuf.clear();
            }
        }
    }
}

fn plugin_name(plugin: &AuthPlugin<'_>) -> String {
    String::from_utf8_lossy(plugin.as_bytes()).into_owned()
}
