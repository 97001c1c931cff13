//! `banger mcp`: a Model Context Protocol server on stdio (JSON-RPC 2.0,
//! one message per line) whose tools are calls of banger's HTTP API
//! (`api.sock`): an agent can create a VM, ship a repository into it, run
//! commands, read, write and list files, take the patch of its edits and
//! delete it — `vm run --rm ./repo --export-patch` step by step — or do all
//! of it in one `run`. Output is bounded (the last [`MAX_TEXT`] bytes of
//! each stream, with a note); with a `progressToken`, a long call sends
//! `notifications/progress` as its stages pass.

use std::io::Write;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;

use super::render::CliError;
use super::Ctx;

/// The protocol revision this server speaks.
pub const PROTOCOL: &str = "2025-06-18";
/// Bytes of one output stream a tool result carries at most.
pub const MAX_TEXT: usize = 64 << 10;
/// Largest message read from the client.
pub const MAX_LINE: usize = 16 << 20;

/// The tools: name, description, input schema.
pub fn tools() -> Value {
    let vm = json!({"type": "string", "description": "the VM's name"});
    let argv = json!({"type": "array", "items": {"type": "string"}, "description": "the command as an argv (no shell; use [\"sh\", \"-c\", \"...\"] for one)"});
    json!([
        {"name": "list_vms", "description": "The VMs there are, with state and address.",
         "inputSchema": {"type": "object", "properties": {}}},
        {"name": "create_vm", "description": "Create and boot a throwaway Linux VM (running when this returns). Unset fields come from banger's config.",
         "inputSchema": {"type": "object", "properties": {
            "name": {"type": "string"}, "image": {"type": "string"},
            "nat": {"type": "boolean", "description": "outbound network access"},
            "allow_hosts": {"type": "array", "items": {"type": "string"}, "description": "deny egress but these host names"}}}},
        {"name": "prepare_workspace", "description": "Copy a git repository of this host (its tracked files and working tree) into the VM at /root/repo; commands then run there.",
         "inputSchema": {"type": "object", "required": ["vm", "path"], "properties": {"vm": vm, "path": {"type": "string", "description": "absolute path of the repository"}}}},
        {"name": "exec", "description": "Run a command in a VM; its exit code, stdout and stderr (the last 64 KiB of each).",
         "inputSchema": {"type": "object", "required": ["vm", "command"], "properties": {"vm": vm, "command": argv, "stdin": {"type": "string"}, "cwd": {"type": "string"}}}},
        {"name": "read_file", "description": "A file of the VM, as text (at most 1 MiB shown).",
         "inputSchema": {"type": "object", "required": ["vm", "path"], "properties": {"vm": vm, "path": {"type": "string"}}}},
        {"name": "write_file", "description": "Write text to a file of the VM (made or replaced).",
         "inputSchema": {"type": "object", "required": ["vm", "path", "content"], "properties": {"vm": vm, "path": {"type": "string"}, "content": {"type": "string"}}}},
        {"name": "list_files", "description": "A directory of the VM: names, types and sizes.",
         "inputSchema": {"type": "object", "required": ["vm", "path"], "properties": {"vm": vm, "path": {"type": "string"}}}},
        {"name": "export_patch", "description": "The VM's changes to its workspace as a patch for `git apply`.",
         "inputSchema": {"type": "object", "required": ["vm"], "properties": {"vm": vm}}},
        {"name": "delete_vm", "description": "Delete a VM and everything of it.",
         "inputSchema": {"type": "object", "required": ["vm"], "properties": {"vm": vm}}},
        {"name": "run", "description": "Run a command in a fresh VM that is deleted afterwards (optionally with a repository in /root/repo); its exit code and output.",
         "inputSchema": {"type": "object", "required": ["command"], "properties": {"command": argv, "repo": {"type": "string", "description": "absolute path of a git repository to ship"}, "stdin": {"type": "string"}, "image": {"type": "string"}, "nat": {"type": "boolean"}}}}
    ])
}

