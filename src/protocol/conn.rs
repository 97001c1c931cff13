//! Both ends of a connection: the server loop (handshake, peer check,
//! concurrent call dispatch, event streaming) and the clients (a simple one
//! for one call at a time, and a multiplexing one for many in flight).

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{de::DeserializeOwned, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, Mutex, Semaphore};

use super::cli::Input;
use super::frame::{self, read_frame, read_raw, write_frame, write_raw, FrameError};
use super::{
    answer_hello, decode_client_frame, Call, CallDecodeError, ClientFrame, Envelope, ErrorCode,
    Hello, HelloReply, Incoming, Methods, Response, RpcError,
};

/// How long a new connection may take to say hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection may sit idle (no frame) before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Calls one connection may have in flight.
pub const MAX_IN_FLIGHT: usize = 256;

/// The verified peer of a connection.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

/// Inputs a client sends during one call (bounded: a client that sends
/// faster than they are used waits).
pub type Inputs = mpsc::Receiver<Input>;

/// How many inputs of one call may wait.
pub const INPUT_QUEUE: usize = 64;

/// Events of one call waiting to be framed (each at most one guest
/// message, 1 MiB).
pub const EVENT_QUEUE: usize = 16;

/// Bytes of framed replies one connection may have waiting for a slow or
/// suspended client; past them the calls wait, and with them the guest
/// (its stream is not read, so its window closes).
pub const OUT_BYTES: usize = 8 << 20;

/// A queue of frames bounded by bytes: `send` waits while more than the
/// bound is queued (a frame larger than the bound waits for an empty
/// queue).
#[derive(Clone)]
pub struct ByteQueue {
    tx: mpsc::UnboundedSender<(Vec<u8>, tokio::sync::OwnedSemaphorePermit)>,
    room: Arc<Semaphore>,
    cap: usize,
}

/// The receiving end of a [`ByteQueue`].
pub struct ByteQueueRx(mpsc::UnboundedReceiver<(Vec<u8>, tokio::sync::OwnedSemaphorePermit)>);

impl ByteQueue {
    pub fn new(cap: usize) -> (ByteQueue, ByteQueueRx) {
        let (tx, rx) = mpsc::unbounded_channel();
        let cap = cap.clamp(1, u32::MAX as usize);
        (
            ByteQueue {
                tx,
                room: Arc::new(Semaphore::new(cap)),
                cap,
            },
            ByteQueueRx(rx),
        )
    }

    /// Queues `frame` once there is room; `Err` when the receiver is gone.
    pub async fn send(&self, frame: Vec<u8>) -> Result<(), ()> {
        let n = frame.len().clamp(1, self.cap) as u32;
        let permit = self
            .room
            .clone()
            .acquire_many_owned(n)
            .await
            .map_err(drop)?;
        self.tx.send((frame, permit)).map_err(drop)
    }
}

impl ByteQueueRx {
    /// The next frame; its room is given back when the frame is dropped
    /// (after it was written).
    pub async fn recv(&mut self) -> Option<(Vec<u8>, tokio::sync::OwnedSemaphorePermit)> {
        self.0.recv().await
    }
}

/// Serves requests of type `R`, streaming events `E`, answering `P`.
pub trait Handler<R, E, P>: Clone + Send + Sync + 'static {
    fn handle(
        &self,
        peer: Peer,
        call: Call<R>,
        events: mpsc::Sender<E>,
        inputs: Inputs,
    ) -> impl Future<Output = Result<P, RpcError>> + Send;
}

fn envelope<E: Serialize, P: Serialize>(request_id: &str, body: Response<E, P>) -> Option<Vec<u8>> {
    match frame::encode(&Envelope {
        request_id: request_id.to_string(),
        body,
    }) {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::error!(request_id, "cannot encode a response: {e}");
            None
        }
    }
}

