//! A policed guest's TLS connection to a host one of its secrets goes to:
//! terminated with a certificate from the VM's own CA, each HTTP/1.1
//! request's header values given the secret's value where the guest put
//! its placeholder, and sent on over a new TLS connection to the host,
//! verified as any client would (the host's trust store, plus
//! `egress.ca_files`). Only headers are touched; bodies stream through.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::secrets::VmSecrets;

/// The trust store of the host's Debian-family systems.
pub const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The TLS client side toward secrets' hosts: the system's roots and the
/// configured extra ones.
pub fn client_config(extra: &[std::path::PathBuf]) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let mut files = vec![std::path::PathBuf::from(SYSTEM_BUNDLE)];
    files.extend(extra.iter().cloned());
    for f in &files {
        let Ok(iter) = rustls_pki_types::CertificateDer::pem_file_iter(f) else {
            continue;
        };
        for c in iter.flatten() {
            let _ = roots.add(c);
        }
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The crypto of both TLS sides: ring (already built for SSH), without
/// the post-quantum key exchange aws-lc-rs would add (and its C build).
#[allow(deprecated)]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A stream that first gives back bytes already read from it.
pub struct Rewind<S> {
    head: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S> Rewind<S> {
    pub fn new(head: Vec<u8>, inner: S) -> Rewind<S> {
        Rewind { head, at: 0, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.at < self.head.len() {
            let n = (self.head.len() - self.at).min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.head[at..at + n]);
            self.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

type Body = http_body_util::combinators::BoxBody<hyper::body::Bytes, hyper::Error>;

fn text(status: u16, msg: String) -> hyper::Response<Body> {
    let body = http_body_util::Full::new(hyper::body::Bytes::from(msg))
        .map_err(|never| match never {})
        .boxed();
    let mut r = hyper::Response::new(body);
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::BAD_GATEWAY);
    r
}

/// Serves one guest connection to `host` (its ClientHello in `head`):
/// `leak` is told the names of other hosts' placeholders seen in it.
pub async fn serve(
    guest: TcpStream,
    head: Vec<u8>,
    host: String,
    out: TcpStream,
    secrets: Arc<VmSecrets>,
    client: Arc<rustls::ClientConfig>,
    leak: impl Fn(Vec<String>) + Send + Sync + 'static,
) -> Result<(), String> {
    let server = secrets.server_config(&host)?;
    let guest = tokio_rustls::TlsAcceptor::from(server)
        .accept(Rewind::new(head, guest))
        .await
        .map_err(|e| format!("TLS with the guest: {e}"))?;
    let name = rustls_pki_types::ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
    let up = tokio_rustls::TlsConnector::from(client)
        .connect(name, out)
        .await
        .map_err(|e| format!("TLS with {host}: {e}"))?;
    let (sender, conn) = hyper::client::conn::http1::handshake::<_, Incoming>(TokioIo::new(up))
        .await
        .map_err(|e| format!("HTTP with {host}: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let sender = Arc::new(tokio::sync::Mutex::new(sender));
    let leak = Arc::new(leak);
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        let (sender, secrets, host, leak) =
            (sender.clone(), secrets.clone(), host.clone(), leak.clone());
        async move {
            let mut others = Vec::new();
            for v in req.headers_mut().values_mut() {
                let Ok(s) = v.to_str() else { continue };
                let (swapped, elsewhere) = secrets.swap(&host, s);
                others.extend(elsewhere);
                if swapped != s {
                    if let Ok(nv) = hyper::header::HeaderValue::from_str(&swapped) {
                        *v = nv;
                    }
                }
            }
            if !others.is_empty() {
                leak(others);
            }
            let mut s = sender.lock().await;
            let r = match s.ready().await {
                Ok(()) => s.send_request(req).await,
                Err(e) => Err(e),
            };
            Ok::<_, std::convert::Infallible>(match r {
                Ok(resp) => resp.map(|b| b.boxed()),
                Err(e) => text(502, format!("banger: {host} did not answer: {e}\n")),
            })
        }
    });
    hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(guest), service)
        .await
        .map_err(|e| format!("HTTP with the guest: {e}"))
}