/// One HTTP call on the API socket: status and body; `on_line` gets each
/// NDJSON line of a streamed answer.
async fn http(
    socket: &std::path::Path,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
    mut on_line: Option<&mut (dyn FnMut(&Value) + Send)>,
) -> Result<(u16, Vec<u8>), String> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| format!("connecting to {}: {e}", socket.display()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "banger");
    if on_line.is_some() {
        req = req.header("accept", "application/x-ndjson");
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut all = Vec::new();
    let mut pending = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        let Some(d) = frame.data_ref() else { continue };
        match on_line.as_mut() {
            Some(f) => {
                pending.extend_from_slice(d);
                while let Some(i) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=i).collect();
                    if let Ok(v) = serde_json::from_slice::<Value>(&line) {
                        f(&v);
                    }
                }
            }
            None => all.extend_from_slice(d),
        }
    }
    Ok((status, all))
}

/// The last `MAX_TEXT` bytes of a stream, as text.
fn tail(d: &[u8]) -> String {
    let cut = d.len().saturating_sub(MAX_TEXT);
    let mut s = String::from_utf8_lossy(&d[cut..]).into_owned();
    if cut > 0 {
        s = format!("[... {cut} earlier bytes not shown ...]\n{s}");
    }
    s
}

fn str_arg<'a>(a: &'a Value, k: &str) -> Result<&'a str, String> {
    a[k].as_str()
        .ok_or_else(|| format!("`{k}` (a string) is required"))
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
}

fn q(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_./~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The text of an API error body, or the body.
fn error_text(status: u16, body: &[u8]) -> String {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) if v["error"].is_object() => format!(
            "{}: {}",
            v["error"]["code"].as_str().unwrap_or("error"),
            v["error"]["message"].as_str().unwrap_or("")
        ),
        _ => format!("HTTP {status}: {}", String::from_utf8_lossy(body)),
    }
}

/// A streamed call (exec, run, create, workspace): stdout, stderr and the
/// result; `progress` is told each stage.
async fn streamed(
    socket: &std::path::Path,
    method: &str,
    path: &str,
    body: Value,
    progress: &mut (dyn FnMut(String) + Send),
) -> Result<(Value, Vec<u8>, Vec<u8>), String> {
    use base64::Engine;
    let (mut out, mut err, mut result, mut error) = (Vec::new(), Vec::new(), Value::Null, None);
    let mut on = |v: &Value| {
        let data = || {
            base64::engine::general_purpose::STANDARD
                .decode(v["data_b64"].as_str().unwrap_or(""))
                .unwrap_or_default()
        };
        match v["event"].as_str() {
            Some("stdout") => out.extend(data()),
            Some("stderr") => err.extend(data()),
            Some("stage") => progress(format!(
                "{}: {}",
                v["stage"].as_str().unwrap_or(""),
                v["detail"].as_str().unwrap_or("")
            )),
            _ if v.get("result").is_some() => result = v["result"].clone(),
            _ if v["error"].is_object() => error = Some(error_text(200, v.to_string().as_bytes())),
            _ => {}
        }
    };
    let (status, body) = http(
        socket,
        method,
        path,
        Some(body.to_string().into_bytes()),
        Some(&mut on),
    )
    .await?;
    if status != 200 {
        return Err(error_text(status, &body));
    }
    if let Some(e) = error {
        return Err(e);
    }
    Ok((result, out, err))
}

fn exit_text(result: &Value, out: &[u8], err: &[u8]) -> String {
    let mut s = format!("exit code {}\n", result["code"]);
    if let Some(m) = result["message"].as_str() {
        s += &format!("({m})\n");
    }
    s + &format!(
        "--- stdout ---\n{}\n--- stderr ---\n{}",
        tail(out),
        tail(err)
    )
}

