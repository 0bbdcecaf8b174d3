//! Optional TLS termination (rustls) on the public listener, for deployments without a
//! fronting proxy. The handshake runs in each connection's task (`server::conn`), under the
//! same deadline as the request head, so a slow handshake never stalls the accept loop nor
//! holds a descriptor for long.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::policy::TlsFiles;

/// Reads the PEM certificate chain and key; the error names the file at fault.
pub(crate) fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, String> {
    let cert_file = files.cert.display();
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read tls_cert {cert_file}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("tls_cert {cert_file}: no certificate in it"));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("cannot read tls_key {}: {e}", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls_cert {cert_file} / tls_key: {e}"))?;
    // Websockets are HTTP/1.1 upgrades; nothing else is served.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
