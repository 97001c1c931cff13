//! `GET /v1/vms/{name}/terminal`: a login shell in a VM on a terminal,
//! over a WebSocket (the dashboard's xterm.js). The shell is the daemon's
//! own `VmExec` with a TTY and stdin, as `banger vm exec -t` runs it.
//!
//! Frames: binary from the client is the terminal's input; a text frame
//! `{"resize": {"rows": R, "cols": C}}` resizes it; binary to the client
//! is the terminal's output; the last text frame is `{"exit": CODE}` or
//! `{"error": {...}}`. A closed socket ends the shell (the call's events
//! close, as when a CLI client goes).

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;

use super::{wire, Api};
use crate::domain::views::TtySize;
use crate::domain::{Event, Input};
use crate::protocol::cli::{Reply, Request};
use crate::protocol::RpcError;

/// Largest frame the client may send (a paste).
const MAX_FRAME: usize = 1 << 20;

/// The shell: bash when the image has it.
const SHELL: &str = "if command -v bash >/dev/null 2>&1; then exec bash -l; else exec sh -l; fi";

#[derive(serde::Deserialize)]
pub struct Size {
    rows: Option<u16>,
    cols: Option<u16>,
}

#[derive(serde::Deserialize)]
struct Control {
    resize: Option<Resize>,
}

#[derive(serde::Deserialize)]
struct Resize {
    rows: u16,
    cols: u16,
}

fn size(rows: Option<u16>, cols: Option<u16>) -> TtySize {
    TtySize {
        rows: rows.unwrap_or(30).clamp(2, 500),
        cols: cols.unwrap_or(100).clamp(10, 1000),
    }
}

pub async fn terminal(
    ws: WebSocketUpgrade,
    State(api): State<Api>,
    Path(name): Path<String>,
    Query(q): Query<Size>,
) -> Response {
    let tty = size(q.rows, q.cols);
    ws.max_message_size(MAX_FRAME)
        .max_frame_size(MAX_FRAME)
        .on_upgrade(move |socket| session(api, name, tty, socket))
}

async fn session(api: Api, name: String, tty: TtySize, socket: WebSocket) {
    let req = Request::VmExec {
        name,
        argv: vec!["sh".into(), "-c".into(), SHELL.into()],
        cwd: None,
        env: vec![("TERM".into(), "xterm-256color".into())],
        tty: Some(tty),
        stdin: true,
        auto_prepare: false,
    };
    let mut call = api.start(req);
    let (mut to_client, mut from_client) = socket.split();
    let mut client_open = true;
    loop {
        tokio::select! {
            e = call.events.recv() => match e {
                Some(Event::Stdout(d)) | Some(Event::Stderr(d)) => {
                    if to_client.send(Message::Binary(d.into())).await.is_err() {
                        // The client went: dropping the call's events ends it.
                        return;
                    }
                }
                Some(_) => {}
                None => break,
            },
            m = from_client.next(), if client_open => match m {
                Some(Ok(Message::Binary(b))) => {
                    if call.inputs.send(Input::Stdin(b.to_vec())).await.is_err() {
                        client_open = false;
                    }
                }
                Some(Ok(Message::Text(t))) => {
                    if let Ok(Control { resize: Some(r) }) = serde_json::from_str(t.as_str()) {
                        let s = size(Some(r.rows), Some(r.cols));
                        let _ = call.inputs.send(Input::Resize { rows: s.rows, cols: s.cols }).await;
                    }
                }
                Some(Ok(_)) => {}
                // Closed or broken: the shell goes with it.
                Some(Err(_)) | None => return,
            },
        }
    }
    let res = call
        .done
        .await
        .unwrap_or_else(|e| Err(RpcError::failed(format!("the call ended: {e}"))));
    let last = match res {
        Ok(Reply::Exit { code, message }) => json!({"exit": code, "message": message}),
        Ok(other) => json!({"result": wire::reply(&other)}),
        Err(e) => wire::error(&e),
    };
    let _ = to_client.send(Message::Text(last.to_string().into())).await;
    let _ = to_client.send(Message::Close(None)).await;
}