/// Runs one tool: its text, or the error text (an `isError` result).
pub async fn call_tool(
    socket: &std::path::Path,
    name: &str,
    a: &Value,
    progress: &mut (dyn FnMut(String) + Send),
) -> Result<String, String> {
    let json_of = |(status, body): (u16, Vec<u8>)| -> Result<String, String> {
        if status != 200 {
            return Err(error_text(status, &body));
        }
        Ok(String::from_utf8_lossy(&body).into_owned())
    };
    match name {
        "list_vms" => json_of(http(socket, "GET", "/v1/vms", None, None).await?),
        "create_vm" => {
            let mut body = json!({"nat": a["nat"].as_bool().unwrap_or(false)});
            for k in ["name", "image"] {
                if let Some(v) = a[k].as_str() {
                    body[k] = json!(v);
                }
            }
            if let Some(h) = a["allow_hosts"].as_array() {
                body["egress"] = json!({"hosts": h, "nets": []});
            }
            let (vm, _, _) = streamed(socket, "POST", "/v1/vms", body, progress).await?;
            Ok(format!("VM {} is running at {}", vm["name"], vm["ip"]))
        }
        "prepare_workspace" => {
            let vm = str_arg(a, "vm")?;
            let body = json!({"path": str_arg(a, "path")?});
            let (w, _, _) = streamed(
                socket,
                "POST",
                &format!("/v1/vms/{}/workspace", q(vm)),
                body,
                progress,
            )
            .await?;
            Ok(format!("workspace ready in {vm}: {w}"))
        }
        "exec" => {
            let vm = str_arg(a, "vm")?;
            let mut body = json!({"argv": a["command"]});
            if let Some(s) = a["stdin"].as_str() {
                body["stdin_b64"] = json!(b64(s));
            }
            if let Some(c) = a["cwd"].as_str() {
                body["cwd"] = json!(c);
            }
            let (r, out, err) = streamed(
                socket,
                "POST",
                &format!("/v1/vms/{}/exec", q(vm)),
                body,
                progress,
            )
            .await?;
            Ok(exit_text(&r, &out, &err))
        }
        "run" => {
            let mut body =
                json!({"command": a["command"], "nat": a["nat"].as_bool().unwrap_or(false)});
            if let Some(s) = a["stdin"].as_str() {
                body["stdin_b64"] = json!(b64(s));
            }
            if let Some(r) = a["repo"].as_str() {
                body["workspace"] = json!({"path": r});
            }
            if let Some(i) = a["image"].as_str() {
                body["image"] = json!(i);
            }
            let (r, out, err) = streamed(socket, "POST", "/v1/run", body, progress).await?;
            Ok(exit_text(&r, &out, &err))
        }
        other => files_tool(socket, other, a).await,
    }
}

/// The tools about a VM's files, its patch and its end.
async fn files_tool(socket: &std::path::Path, name: &str, a: &Value) -> Result<String, String> {
    let json_of = |(status, body): (u16, Vec<u8>)| -> Result<String, String> {
        if status != 200 {
            return Err(error_text(status, &body));
        }
        Ok(String::from_utf8_lossy(&body).into_owned())
    };
    match name {
        "read_file" => {
            let (vm, p) = (str_arg(a, "vm")?, str_arg(a, "path")?);
            let (status, body) = http(
                socket,
                "GET",
                &format!("/v1/vms/{}/files?path={}", q(vm), q(p)),
                None,
                None,
            )
            .await?;
            if status != 200 {
                return Err(error_text(status, &body));
            }
            let shown = body.len().min(1 << 20);
            let mut s = String::from_utf8_lossy(&body[..shown]).into_owned();
            if shown < body.len() {
                s += &format!("\n[... {} more bytes not shown ...]", body.len() - shown);
            }
            Ok(s)
        }
        "write_file" => {
            let (vm, p) = (str_arg(a, "vm")?, str_arg(a, "path")?);
            let content = str_arg(a, "content")?.as_bytes().to_vec();
            json_of(
                http(
                    socket,
                    "PUT",
                    &format!("/v1/vms/{}/files?path={}", q(vm), q(p)),
                    Some(content),
                    None,
                )
                .await?,
            )
        }
        "list_files" => {
            let (vm, p) = (str_arg(a, "vm")?, str_arg(a, "path")?);
            json_of(
                http(
                    socket,
                    "GET",
                    &format!("/v1/vms/{}/files?path={}&list=true", q(vm), q(p)),
                    None,
                    None,
                )
                .await?,
            )
        }
        "export_patch" => {
            let vm = str_arg(a, "vm")?;
            let (status, body) = http(
                socket,
                "GET",
                &format!("/v1/vms/{}/patch", q(vm)),
                None,
                None,
            )
            .await?;
            if status != 200 {
                return Err(error_text(status, &body));
            }
            Ok(match body.is_empty() {
                true => "(no changes)".into(),
                false => String::from_utf8_lossy(&body).into_owned(),
            })
        }
        "delete_vm" => {
            let vm = str_arg(a, "vm")?;
            json_of(http(socket, "DELETE", &format!("/v1/vms/{}", q(vm)), None, None).await?)
                .map(|_| format!("deleted {vm}"))
        }
        other => Err(format!("no tool named {other:?}; see tools/list")),
    }
}