/// Runs one server connection to completion. `allowed` decides from the peer's
/// uid (`SO_PEERCRED`) whether it may talk to us; anyone else is answered
/// `unauthorized` and disconnected. A malformed frame ends this connection
/// only, after a `bad_request` answer.
pub async fn serve_connection<R, E, P, H>(
    mut stream: UnixStream,
    allowed: impl Fn(u32) -> bool,
    handler: H,
) where
    R: Methods + Send + std::fmt::Debug + 'static,
    E: Serialize + Send + 'static,
    P: Serialize + Send + 'static,
    H: Handler<R, E, P>,
{
    let Some(peer) = handshake(&mut stream, allowed).await else {
        return;
    };

    let (mut rd, mut wr) = stream.into_split();
    let (out_tx, mut out_rx) = ByteQueue::new(OUT_BYTES);
    let writer = tokio::spawn(async move {
        while let Some((buf, _room)) = out_rx.recv().await {
            if write_raw(&mut wr, &buf).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    // Where each call in flight takes its inputs.
    let mut inputs: HashMap<String, mpsc::Sender<Input>> = HashMap::new();
    // Calls in flight; when the peer goes away they are cancelled (their
    // futures dropped), so work nobody waits for stops.
    let mut in_flight = tokio::task::JoinSet::new();
    loop {
        while in_flight.try_join_next().is_some() {}
        let payload = match tokio::time::timeout(IDLE_TIMEOUT, read_raw(&mut rd)).await {
            Err(_) | Ok(Err(FrameError::Closed)) | Ok(Err(FrameError::Truncated)) => break,
            Ok(Err(e)) => {
                let err = RpcError::bad_request(format!("bad frame: {e}"));
                if let Some(b) = envelope::<E, P>("", Response::Final(Err(err))) {
                    let _ = out_tx.send(b).await;
                }
                break;
            }
            Ok(Ok(p)) => p,
        };
        let call: Call<R> = match decode_client_frame::<R>(&payload) {
            Ok(Incoming::Call(c)) => c,
            Ok(Incoming::Input { request_id, input }) => {
                inputs.retain(|_, tx| !tx.is_closed());
                // Input for a call that already ended is dropped.
                if let Some(tx) = inputs.get(&request_id) {
                    let _ = tx.send(input).await;
                }
                continue;
            }
            Err(CallDecodeError::UnknownMethod { request_id, tag }) => {
                let err = RpcError::new(
                    ErrorCode::UnknownMethod,
                    format!(
                        "method #{tag} is not known to this server (version {}); use matching banger binaries",
                        crate::version::version()
                    ),
                )
                .with_request(&request_id);
                if let Some(b) = envelope::<E, P>(&request_id, Response::Final(Err(err))) {
                    if out_tx.send(b).await.is_err() {
                        break;
                    }
                }
                continue;
            }
            Err(CallDecodeError::Malformed {
                request_id,
                message,
            }) => {
                let request_id = request_id.unwrap_or_default();
                let err = RpcError::bad_request(format!("malformed request: {message}"))
                    .with_request(&request_id);
                if let Some(b) = envelope::<E, P>(&request_id, Response::Final(Err(err))) {
                    let _ = out_tx.send(b).await;
                }
                break;
            }
        };
        let (in_tx, in_rx) = mpsc::channel(INPUT_QUEUE);
        // Calls that ended dropped their receivers: forget them.
        inputs.retain(|_, tx| !tx.is_closed());
        inputs.insert(call.request_id.clone(), in_tx);
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let handler = handler.clone();
        in_flight.spawn(serve_call::<R, E, P, H>(
            handler,
            peer,
            call,
            in_rx,
            out_tx.clone(),
            permit,
        ));
    }
    in_flight.abort_all();
    while in_flight.join_next().await.is_some() {}
    drop(out_tx);
    let _ = writer.await;
}

/// Reads the peer's credentials and hello; answers it, refusing uids
/// `allowed` does not take and mismatched versions. The peer when welcome.
async fn handshake(stream: &mut UnixStream, allowed: impl Fn(u32) -> bool) -> Option<Peer> {
    let peer = match stream.peer_cred() {
        Ok(c) => Peer {
            uid: c.uid(),
            gid: c.gid(),
            pid: c.pid(),
        },
        Err(e) => {
            tracing::warn!("cannot read peer credentials: {e}");
            return None;
        }
    };
    let hello: Hello = match tokio::time::timeout(HELLO_TIMEOUT, read_frame(stream)).await {
        Ok(Ok(h)) => h,
        Ok(Err(FrameError::Closed)) | Ok(Err(FrameError::Truncated)) | Err(_) => return None,
        Ok(Err(e)) => {
            tracing::debug!(uid = peer.uid, "bad hello: {e}");
            let reply = HelloReply::Error(RpcError::bad_request(format!(
                "expected a hello frame: {e}"
            )));
            let _ = write_frame(stream, &reply).await;
            return None;
        }
    };
    if !allowed(peer.uid) {
        tracing::warn!(uid = peer.uid, pid = ?peer.pid, "refused a connection from another uid");
        let reply = HelloReply::Error(RpcError::new(
            ErrorCode::Unauthorized,
            format!(
                "uid {} may not use this socket: it serves only its owner (uid {}); run banger as that user or start your own daemon",
                peer.uid,
                nix::unistd::geteuid()
            ),
        ));
        let _ = write_frame(stream, &reply).await;
        return None;
    }
    let reply = answer_hello(&hello);
    let welcomed = matches!(reply, HelloReply::Welcome { .. });
    if write_frame(stream, &reply).await.is_err() || !welcomed {
        return None;
    }

    Some(peer)
}

/// One call: the handler's events streamed as they come, then its answer.
async fn serve_call<R, E, P, H>(
    handler: H,
    peer: Peer,
    call: Call<R>,
    in_rx: Inputs,
    out: ByteQueue,
    permit: tokio::sync::OwnedSemaphorePermit,
) where
    R: Methods + Send + std::fmt::Debug + 'static,
    E: Serialize + Send + 'static,
    P: Serialize + Send + 'static,
    H: Handler<R, E, P>,
{
    let _permit = permit;
    let request_id = call.request_id.clone();
    let (tx, mut rx) = mpsc::channel::<E>(EVENT_QUEUE);
    let fut = handler.handle(peer, call, tx, in_rx);
    tokio::pin!(fut);
    let result = loop {
        tokio::select! {
            Some(ev) = rx.recv() => {
                if let Some(b) = envelope::<E, P>(&request_id, Response::Event(ev)) {
                    let _ = out.send(b).await;
                }
            }
            res = &mut fut => break res,
        }
    };
    while let Ok(ev) = rx.try_recv() {
        if let Some(b) = envelope::<E, P>(&request_id, Response::Event(ev)) {
            let _ = out.send(b).await;
        }
    }
    let result = result.map_err(|e| e.with_request(&request_id));
    if let Some(b) = envelope::<E, P>(&request_id, Response::Final(result)) {
        let _ = out.send(b).await;
    }
}

/// Accepts connections on `listener` and serves each with `handler` (peers
/// filtered by `allowed`) until `shutdown` is notified or the process gets
/// SIGTERM or SIGINT. Both daemons run this loop.
pub async fn serve_until_shutdown<R, E, P, H>(
    listener: tokio::net::UnixListener,
    allowed: impl Fn(u32) -> bool + Clone + Send + Sync + 'static,
    handler: H,
    shutdown: Arc<tokio::sync::Notify>,
) where
    R: Methods + Send + std::fmt::Debug + 'static,
    E: Serialize + Send + 'static,
    P: Serialize + Send + 'static,
    H: Handler<R, E, P>,
{
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigterm = signal(SignalKind::terminate()).ok();
    let mut sigint = signal(SignalKind::interrupt()).ok();
    async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
        match s {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
    }
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(serve_connection(stream, allowed.clone(), handler.clone()));
                }
                Err(e) => {
                    // Out of fds or similar: back off briefly, keep serving.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.notified() => break,
            _ = recv(&mut sigterm) => break,
            _ = recv(&mut sigint) => break,
        }
    }
}

/// Failures on the client side of a connection.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket (absent or refused).
    #[error("nothing is listening on {path}")]
    NotRunning { path: PathBuf },
    /// The socket exists but we may not use it.
    #[error("permission denied on {path}: {hint}")]
    PermissionDenied { path: PathBuf, hint: String },
    #[error("cannot connect to {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", .0.message)]
    Refused(RpcError),
    #[error("{}", .0.message)]
    Rpc(RpcError),
    #[error("connection to the server failed: {0}")]
    Frame(#[from] FrameError),
    #[error("the server did not answer within {0:?}")]
    Timeout(Duration),
    /// The socket is served by a uid that is neither ours nor root's.
    #[error("{path} is served by uid {uid}, which is neither you nor root: another user may be intercepting banger's socket; remove it and check who owns {dir}", dir = .path.parent().unwrap_or(Path::new("/")).display())]
    ForeignServer { path: PathBuf, uid: u32 },
}

/// Who answered our hello.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    pub version: String,
    pub pid: u32,
}

