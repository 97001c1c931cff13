//! yamux over a tokio byte stream: the host's client side (open streams on
//! request) and the agent's server side (serve every stream the host opens).

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::task::Poll;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

/// One multiplexed stream, as a tokio `AsyncRead + AsyncWrite`.
pub type Stream = Compat<yamux::Stream>;

/// A request for a new outbound stream.
pub type OpenRequest = oneshot::Sender<io::Result<Stream>>;

/// The yamux settings both sides use.
pub fn config() -> yamux::Config {
    let mut c = yamux::Config::default();
    c.set_max_num_streams(256);
    c
}

/// Drives the host's side of a session over `io` until it ends, opening a
/// stream for every request on `opens`. Returns why it ended.
pub async fn run_client<T>(io: T, opens: &mut mpsc::Receiver<OpenRequest>) -> String
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut conn = yamux::Connection::new(io.compat(), config(), yamux::Mode::Client);
    let mut waiting: VecDeque<OpenRequest> = VecDeque::new();
    poll_fn(|cx| loop {
        let mut progressed = false;
        while let Poll::Ready(r) = opens.poll_recv(cx) {
            match r {
                Some(tx) => {
                    waiting.push_back(tx);
                    progressed = true;
                }
                None => return Poll::Ready("the session was closed".to_string()),
            }
        }
        while !waiting.is_empty() {
            match conn.poll_new_outbound(cx) {
                Poll::Ready(Ok(s)) => {
                    if let Some(tx) = waiting.pop_front() {
                        let _ = tx.send(Ok(s.compat()));
                    }
                    progressed = true;
                }
                Poll::Ready(Err(e)) => {
                    for tx in waiting.drain(..) {
                        let _ = tx.send(Err(io::Error::other(e.to_string())));
                    }
                    return Poll::Ready(format!("opening a stream: {e}"));
                }
                Poll::Pending => break,
            }
        }
        match conn.poll_next_inbound(cx) {
            // The agent opens no streams: one it tried is dropped.
            Poll::Ready(Some(Ok(_))) => progressed = true,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(e.to_string()),
            Poll::Ready(None) => return Poll::Ready("the agent closed the session".to_string()),
            Poll::Pending => {}
        }
        if !progressed {
            return Poll::Pending;
        }
    })
    .await
}

/// Drives the agent's side of a session over `io` until it ends, calling
/// `on_stream` for every stream the host opens. Returns why it ended.
pub async fn run_server<T, F>(io: T, mut on_stream: F) -> String
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: FnMut(Stream),
{
    let mut conn = yamux::Connection::new(io.compat(), config(), yamux::Mode::Server);
    poll_fn(|cx| loop {
        match conn.poll_next_inbound(cx) {
            Poll::Ready(Some(Ok(s))) => on_stream(s.compat()),
            Poll::Ready(Some(Err(e))) => return Poll::Ready(e.to_string()),
            Poll::Ready(None) => return Poll::Ready("the host closed the session".to_string()),
            Poll::Pending => return Poll::Pending,
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn many_streams_echo_over_one_connection() {
        let (a, b) = tokio::io::duplex(64 << 10);
        tokio::spawn(run_server(b, |mut s: Stream| {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                s.read_to_end(&mut buf).await.unwrap();
                s.write_all(&buf).await.unwrap();
                s.shutdown().await.unwrap();
            });
        }));
        let (tx, mut rx) = mpsc::channel(16);
        tokio::spawn(async move { run_client(a, &mut rx).await });
        let mut tasks = Vec::new();
        for i in 0..20u8 {
            let tx = tx.clone();
            tasks.push(tokio::spawn(async move {
                let (otx, orx) = oneshot::channel();
                tx.send(otx).await.unwrap();
                let mut s = orx.await.unwrap().unwrap();
                let data = vec![i; 100_000];
                s.write_all(&data).await.unwrap();
                s.shutdown().await.unwrap();
                let mut back = Vec::new();
                s.read_to_end(&mut back).await.unwrap();
                assert_eq!(back, data);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }
}