fn respond(id: &Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

fn fail(id: &Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

fn send(v: &Value) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{v}");
    let _ = o.flush();
}

/// One message from the client: the answer to send, if any.
async fn message(socket: &std::path::Path, m: &Value) -> Option<Value> {
    let id = m.get("id").cloned();
    let method = m["method"].as_str().unwrap_or("");
    let id = match id {
        Some(id) => id,
        // A notification (initialized, cancelled): nothing to answer.
        None => return None,
    };
    Some(match method {
        "initialize" => respond(
            &id,
            json!({
                "protocolVersion": PROTOCOL,
                "capabilities": {"tools": {"listChanged": false}},
                "serverInfo": {"name": "banger", "version": crate::version::version()},
                "instructions": "Throwaway Linux microVMs: create_vm, prepare_workspace (a host repository into /root/repo), exec, read_file/write_file/list_files, export_patch, delete_vm; or run for a fresh VM deleted afterwards."
            }),
        ),
        "ping" => respond(&id, json!({})),
        "tools/list" => respond(&id, json!({"tools": tools()})),
        "tools/call" => {
            let name = m["params"]["name"].as_str().unwrap_or("");
            let args = m["params"]["arguments"].clone();
            let token = m["params"]["_meta"]["progressToken"].clone();
            let mut n = 0u64;
            let mut progress = |msg: String| {
                if !token.is_null() {
                    n += 1;
                    send(
                        &json!({"jsonrpc": "2.0", "method": "notifications/progress",
                        "params": {"progressToken": token, "progress": n, "message": msg}}),
                    );
                }
            };
            match call_tool(socket, name, &args, &mut progress).await {
                Ok(text) => respond(
                    &id,
                    json!({"content": [{"type": "text", "text": text}], "isError": false}),
                ),
                Err(e) => respond(
                    &id,
                    json!({"content": [{"type": "text", "text": e}], "isError": true}),
                ),
            }
        }
        other => fail(&id, -32601, &format!("method {other:?} not found")),
    })
}

/// `banger mcp`: serves until stdin closes.
pub async fn serve(ctx: &Ctx) -> Result<u8, CliError> {
    // The daemon (and its API socket) is started if it is not running.
    super::client::connect(&ctx.layout, true).await?;
    let socket = ctx.layout.api_socket();
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.len() > MAX_LINE {
            send(&fail(&Value::Null, -32600, "message too large"));
            continue;
        }
        if line.trim().is_empty() {
            continue;
        }
        let answer = match serde_json::from_str::<Value>(&line) {
            Ok(m) => message(&socket, &m).await,
            Err(e) => Some(fail(&Value::Null, -32700, &format!("parse error: {e}"))),
        };
        if let Some(a) = answer {
            send(&a);
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_tool_has_a_name_a_description_and_an_object_schema() {
        let tools = super::tools();
        let names: Vec<&str> = tools
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                assert!(
                    t["description"].as_str().is_some_and(|d| d.len() > 10),
                    "{t}"
                );
                assert_eq!(t["inputSchema"]["type"], "object", "{t}");
                t["name"].as_str().unwrap()
            })
            .collect();
        for n in [
            "create_vm",
            "prepare_workspace",
            "exec",
            "read_file",
            "write_file",
            "list_files",
            "export_patch",
            "delete_vm",
            "run",
        ] {
            assert!(names.contains(&n), "{n}");
        }
    }
}