async fn connect_and_greet(path: &Path) -> Result<(UnixStream, ServerInfo), ClientError> {
    let mut stream = match UnixStream::connect(path).await {
        Ok(s) => s,
        Err(e) => {
            return Err(match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                    ClientError::NotRunning {
                        path: path.to_path_buf(),
                    }
                }
                std::io::ErrorKind::PermissionDenied => ClientError::PermissionDenied {
                    path: path.to_path_buf(),
                    hint: owner_hint(path),
                },
                _ => ClientError::Connect {
                    path: path.to_path_buf(),
                    source: e,
                },
            })
        }
    };
    // Before a byte is sent: only we or root may be behind our sockets.
    let uid = stream
        .peer_cred()
        .map_err(|e| ClientError::Connect {
            path: path.to_path_buf(),
            source: e,
        })?
        .uid();
    if uid != 0 && uid != nix::unistd::geteuid().as_raw() {
        return Err(ClientError::ForeignServer {
            path: path.to_path_buf(),
            uid,
        });
    }
    let fut = async {
        write_frame(&mut stream, &Hello::current()).await?;
        read_frame::<_, HelloReply>(&mut stream).await
    };
    let reply = tokio::time::timeout(HELLO_TIMEOUT, fut)
        .await
        .map_err(|_| ClientError::Timeout(HELLO_TIMEOUT))??;
    match reply {
        HelloReply::Welcome {
            server_version,
            server_pid,
            ..
        } => Ok((
            stream,
            ServerInfo {
                version: server_version,
                pid: server_pid,
            },
        )),
        HelloReply::Error(e) => Err(ClientError::Refused(e)),
    }
}

