//! The HTTP/JSON API (`api.sock` next to the CLI's socket, 0600, the same
//! owner check): every route becomes one of the daemon's own `Request`s,
//! handled by the same `DaemonHandler` the CLI's socket uses — no
//! operation is implemented twice. Streamed operations (`run`, `exec`,
//! creates, pulls) answer NDJSON when asked (`Accept:
//! application/x-ndjson`): one event per line, then `{"result": ...}` or
//! `{"error": ...}`; otherwise the final JSON alone. `GET /v1/events` is a
//! server-sent event stream of VM state changes. The routes are listed
//! once ([`ROUTES`]) and `docs/api/openapi.json` is tested against them.

mod files;
mod terminal;
mod web;
mod wire;

pub use web::Web;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::handler::DaemonHandler;
use crate::domain::{Event, Input};
use crate::protocol::cli::{Reply, Request};
use crate::protocol::conn::{Handler, Peer};
use crate::protocol::{Call, RpcError};

/// Largest request body (a file written into a VM, a command's stdin).
pub const MAX_BODY: usize = 64 << 20;

/// Every route: (method, path as in the OpenAPI description).
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/v1/status"),
    ("get", "/v1/vms"),
    ("post", "/v1/vms"),
    ("get", "/v1/vms/{name}"),
    ("delete", "/v1/vms/{name}"),
    ("post", "/v1/vms/{name}/start"),
    ("post", "/v1/vms/{name}/stop"),
    ("post", "/v1/vms/{name}/restart"),
    ("post", "/v1/vms/{name}/exec"),
    ("get", "/v1/vms/{name}/files"),
    ("put", "/v1/vms/{name}/files"),
    ("post", "/v1/vms/{name}/workspace"),
    ("get", "/v1/vms/{name}/patch"),
    ("post", "/v1/vms/{name}/snapshots"),
    ("get", "/v1/vms/{name}/egress"),
    ("post", "/v1/run"),
    ("get", "/v1/snapshots"),
    ("delete", "/v1/snapshots/{name}"),
    ("get", "/v1/images"),
    ("get", "/v1/kernels"),
    ("get", "/v1/events"),
    ("get", "/v1/vms/{name}/log"),
    ("get", "/v1/defaults"),
    ("post", "/v1/images"),
    ("get", "/v1/vms/{name}/terminal"),
];

#[derive(Clone)]
struct Api {
    h: DaemonHandler,
    peer: Peer,
    calls: Arc<AtomicU64>,
}

/// A call in flight: its events and, at the end, its result.
struct Running {
    events: mpsc::Receiver<Event>,
    done: tokio::task::JoinHandle<Result<Reply, RpcError>>,
    inputs: mpsc::Sender<Input>,
}

impl Api {
    /// Calls made as the daemon's owner (who alone reaches the API).
    fn new(h: DaemonHandler) -> Api {
        Api {
            h,
            peer: Peer {
                uid: nix::unistd::geteuid().as_raw(),
                gid: nix::unistd::getegid().as_raw(),
                pid: None,
            },
            calls: Arc::default(),
        }
    }

    fn start(&self, request: Request) -> Running {
        let (ev_tx, events) = mpsc::channel(crate::protocol::conn::EVENT_QUEUE);
        let (inputs, in_rx) = mpsc::channel(crate::protocol::conn::INPUT_QUEUE);
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        let call = Call {
            request_id: format!("api-{}-{n}", std::process::id()),
            request,
        };
        let (h, peer) = (self.h.clone(), self.peer);
        let done = tokio::spawn(async move { h.handle(peer, call, ev_tx, in_rx).await });
        Running {
            events,
            done,
            inputs,
        }
    }

