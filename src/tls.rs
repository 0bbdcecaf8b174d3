//! Optional TLS termination (rustls) on the public listener, for deployments without a
//! fronting proxy. Handshakes run per connection (axum-server), so a slow handshake never
//! stalls the accept loop.

use std::net::SocketAddr;

use axum::Router;
use axum_server::tls_rustls::RustlsConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::policy::TlsFiles;

/// Reads the PEM certificate chain and key; the error names both files.
pub(crate) async fn load(files: &TlsFiles) -> Result<RustlsConfig, String> {
    // Several servers in one process may race to install it; the first one wins, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    RustlsConfig::from_pem_file(&files.cert, &files.key)
        .await
        .map_err(|e| {
            format!(
                "cannot load tls_cert {} / tls_key {}: {e}",
                files.cert.display(),
                files.key.display()
            )
        })
}

/// Serves `router` over TLS on `listener` until `shutdown`.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: RustlsConfig,
    router: Router,
    shutdown: CancellationToken,
) {
    let result = async {
        let listener = listener.into_std()?;
        let handle = axum_server::Handle::new();
        let stopper = handle.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            stopper.shutdown();
        });
        axum_server::from_tcp_rustls(listener, tls)?
            .handle(handle)
            .serve(router.into_make_service_with_connect_info::<SocketAddr>())
            .await
    }
    .await;
    if let Err(error) = result {
        tracing::error!(%error, "TLS listener failed");
    }
}