/// A connected, handshaken client making one call at a time.
pub struct Client<R, E, P> {
    stream: UnixStream,
    pub server: ServerInfo,
    _types: std::marker::PhantomData<fn(R) -> (E, P)>,
}

impl<R, E, P> Client<R, E, P>
where
    R: Serialize,
    E: DeserializeOwned,
    P: DeserializeOwned,
{
    /// Connects to `path` and performs the handshake.
    pub async fn connect(path: &Path) -> Result<Self, ClientError> {
        let (stream, server) = connect_and_greet(path).await?;
        Ok(Client {
            stream,
            server,
            _types: std::marker::PhantomData,
        })
    }

    /// Sends one request under `request_id`, feeding events to `on_event`, and
    /// returns the final reply. Server errors come back as [`ClientError::Rpc`].
    pub async fn call_with_request(
        &mut self,
        request_id: String,
        request: R,
        on_event: impl FnMut(E),
    ) -> Result<P, ClientError> {
        self.call_with_inputs(request_id, request, on_event, None)
            .await
    }

    /// [`Client::call_with_request`], sending what arrives on `inputs` while the
    /// call runs.
    pub async fn call_with_inputs(
        &mut self,
        request_id: String,
        request: R,
        mut on_event: impl FnMut(E),
        mut inputs: Option<mpsc::Receiver<Input>>,
    ) -> Result<P, ClientError> {
        write_frame(
            &mut self.stream,
            &ClientFrame::Call(Call {
                request_id: request_id.clone(),
                request,
            }),
        )
        .await?;
        let (mut rd, mut wr) = self.stream.split();
        // Read through a buffer: the select below drops the read whenever an
        // input is ready first, which must not lose part of a frame.
        let mut frames = super::frame::BufferedFrames::default();
        loop {
            let next_input = async {
                match inputs.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                env = frames.next::<_, Envelope<E, P>>(&mut rd) => {
                    let env = match env {
                        Ok(env) => env,
                        Err(FrameError::Closed) => return Err(FrameError::Truncated.into()),
                        Err(e) => return Err(e.into()),
                    };
                    if env.request_id != request_id && !env.request_id.is_empty() {
                        continue;
                    }
                    match env.body {
                        Response::Event(e) => on_event(e),
                        Response::Final(Ok(p)) => return Ok(p),
                        Response::Final(Err(e)) => return Err(ClientError::Rpc(e)),
                    }
                }
                input = next_input => match input {
                    Some(input) => {
                        let frame = ClientFrame::<R>::Input { request_id: request_id.clone(), input };
                        write_frame(&mut wr, &frame).await?;
                    }
                    None => inputs = None,
                },
            }
        }
    }

    /// [`Client::call_with_request`] with a fresh request id.
    pub async fn call(&mut self, request: R, on_event: impl FnMut(E)) -> Result<P, ClientError> {
        self.call_with_request(super::new_request_id(), request, on_event)
            .await
    }
}

