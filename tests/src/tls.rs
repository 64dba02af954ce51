//! TLS for tests and benchmarks: `wss://` echo servers and clients with
//! certificates an [`Authority`](crate::Authority) issued.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

/// The crypto provider the tests' TLS uses (ring, as the gateway's).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates of the PEM bundle `ca`, as trust roots.
pub fn roots(ca: &Path) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(certificate.unwrap()).unwrap();
    }
    roots
}

/// A `wss://` echo server with `certificate`; when `client_ca` is given it
/// requires a client certificate issued by it.
pub async fn tls_echo(certificate: &(PathBuf, PathBuf), client_ca: Option<&Path>) -> SocketAddr {
    let chain: Vec<_> = CertificateDer::pem_file_iter(&certificate.0)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(&certificate.1).unwrap();
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let config = match client_ca {
        Some(ca) => builder.with_client_cert_verifier(
            rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(ca)),
                provider(),
            )
            .build()
            .unwrap(),
        ),
        None => builder.with_no_client_auth(),
    }
    .with_single_cert(chain, key)
    .unwrap();
    serve_echo(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await
}

/// The same echo server as [`tls_echo`] over plain `ws://`: what TLS is
/// compared with.
pub async fn plain_echo() -> SocketAddr {
    serve_echo(None).await
}

/// Serve on port 0, through `tls` when given, an echo of every text and
/// binary message.
async fn serve_echo(tls: Option<tokio_rustls::TlsAcceptor>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            echo_messages(stream).await;
                        }
                    }
                    None => echo_messages(stream).await,
                }
            });
        }
    });
    address
}

/// Upgrade `stream` and echo its text and binary messages until it ends.
async fn echo_messages<S: AsyncRead + AsyncWrite + Unpin>(stream: S) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    while let Some(Ok(message)) = ws.next().await {
        if message.is_text() || message.is_binary() {
            let _ = ws.send(message).await;
        }
    }
}

/// Connect to `wss://localhost:<port><path>` trusting `ca`.
pub async fn wss_client(port: u16, path: &str, ca: &Path) -> WssClient {
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(ca))
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tcp.set_nodelay(true).unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tokio_tungstenite::client_async(format!("wss://localhost:{port}{path}"), tls)
        .await
        .unwrap()
        .0
}

/// A `wss://` client connection.
pub type WssClient =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;
