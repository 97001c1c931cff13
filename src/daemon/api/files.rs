//! Files in a VM over the API: read, write, list. Each is a command the
//! guest's agent runs (`cat`, `sh -c 'cat > "$1"'`, `stat`) with the path as
//! one argv element: the path is the guest's, resolved by the guest, and
//! the host never opens anything for it. Sizes are bounded both ways; what
//! the guest answers is data (a listing is parsed line by line, names kept
//! as lossy text).

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{bad, json_response, Api};
use crate::protocol::cli::{Reply, Request};
use crate::protocol::RpcError;

/// Largest file read from a VM (and patch), in bytes.
pub const MAX_FILE: usize = 64 << 20;
/// Most entries a listing gives.
pub const MAX_ENTRIES: usize = 10_000;

#[derive(serde::Deserialize)]
pub struct FileQuery {
    path: String,
    #[serde(default)]
    list: bool,
}

fn guest_path(p: &str) -> Result<(), RpcError> {
    if !p.starts_with('/') || p.contains('\0') || p.len() > 4096 {
        return Err(RpcError::bad_request(format!(
            "path {p:?} must be an absolute path in the guest (at most 4096 bytes, no NUL)"
        )));
    }
    Ok(())
}

fn exec(name: String, argv: &[&str], stdin: bool) -> Request {
    Request::VmExec {
        name,
        argv: argv.iter().map(|s| s.to_string()).collect(),
        cwd: Some("/".into()),
        env: vec![],
        tty: None,
        stdin,
        auto_prepare: false,
    }
}

/// The command's exit: `Ok` for 0, else an error carrying its stderr.
fn exited(c: &super::Collected, what: &str) -> Result<(), RpcError> {
    match &c.result {
        Ok(Reply::Exit { code: 0, .. }) => Ok(()),
        Ok(Reply::Exit { message, .. }) => {
            let why = message
                .clone()
                .unwrap_or_else(|| c.stderr.trim().to_string());
            let code = if why.contains("No such file") || why.contains("can't open") {
                crate::protocol::ErrorCode::NotFound
            } else {
                crate::protocol::ErrorCode::BadRequest
            };
            Err(RpcError::new(
                code,
                format!(
                    "{what} failed in the guest (exit {}): {why}",
                    code_of(&c.result)
                ),
            ))
        }
        Ok(other) => Err(RpcError::failed(format!("unexpected answer {other:?}"))),
        Err(e) => Err(e.clone()),
    }
}

fn code_of(r: &Result<Reply, RpcError>) -> i32 {
    match r {
        Ok(Reply::Exit { code, .. }) => *code,
        _ => -1,
    }
}

/// `GET /v1/vms/{name}/files?path=P`: the file's bytes;
/// `&list=true`: the directory's entries.
pub async fn read(
    State(api): State<Api>,
    Path(name): Path<String>,
    Query(q): Query<FileQuery>,
) -> Response {
    if let Err(e) = guest_path(&q.path) {
        return bad(e);
    }
    if q.list {
        return list(&api, name, &q.path).await;
    }
    let c = api
        .collect(exec(name, &["cat", "--", &q.path], false), None, MAX_FILE)
        .await;
    if let Err(e) = exited(&c, "reading the file") {
        return bad(e);
    }
    if c.truncated {
        return json_response(
            413,
            &json!({"error": {"code": "bad_request", "message": format!("the file is larger than {} MiB", MAX_FILE >> 20)}}),
        );
    }
    ([("content-type", "application/octet-stream")], c.stdout).into_response()
}

const LIST: &str = r#"cd -- "$1" || exit 2
for f in .[!.]* ..?* *; do
  if [ -e "$f" ] || [ -L "$f" ]; then stat -c '%f %s %n' -- "$f"; fi
done"#;

async fn list(api: &Api, name: String, path: &str) -> Response {
    let c = api
        .collect(
            exec(name, &["sh", "-c", LIST, "sh", path], false),
            None,
            4 << 20,
        )
        .await;
    if let Err(e) = exited(&c, "listing the directory") {
        return bad(e);
    }
    let text = String::from_utf8_lossy(&c.stdout);
    let entries: Vec<serde_json::Value> = text
        .lines()
        .take(MAX_ENTRIES)
        .filter_map(|l| {
            let mut it = l.splitn(3, ' ');
            let mode = u32::from_str_radix(it.next()?, 16).ok()?;
            let size: u64 = it.next()?.parse().ok()?;
            let name = it.next()?;
            let kind = match mode & 0o170000 {
                0o040000 => "dir",
                0o100000 => "file",
                0o120000 => "symlink",
                _ => "other",
            };
            Some(json!({"name": name, "type": kind, "size": size}))
        })
        .collect();
    json_response(
        200,
        &json!({"path": path, "entries": entries, "truncated": c.truncated}),
    )
}

/// `PUT /v1/vms/{name}/files?path=P`: the body becomes the file (made or
/// replaced, as root in the guest).
pub async fn write(
    State(api): State<Api>,
    Path(name): Path<String>,
    Query(q): Query<FileQuery>,
    body: Bytes,
) -> Response {
    if let Err(e) = guest_path(&q.path) {
        return bad(e);
    }
    let n = body.len();
    let req = exec(name, &["sh", "-c", "cat > \"$1\"", "sh", &q.path], true);
    let c = api.collect(req, Some(body.to_vec()), 0).await;
    if let Err(e) = exited(&c, "writing the file") {
        return bad(e);
    }
    json_response(200, &json!({"path": q.path, "bytes": n}))
}