    /// Runs a request to its end, `stdin` fed to its command; events are
    /// dropped but for the command's stdout (its first `keep` bytes; past
    /// them the call goes on, `truncated` says so) and its stderr's last
    /// 4 KiB.
    async fn collect(&self, request: Request, stdin: Option<Vec<u8>>, keep: usize) -> Collected {
        let mut r = self.start(request);
        if let Some(data) = stdin {
            let tx = r.inputs.clone();
            tokio::spawn(feed(tx, data));
        }
        let mut c = Collected::default();
        let mut err = crate::guest::exec::Tail::new(4 << 10);
        while let Some(e) = r.events.recv().await {
            match e {
                Event::Stdout(d) if c.stdout.len() + d.len() <= keep => {
                    c.stdout.extend_from_slice(&d)
                }
                Event::Stdout(_) => c.truncated = true,
                Event::Stderr(d) => err.push(&d),
                _ => {}
            }
        }
        c.stderr = String::from_utf8_lossy(&err.0).into_owned();
        c.result = r
            .done
            .await
            .unwrap_or_else(|e| Err(RpcError::failed(format!("the call ended: {e}"))));
        c
    }

    async fn finish(&self, request: Request) -> Result<Reply, RpcError> {
        self.collect(request, None, 0).await.result
    }
}

/// What [`Api::collect`] kept of a call.
struct Collected {
    result: Result<Reply, RpcError>,
    stdout: Vec<u8>,
    truncated: bool,
    stderr: String,
}

impl Default for Collected {
    fn default() -> Self {
        Collected {
            result: Ok(Reply::Done),
            stdout: vec![],
            truncated: false,
            stderr: String::new(),
        }
    }
}

/// Feeds a command's whole stdin, then its end.
async fn feed(tx: mpsc::Sender<Input>, data: Vec<u8>) {
    for chunk in data.chunks(256 << 10) {
        if tx.send(Input::Stdin(chunk.to_vec())).await.is_err() {
            return;
        }
    }
    let _ = tx.send(Input::StdinEof).await;
}

fn json_response(status: u16, v: &Value) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, axum::Json(v.clone())).into_response()
}

fn reply_response(r: Result<Reply, RpcError>) -> Response {
    match r {
        Ok(reply) => json_response(200, &wire::reply(&reply)),
        Err(e) => json_response(wire::status(e.code), &wire::error(&e)),
    }
}

fn wants_stream(h: &HeaderMap) -> bool {
    h.get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/x-ndjson"))
}

