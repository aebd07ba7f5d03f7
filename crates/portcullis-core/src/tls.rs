//! TLS configuration for both sides of every protocol: the gateway's server certificate for
//! clients, and the upstream modes `disable | prefer | require | verify-full` (rustls with
//! the `ring` provider). Feature `tls`.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// A TLS configuration problem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {why}")]
    Pem {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn pem_err(path: &Path, why: impl std::fmt::Display) -> TlsError {
    TlsError::Pem {
        path: path.display().to_string(),
        why: why.to_string(),
    }
}

/// Read all certificates of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(path, e))?;
    if certs.is_empty() {
        return Err(pem_err(path, "no certificate found"));
    }
    Ok(certs)
}

/// The server side: a certificate chain and key (PEM files). ALPN `postgresql` is offered
/// for PostgreSQL 17 direct TLS; clients of other protocols offer no ALPN and are unaffected.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = load_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_err(key, e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(Arc::new(config))
}

/// How the gateway secures its connection to the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamTlsMode {
    /// Plain TCP.
    Disable,
    /// TLS if the server offers it, without certificate verification.
    #[default]
    Prefer,
    /// TLS required, without certificate verification.
    Require,
    /// TLS required; the certificate must chain to the trusted roots and name the host.
    VerifyFull,
}

impl std::str::FromStr for UpstreamTlsMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "disable" => Ok(Self::Disable),
            "prefer" => Ok(Self::Prefer),
            "require" => Ok(Self::Require),
            "verify-full" => Ok(Self::VerifyFull),
            other => Err(format!(
                "unknown upstream tls mode \"{other}\" (expected disable, prefer, require or verify-full)"
            )),
        }
    }
}

/// The upstream TLS settings: a mode and, for it, a client configuration.
#[derive(Clone, Debug)]
pub struct UpstreamTls {
    /// The mode.
    pub mode: UpstreamTlsMode,
    config: Option<Arc<rustls::ClientConfig>>,
}

impl UpstreamTls {
    /// Plain TCP.
    pub fn disabled() -> Self {
        UpstreamTls {
            mode: UpstreamTlsMode::Disable,
            config: None,
        }
    }

    /// Settings for `mode`; `ca` is the PEM file of trust roots for `verify-full` (without
    /// it, verify-full is an error: the gateway does not guess trust roots).
    pub fn new(mode: UpstreamTlsMode, ca: Option<&Path>) -> Result<Self, TlsError> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?;
        let config = match mode {
            UpstreamTlsMode::Disable => None,
            UpstreamTlsMode::Prefer | UpstreamTlsMode::Require => Some(
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(NoVerification(
                        provider().signature_verification_algorithms,
                    )))
                    .with_no_client_auth(),
            ),
            UpstreamTlsMode::VerifyFull => {
                let ca = ca.ok_or_else(|| TlsError::Pem {
                    path: "<none>".into(),
                    why: "tls = \"verify-full\" needs `ca` (a PEM file of trusted roots)".into(),
                })?;
                let mut roots = rustls::RootCertStore::empty();
                for cert in load_certs(ca)? {
                    roots.add(cert)?;
                }
                Some(builder.with_root_certificates(roots).with_no_client_auth())
            }
        };
        Ok(UpstreamTls {
            mode,
            config: config.map(Arc::new),
        })
    }

    /// The client configuration for the mode (`None` for `disable`).
    pub fn client_config(&self) -> Option<&Arc<rustls::ClientConfig>> {
        self.config.as_ref()
    }
}

/// `host` as a TLS server name (a DNS name or an IP address).
pub fn server_name(host: &str) -> Result<ServerName<'static>, std::io::Error> {
    ServerName::try_from(host.to_owned())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
}

/// `prefer` / `require`: encrypt, but like libpq do not verify the certificate. Handshake
/// signatures are still checked so the session keys belong to the presented certificate.
#[derive(Debug)]
struct NoVerification(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}
