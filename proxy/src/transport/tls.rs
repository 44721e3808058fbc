//! TLS for the WSS listener: the rustls server configuration from a PEM certificate chain
//! and key (`--tls-cert`, `--tls-key`). ALPN offers only `http/1.1`, since the WebSocket
//! upgrade is served over HTTP/1.1 alone.

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why the TLS certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file is unreadable or not PEM.
    #[error("read certificate chain {}: {source}", path.display())]
    Certificates {
        /// The `--tls-cert` file.
        path: PathBuf,
        /// The reader's error.
        source: rustls_pki_types::pem::Error,
    },
    /// The certificate file holds no `CERTIFICATE` block.
    #[error("{} holds no PEM certificate", path.display())]
    NoCertificate {
        /// The `--tls-cert` file.
        path: PathBuf,
    },
    /// The key file is unreadable or holds no PEM private key.
    #[error("read private key {}: {source}", path.display())]
    Key {
        /// The `--tls-key` file.
        path: PathBuf,
        /// The reader's error.
        source: rustls_pki_types::pem::Error,
    },
    /// rustls refused the pair (e.g. the key does not belong to the certificate).
    #[error("certificate and key cannot be used: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The server configuration for `cert` (PEM chain, leaf first) and `key` (PEM PKCS#8,
/// PKCS#1 or SEC1), with the aws-lc-rs provider and its safe default protocol versions.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Certificates {
            path: cert.to_owned(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_owned(),
        });
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Key {
        path: key.to_owned(),
        source,
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn testdata(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/transport/testdata")
            .join(name)
    }

    #[test]
    fn loads_a_matching_pair_with_alpn_http11() {
        let config = server_config(&testdata("cert.pem"), &testdata("key.pem")).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn explains_what_is_wrong() {
        let err = server_config(&testdata("missing.pem"), &testdata("key.pem")).unwrap_err();
        assert!(matches!(err, TlsError::Certificates { .. }), "{err}");
        assert!(err.to_string().contains("missing.pem"), "{err}");

        let err = server_config(&testdata("key.pem"), &testdata("key.pem")).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");

        let err = server_config(&testdata("cert.pem"), &testdata("cert.pem")).unwrap_err();
        assert!(matches!(err, TlsError::Key { .. }), "{err}");

        let err = server_config(&testdata("cert.pem"), &testdata("other-key.pem")).unwrap_err();
        assert!(matches!(err, TlsError::Rustls(_)), "{err}");
    }
}