/// Answers a call: NDJSON of its events and result when the client asked
/// for a stream, else its result alone. `stdin` feeds the command;
/// `patch_saved` answers a run's patch hand-over (the daemon writes it).
async fn answer(
    api: &Api,
    headers: &HeaderMap,
    request: Request,
    stdin: Option<Vec<u8>>,
) -> Response {
    let stream = wants_stream(headers);
    let mut r = api.start(request);
    if let Some(data) = stdin {
        tokio::spawn(feed(r.inputs.clone(), data));
    }
    if !stream {
        let inputs = r.inputs.clone();
        while let Some(e) = r.events.recv().await {
            if e == Event::PatchDone {
                let _ = inputs.send(patch_saved()).await;
            }
        }
        let res = r
            .done
            .await
            .unwrap_or_else(|e| Err(RpcError::failed(format!("the call ended: {e}"))));
        return reply_response(res);
    }
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::spawn(async move {
        let line = |v: Value| Ok(Bytes::from(format!("{v}\n")));
        while let Some(e) = r.events.recv().await {
            if e == Event::PatchDone {
                let _ = r.inputs.send(patch_saved()).await;
            }
            // A client gone: the call's events close and it is interrupted.
            if tx.send(line(wire::event(&e))).await.is_err() {
                return;
            }
        }
        let res = r
            .done
            .await
            .unwrap_or_else(|e| Err(RpcError::failed(format!("the call ended: {e}"))));
        let last = match res {
            Ok(reply) => json!({"result": wire::reply(&reply)}),
            Err(e) => wire::error(&e),
        };
        let _ = tx.send(line(last)).await;
    });
    let body = Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// The API takes a run's patch from the stream; the daemon writes its own
/// copy where `export_patch` said.
fn patch_saved() -> Input {
    Input::PatchSaved {
        error: Some("the HTTP API streams the patch".into()),
    }
}

fn bad(e: RpcError) -> Response {
    json_response(wire::status(e.code), &wire::error(&e))
}

fn body_json<T: serde::de::DeserializeOwned>(b: &Bytes) -> Result<T, RpcError> {
    if b.is_empty() {
        return serde_json::from_str("{}")
            .map_err(|e| RpcError::bad_request(format!("the body: {e}")));
    }
    serde_json::from_slice(b).map_err(|e| RpcError::bad_request(format!("the body: {e}")))
}

async fn status(State(api): State<Api>) -> Response {
    reply_response(api.finish(Request::Status).await)
}

async fn vms(State(api): State<Api>) -> Response {
    reply_response(api.finish(Request::VmList).await)
}

async fn vm(State(api): State<Api>, Path(name): Path<String>) -> Response {
    reply_response(api.finish(Request::VmShow { name }).await)
}

async fn create(State(api): State<Api>, headers: HeaderMap, body: Bytes) -> Response {
    let spec = match body_json::<wire::CreateBody>(&body).and_then(|b| b.spec(&api.h.ctx)) {
        Ok(s) => s,
        Err(e) => return bad(e),
    };
    answer(&api, &headers, Request::VmCreate(spec), None).await
}

async fn remove(State(api): State<Api>, Path(name): Path<String>) -> Response {
    reply_response(api.finish(Request::VmDelete { name, id: None }).await)
}

async fn start_vm(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    answer(&api, &headers, Request::VmStart { name }, None).await
}

async fn stop_vm(State(api): State<Api>, headers: HeaderMap, Path(name): Path<String>) -> Response {
    answer(&api, &headers, Request::VmStop { name }, None).await
}

async fn restart_vm(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    answer(&api, &headers, Request::VmRestart { name }, None).await
}

async fn exec(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let b: wire::ExecBody = match body_json(&body) {
        Ok(b) => b,
        Err(e) => return bad(e),
    };
    let stdin = match b.stdin_b64.as_deref().map(wire::unb64).transpose() {
        Ok(s) => s,
        Err(e) => return bad(e),
    };
    let req = Request::VmExec {
        name,
        argv: b.argv,
        cwd: b.cwd,
        env: b.env.into_iter().collect(),
        tty: None,
        stdin: stdin.is_some(),
        auto_prepare: false,
    };
    answer(&api, &headers, req, stdin).await
}

async fn run(State(api): State<Api>, headers: HeaderMap, body: Bytes) -> Response {
    let (spec, stdin) = match body_json::<wire::RunBody>(&body).and_then(|b| {
        let stdin = b.stdin_b64.as_deref().map(wire::unb64).transpose()?;
        Ok((b.spec(&api.h.ctx)?, stdin))
    }) {
        Ok(x) => x,
        Err(e) => return bad(e),
    };
    answer(&api, &headers, Request::VmRun(Box::new(spec)), stdin).await
}

async fn workspace(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let spec = match body_json::<wire::WorkspaceBody>(&body).and_then(|b| b.spec()) {
        Ok(s) => s,
        Err(e) => return bad(e),
    };
    answer(
        &api,
        &headers,
        Request::WorkspacePrepare { name, spec },
        None,
    )
    .await
}

#[derive(serde::Deserialize)]
struct PatchQuery {
    base_commit: Option<String>,
}

/// The guest's workspace changes as a patch (`git apply`), bounded.
async fn patch(
    State(api): State<Api>,
    Path(name): Path<String>,
    Query(q): Query<PatchQuery>,
) -> Response {
    let req = Request::WorkspaceExport {
        name,
        base_commit: q.base_commit,
    };
    let c = api.collect(req, None, files::MAX_FILE).await;
    match c.result {
        Ok(_) if c.truncated => bad(RpcError::failed(format!(
            "the patch is larger than {} MiB; export it with the CLI (banger vm workspace export)",
            files::MAX_FILE >> 20
        ))),
        Ok(_) => ([("content-type", "text/x-diff")], c.stdout).into_response(),
        Err(e) => bad(e),
    }
}

async fn snapshot(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let b: wire::SnapshotBody = match body_json(&body) {
        Ok(b) => b,
        Err(e) => return bad(e),
    };
    let req = Request::VmSnapshot {
        name,
        snapshot: b.name,
        stop: b.stop,
        auto: false,
        scope: None,
    };
    answer(&api, &headers, req, None).await
}

#[derive(serde::Deserialize)]
struct LogQuery {
    bytes: Option<u64>,
}

/// The last bytes of a VM's serial console (default 16 KiB, at most
/// 256 KiB), as text, cut at a character boundary.
async fn log(
    State(api): State<Api>,
    Path(name): Path<String>,
    Query(q): Query<LogQuery>,
) -> Response {
    let serial = match api.finish(Request::VmLogs { name }).await {
        Ok(Reply::Logs { serial, .. }) => serial,
        Ok(_) => return bad(RpcError::failed("the daemon answered no log")),
        Err(e) => return bad(e),
    };
    let want = q.bytes.unwrap_or(16 << 10).min(256 << 10) as usize;
    let mut start = serial.len().saturating_sub(want);
    while !serial.is_char_boundary(start) {
        start += 1;
    }
    (
        [("content-type", "text/plain; charset=utf-8")],
        serial[start..].to_string(),
    )
        .into_response()
}

/// What a create without options gets (the dashboard shows it).
async fn defaults(State(api): State<Api>) -> Response {
    let c = &api.h.ctx.config;
    let image = crate::ops::images::default_image(&api.h.ctx).ok();
    json_response(
        200,
        &json!({
            "vcpu": c.vm_defaults.vcpu.value,
            "memory_mib": c.vm_defaults.memory_mib.value,
            "disk_bytes": c.vm_defaults.disk_bytes.value,
            "vmm": c.vmm,
            "image": image,
        }),
    )
}

async fn egress(State(api): State<Api>, Path(name): Path<String>) -> Response {
    reply_response(api.finish(Request::VmEgress { name }).await)
}

async fn snapshots(State(api): State<Api>) -> Response {
    reply_response(api.finish(Request::SnapshotList).await)
}

async fn snapshot_delete(State(api): State<Api>, Path(name): Path<String>) -> Response {
    reply_response(api.finish(Request::SnapshotDelete { name }).await)
}

async fn images(State(api): State<Api>) -> Response {
    reply_response(api.finish(Request::ImageList).await)
}

/// An image pull, its stages streamed when asked (like the CLI's).
async fn pull(State(api): State<Api>, headers: HeaderMap, body: Bytes) -> Response {
    let b: wire::PullBody = match body_json(&body) {
        Ok(b) => b,
        Err(e) => return bad(e),
    };
    let req = Request::ImagePull {
        reference: b.reference,
        name: b.name,
        insecure: b.insecure,
    };
    answer(&api, &headers, req, None).await
}

async fn kernels(State(api): State<Api>) -> Response {
    reply_response(api.finish(Request::KernelList).await)
}

/// Server-sent events: each VM's state as it changes (`event: vm`), from
/// the store (read again only after a VM was written), and every watched
/// call's stages and end, whoever made it (`event: progress`).
async fn events(State(api): State<Api>) -> Response {
    let ctx = api.h.ctx.clone();
    let mut notes = api.h.activity.subscribe();
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::spawn(async move {
        let mut seen: std::collections::HashMap<String, (String, Option<String>)> =
            Default::default();
        let mut generation = None;
        let _ = tx
            .send(Ok(Bytes::from_static(b": banger vm events\n\n")))
            .await;
        loop {
            let g = ctx.store.vm_generation();
            if generation != Some(g) {
                generation = Some(g);
                let vms = ctx.store.list_vms().unwrap_or_default();
                let mut now = std::collections::HashMap::new();
                for v in &vms {
                    now.insert(v.name.clone(), (v.state.as_str().to_string(), v.ip.clone()));
                }
                let mut lines = Vec::new();
                for (name, (state, ip)) in &now {
                    if seen.get(name) != Some(&(state.clone(), ip.clone())) {
                        lines.push(json!({"vm": name, "state": state, "ip": ip}));
                    }
                }
                for name in seen.keys().filter(|n| !now.contains_key(*n)) {
                    lines.push(json!({"vm": name, "state": "deleted", "ip": null}));
                }
                seen = now;
                for l in lines {
                    if tx
                        .send(Ok(Bytes::from(format!("event: vm\ndata: {l}\n\n"))))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
            let sleep = tokio::time::sleep(std::time::Duration::from_millis(250));
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = &mut sleep => break,
                    _ = tx.closed() => return,
                    n = notes.recv() => match n {
                        Ok(n) => {
                            let line = format!("event: progress\ndata: {}\n\n", json!(n));
                            if tx.send(Ok(Bytes::from(line))).await.is_err() {
                                return;
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                            sleep.as_mut().await;
                            break;
                        }
                    },
                }
            }
        }
    });
    let body = Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-store")
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn router(api: Api) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/vms", get(vms).post(create))
        .route("/v1/vms/{name}", get(vm).delete(remove))
        .route("/v1/vms/{name}/start", post(start_vm))
        .route("/v1/vms/{name}/stop", post(stop_vm))
        .route("/v1/vms/{name}/restart", post(restart_vm))
        .route("/v1/vms/{name}/exec", post(exec))
        .route("/v1/vms/{name}/files", get(files::read).put(files::write))
        .route("/v1/vms/{name}/workspace", post(workspace))
        .route("/v1/vms/{name}/patch", get(patch))
        .route("/v1/vms/{name}/snapshots", post(snapshot))
        .route("/v1/vms/{name}/egress", get(egress))
        .route("/v1/run", post(run))
        .route("/v1/snapshots", get(snapshots))
        .route("/v1/snapshots/{name}", delete(snapshot_delete))
        .route("/v1/images", get(images).post(pull))
        .route("/v1/kernels", get(kernels))
        .route("/v1/events", get(events))
        .route("/v1/vms/{name}/log", get(log))
        .route("/v1/defaults", get(defaults))
        .route("/v1/vms/{name}/terminal", get(terminal::terminal))
        .fallback(|| async {
            bad(RpcError::new(
                crate::protocol::ErrorCode::NotFound,
                "no such route; see docs/api/openapi.json",
            ))
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(api)
}

/// The API socket's listener: a peer that is neither the owner nor root
/// is answered 403 and closed before a byte of its request is read.
struct OwnerOnly {
    inner: tokio::net::UnixListener,
    owner: u32,
}

impl axum::serve::Listener for OwnerOnly {
    type Io = tokio::net::UnixStream;
    type Addr = tokio::net::unix::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        use tokio::io::AsyncWriteExt;
        loop {
            let (mut s, a) = match self.inner.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("API accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let uid = s.peer_cred().map(|c| c.uid()).ok();
            if uid.is_some_and(|u| u == self.owner || u == 0) {
                return (s, a);
            }
            tracing::warn!(?uid, "API: refused a connection of another uid");
            tokio::spawn(async move {
                let body = r#"{"error":{"code":"unauthorized","message":"this banger API serves its owner only"}}"#;
                let msg = format!(
                    "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(msg.as_bytes()).await;
                let _ = s.shutdown().await;
                // Whatever it sent is read and dropped (bounded), so the
                // close is not a reset that could lose the answer.
                let mut sink = [0u8; 4096];
                let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
                    let mut n = 0;
                    while n < 64 << 10 {
                        match tokio::io::AsyncReadExt::read(&mut s, &mut sink).await {
                            Ok(0) | Err(_) => break,
                            Ok(k) => n += k,
                        }
                    }
                })
                .await;
            });
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// Serves the API on `listener` until the task is aborted.
pub async fn serve(listener: tokio::net::UnixListener, owner: u32, h: DaemonHandler) {
    let l = OwnerOnly {
        inner: listener,
        owner,
    };
    if let Err(e) = axum::serve(l, router(Api::new(h))).await {
        tracing::warn!("the HTTP API stopped: {e}");
    }
}

#[cfg(test)]
mod tests {
    /// The OpenAPI description names every route, and no other.
    #[test]
    fn the_openapi_description_matches_the_routes() {
        let doc: serde_json::Value =
            serde_json::from_str(include_str!("../../../docs/api/openapi.json")).unwrap();
        let mut described: Vec<(String, String)> = doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, ops)| {
                ops.as_object()
                    .unwrap()
                    .keys()
                    .filter(|k| ["get", "put", "post", "delete"].contains(&k.as_str()))
                    .map(move |m| (m.clone(), path.clone()))
            })
            .collect();
        let mut routes: Vec<(String, String)> = super::ROUTES
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        described.sort();
        routes.sort();
        assert_eq!(described, routes);
    }
}
