//! TLS for `https://` backend URLs: rustls (ring), the one TLS stack the server already
//! links (the cluster bridge's), with Mozilla's roots (webpki-roots) built in, so the
//! trust does not depend on the host's certificate store, plus the certificates of
//! `--backend-ca-file` for a backend whose certificate a private CA signed.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

/// Why the TLS settings cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA file cannot be read or holds no valid PEM certificate.
    #[error("--backend-ca-file {path}: {why}")]
    CaFile {
        /// The file.
        path: String,
        /// What is wrong with it.
        why: String,
    },
    /// rustls refused the settings (cannot happen with the ring provider's defaults).
    #[error("TLS settings: {0}")]
    Settings(String),
}

/// The certificates of a PEM file (at least one; `CERTIFICATE` blocks, other blocks are
/// ignored).
pub fn load_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |why: String| TlsError::CaFile { path: path.display().to_string(), why };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// The client settings: webpki-roots plus the certificates of `ca_file`, TLS 1.2 and
/// 1.3, no client certificate.
pub fn client_config(ca_file: Option<&Path>) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    if let Some(path) = ca_file {
        for cert in load_ca_file(path)? {
            roots.add(cert).map_err(|e| TlsError::CaFile { path: path.display().to_string(), why: e.to_string() })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Settings(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_empty_ca_file_is_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("corecast-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        assert!(client_config(Some(&missing)).unwrap_err().to_string().contains("missing.pem"));
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        assert!(client_config(Some(&empty)).unwrap_err().to_string().contains("no PEM certificate"));
        assert!(client_config(None).is_ok(), "the built-in roots alone");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