/// A call the helper never answered because the connection went: Busy, so
/// the daemon reconnects (restarting the helper) and retries what is safe to
/// retry. Whether the write failed or the reply never came, it is the same
/// event to the caller.
fn lost(request_id: &str, reason: &str) -> RpcError {
    RpcError::new(
        super::ErrorCode::Busy,
        format!("lost the connection to bangerd-root during the operation: {reason}"),
    )
    .with_request(request_id)
}

type Pending<P> = Arc<Mutex<Option<HashMap<String, oneshot::Sender<Result<P, RpcError>>>>>>;

/// A client with many calls in flight on one connection (used by the daemon's
/// link to the helper). Events are not supported: the helper sends none.
pub struct MuxClient<R, P> {
    writer: Mutex<tokio::net::unix::OwnedWriteHalf>,
    pending: Pending<P>,
    /// Set the moment the connection is known dead (the reader ended or a
    /// write failed), before anyone is told.
    closed: Arc<std::sync::atomic::AtomicBool>,
    pub server: ServerInfo,
    _types: std::marker::PhantomData<fn(R)>,
}

impl<R, P> MuxClient<R, P>
where
    R: Serialize,
    P: DeserializeOwned + Send + 'static,
{
    /// Connects and starts the reader task. `on_close` runs once when the
    /// connection ends, with the reason.
    pub async fn connect(
        path: &Path,
        on_close: impl FnOnce(String) + Send + 'static,
    ) -> Result<Arc<Self>, ClientError> {
        let (stream, server) = connect_and_greet(path).await?;
        let (mut rd, wr) = stream.into_split();
        let pending: Pending<P> = Arc::new(Mutex::new(Some(HashMap::new())));
        let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (p2, c2) = (pending.clone(), closed.clone());
        tokio::spawn(async move {
            let reason = loop {
                match read_frame::<_, Envelope<super::helper::NoEvent, P>>(&mut rd).await {
                    Ok(env) => {
                        // The helper streams no events: every frame is a Final.
                        let Response::Final(res) = env.body;
                        let tx = p2
                            .lock()
                            .await
                            .as_mut()
                            .and_then(|m| m.remove(&env.request_id));
                        if let Some(tx) = tx {
                            let _ = tx.send(res);
                        }
                    }
                    Err(FrameError::Closed) => {
                        break "the helper closed the connection".to_string()
                    }
                    Err(e) => break format!("connection to the helper failed: {e}"),
                }
            };
            c2.store(true, std::sync::atomic::Ordering::SeqCst);
            if let Some(map) = p2.lock().await.take() {
                for (request_id, tx) in map {
                    // Busy: the daemon reconnects (restarting the helper)
                    // and retries what is safe to retry.
                    let _ = tx.send(Err(lost(&request_id, &reason)));
                }
            }
            on_close(reason);
        });
        Ok(Arc::new(MuxClient {
            writer: Mutex::new(wr),
            pending,
            closed,
            server,
            _types: std::marker::PhantomData,
        }))
    }

    /// Sends a call and waits for its final answer.
    pub async fn call(&self, request_id: String, request: R) -> Result<P, RpcError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut guard = self.pending.lock().await;
            let Some(map) = guard.as_mut() else {
                return Err(lost(&request_id, "it was already closed"));
            };
            map.insert(request_id.clone(), tx);
        }
        let sent = {
            let mut w = self.writer.lock().await;
            write_frame(
                &mut *w,
                &ClientFrame::Call(Call {
                    request_id: request_id.clone(),
                    request,
                }),
            )
            .await
        };
        if let Err(e) = sent {
            self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
            if let Some(m) = self.pending.lock().await.as_mut() {
                m.remove(&request_id);
            }
            return Err(lost(&request_id, &format!("sending failed: {e}")));
        }
        rx.await
            .unwrap_or_else(|_| Err(lost(&request_id, "it closed before the answer")))
    }

    /// Whether the connection is still believed alive.
    pub fn is_open(&self) -> bool {
        !self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Explains who owns a socket we could not open.
fn owner_hint(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::geteuid().as_raw();
    // The socket or, when its directory is closed to us, the nearest ancestor
    // we can see.
    let owner = path
        .ancestors()
        .find_map(|p| p.metadata().ok())
        .map(|m| m.uid());
    match owner {
        Some(uid) if uid != me => format!(
            "it belongs to uid {uid} and serves only that user (you are uid {me}); run banger as uid {uid}, or use your own daemon (unset XDG_RUNTIME_DIR overrides pointing at theirs)"
        ),
        _ => "check the permissions of the socket and its directory".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client that stops reading holds at most [`OUT_BYTES`] of replies:
    /// past them the sender waits (and with it the guest stream behind it).
    #[tokio::test]
    async fn replies_for_a_client_that_stops_reading_are_bounded_by_bytes() {
        let (q, mut rx) = ByteQueue::new(3 << 20);
        let mb = || vec![0u8; 1 << 20];
        for _ in 0..3 {
            q.send(mb()).await.unwrap();
        }
        // Full: the fourth MiB waits...
        let waiting = tokio::time::timeout(Duration::from_millis(200), q.send(mb())).await;
        assert!(waiting.is_err(), "a fourth MiB was queued past the bound");
        // ...until one is written (its room comes back when dropped).
        let (frame, room) = rx.recv().await.unwrap();
        assert_eq!(frame.len(), 1 << 20);
        drop(room);
        tokio::time::timeout(Duration::from_secs(5), q.send(mb()))
            .await
            .expect("room again after a write")
            .unwrap();
        // A frame larger than the bound still goes, alone.
        let (q, mut rx) = ByteQueue::new(10);
        q.send(vec![1; 100]).await.unwrap();
        assert_eq!(rx.recv().await.unwrap().0.len(), 100);
        // A gone receiver is an error, not a hang.
        drop(rx);
        assert!(q.send(vec![1]).await.is_err());
    }

    /// A helper that greets and then dies: every call on its connection,
    /// however the loss shows (the write fails, the reader saw EOF first, or
    /// the answer never comes), is Busy, the code the daemon retries on.
    #[tokio::test]
    async fn a_call_on_a_dead_helper_connection_is_busy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("helper.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let _: Hello = read_frame(&mut s).await.unwrap();
            write_frame(
                &mut s,
                &HelloReply::Welcome {
                    protocol_version: super::super::PROTOCOL_VERSION,
                    server_version: "test".into(),
                    server_pid: std::process::id(),
                },
            )
            .await
            .unwrap();
        });
        let (tx, rx) = oneshot::channel();
        let client = MuxClient::<String, String>::connect(&path, move |reason| {
            let _ = tx.send(reason);
        })
        .await
        .unwrap();
        server.await.unwrap();
        let call = || client.call(super::super::new_request_id(), "x".repeat(1 << 20));
        // Racing the reader's EOF: the write fails or the answer never comes.
        let e = call().await.unwrap_err();
        assert_eq!(e.code, super::super::ErrorCode::Busy, "{e:?}");
        let reason = tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .unwrap()
            .unwrap();
        assert!(reason.contains("closed"), "{reason}");
        // After the reader saw it close.
        assert!(!client.is_open());
        let e = call().await.unwrap_err();
        assert_eq!(e.code, super::super::ErrorCode::Busy, "{e:?}");
    }
}
