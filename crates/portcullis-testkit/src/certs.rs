//! Throwaway TLS certificates: a CA and a server certificate signed by it.

use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

use crate::error::{Error, IoContext};

/// A freshly generated certificate authority and a server certificate it signed.
///
/// All values are PEM text. Keys are ECDSA P-256 (PKCS#8).
#[derive(Clone, Debug)]
pub struct Certs {
    /// The CA certificate; trust this to verify `cert_pem`.
    pub ca_pem: String,
    /// The server certificate (for `localhost`, `127.0.0.1` and `::1` by default).
    pub cert_pem: String,
    /// The server certificate's private key.
    pub key_pem: String,
}

/// Where [`Certs::write_to`] put the files.
#[derive(Clone, Debug)]
pub struct CertFiles {
    /// `ca.pem`.
    pub ca: PathBuf,
    /// `server.crt`.
    pub cert: PathBuf,
    /// `server.key` (mode 0600).
    pub key: PathBuf,
}

impl Certs {
    /// Generates a CA and a server certificate for `localhost`, `127.0.0.1` and `::1`.
    pub fn generate() -> Result<Certs, Error> {
        Certs::generate_for(&["localhost", "127.0.0.1", "::1"])
    }

    /// Generates a CA and a server certificate whose subject alternative names are
    /// `names` (IP addresses become IP SANs, everything else DNS SANs). The first
    /// name is also the certificate's common name.
    pub fn generate_for(names: &[&str]) -> Result<Certs, Error> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.distinguished_name = rcgen::DistinguishedName::new();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Portcullis Test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = ca_params.self_signed(&ca_key)?;

        let key = KeyPair::generate()?;
        let sans: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("localhost"),
        );
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &ca, &ca_key)?;

        Ok(Certs {
            ca_pem: ca.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Writes `ca.pem`, `server.crt` and `server.key` (mode 0600) into `dir`,
    /// which must exist, replacing files of those names.
    pub fn write_to(&self, dir: &Path) -> Result<CertFiles, Error> {
        let files = CertFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
        };
        fs::write(&files.ca, &self.ca_pem).ctx(|| format!("writing {}", files.ca.display()))?;
        fs::write(&files.cert, &self.cert_pem)
            .ctx(|| format!("writing {}", files.cert.display()))?;
        write_private(&files.key, self.key_pem.as_bytes())?;
        Ok(files)
    }
}

/// Writes `contents` to a file that is (re)created with mode 0600.
pub(crate) fn write_private(path: &Path, contents: &[u8]) -> Result<(), Error> {
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;

    let context = || format!("writing {}", path.display());
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .ctx(context)?;
    // The mode above only applies when the file is created.
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .ctx(context)?;
    file.write_all(contents).ctx(context)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn generates_pem() {
        let certs = Certs::generate().unwrap();
        assert!(certs.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(certs.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(certs.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert_ne!(certs.ca_pem, certs.cert_pem);
    }

    #[test]
    fn writes_files() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let certs = Certs::generate().unwrap();
        let files = certs.write_to(dir.path()).unwrap();
        assert_eq!(fs::read_to_string(&files.ca).unwrap(), certs.ca_pem);
        assert_eq!(fs::read_to_string(&files.cert).unwrap(), certs.cert_pem);
        let mode = fs::metadata(&files.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
