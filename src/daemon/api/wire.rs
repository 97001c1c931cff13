//! The HTTP API's JSON: request bodies into the daemon's own `Request`s,
//! its `Reply`s, `Event`s and errors out as JSON (bytes as base64).

use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::domain::egress::{EgressPolicy, SecretSpec};
use crate::domain::views::VmCreateSpec;
use crate::domain::{Event, VmmChoice};
use crate::ops::Ctx;
use crate::protocol::cli::{Reply, RunCommand, RunSpec};
use crate::protocol::{ErrorCode, RpcError};
use crate::workspace::WorkspaceSpec;

pub fn b64(d: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(d)
}

pub fn unb64(s: &str) -> Result<Vec<u8>, RpcError> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| RpcError::bad_request(format!("stdin_b64 is not base64: {e}")))
}

/// A reply as JSON: its one value (`{"Vm": {...}}` is the VM), `{"ok":
/// true}` for a reply that carries none.
pub fn reply(r: &Reply) -> Value {
    match serde_json::to_value(r) {
        Ok(Value::Object(mut m)) if m.len() == 1 => {
            let (_, v) = m
                .iter_mut()
                .next()
                .map(|(k, v)| (k.clone(), v.take()))
                .unwrap_or_default();
            v
        }
        Ok(Value::String(_)) => json!({"ok": true}),
        Ok(v) => v,
        Err(e) => json!({"error": {"code": "operation_failed", "message": e.to_string()}}),
    }
}

/// An event as one JSON object (`{"event": "stdout", "data_b64": ...}`).
pub fn event(e: &Event) -> Value {
    match e {
        Event::Stage {
            stage,
            detail,
            elapsed_ms,
            done,
        } => {
            json!({"event": "stage", "stage": stage, "detail": detail, "elapsed_ms": elapsed_ms, "done": done})
        }
        Event::Log(l) => json!({"event": "log", "line": l}),
        Event::Stdout(d) => json!({"event": "stdout", "data_b64": b64(d)}),
        Event::Stderr(d) => json!({"event": "stderr", "data_b64": b64(d)}),
        Event::Spec {
            vcpu,
            memory_mib,
            disk_bytes,
            nat,
            from,
        } => {
            json!({"event": "spec", "vcpu": vcpu, "memory_mib": memory_mib, "disk_bytes": disk_bytes, "nat": nat, "from": from})
        }
        Event::CommandStarted => json!({"event": "command_started"}),
        Event::Patch(d) => json!({"event": "patch", "data_b64": b64(d)}),
        Event::PatchDone => json!({"event": "patch_done"}),
    }
}

/// The HTTP status of an error code.
pub fn status(code: ErrorCode) -> u16 {
    match code {
        ErrorCode::NotFound => 404,
        ErrorCode::AlreadyExists => 409,
        ErrorCode::Busy => 409,
        ErrorCode::BadRequest | ErrorCode::BadVersion | ErrorCode::UnknownMethod => 400,
        ErrorCode::Unauthorized => 403,
        ErrorCode::OperationFailed => 500,
    }
}

/// An error as the CLI has it: its code and message.
pub fn error(e: &RpcError) -> Value {
    json!({"error": {"code": e.code.as_str(), "message": e.message, "request_id": e.request_id}})
}

/// `POST /v1/vms` (and the VM part of `POST /v1/run`): what is not given
/// comes from the daemon's config, as the CLI's flags do.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    pub name: Option<String>,
    pub image: Option<String>,
    pub kernel: Option<String>,
    pub vcpu: Option<u32>,
    pub memory_mib: Option<u32>,
    /// e.g. `8G`.
    pub disk_size: Option<String>,
    #[serde(default)]
    pub nat: bool,
    pub vmm: Option<String>,
    pub from: Option<String>,
    #[serde(default)]
    pub cold: bool,
    #[serde(default)]
    pub links: Vec<String>,
    /// Deny egress but these (`{"hosts": [...], "nets": [...]}`).
    pub egress: Option<EgressPolicy>,
    #[serde(default)]
    pub secrets: Vec<SecretSpec>,
}

impl CreateBody {
    pub fn spec(&self, ctx: &Ctx) -> Result<VmCreateSpec, RpcError> {
        let d = &ctx.config.vm_defaults;
        let disk_bytes = match &self.disk_size {
            Some(s) => crate::size::parse_size(s)
                .map_err(|e| RpcError::bad_request(format!("disk_size: {e}")))?,
            None => d.disk_bytes.value,
        };
        let vmm = match &self.vmm {
            Some(v) => v
                .parse::<VmmChoice>()
                .map_err(|e| RpcError::bad_request(format!("vmm: {e}")))?,
            None => ctx.config.vmm,
        };
        if let Some(n) = &self.name {
            crate::names::validate_vm_name(n).map_err(|e| RpcError::bad_request(e.to_string()))?;
        }
        Ok(VmCreateSpec {
            name: self.name.clone(),
            image: self.image.clone(),
            kernel: self.kernel.clone(),
            vcpu: self.vcpu.unwrap_or(d.vcpu.value),
            memory_mib: self.memory_mib.unwrap_or(d.memory_mib.value),
            disk_bytes,
            nat: self.nat,
            vmm,
            from: self.from.clone(),
            cold: self.cold,
            delete_on_failure: false,
            links: self.links.clone(),
            egress: self.egress.clone(),
            secrets: self.secrets.clone(),
        })
    }
}

/// A repository to ship (`vm workspace prepare`, `vm run ./repo`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceBody {
    /// Absolute path of the repository on this host.
    pub path: String,
    /// `overlay` (default) or `full_copy`.
    pub mode: Option<String>,
    #[serde(default)]
    pub include_untracked: bool,
}

impl WorkspaceBody {
    pub fn spec(&self) -> Result<WorkspaceSpec, RpcError> {
        if !self.path.starts_with('/') {
            return Err(RpcError::bad_request(format!(
                "workspace path {:?} must be absolute",
                self.path
            )));
        }
        let mode = match &self.mode {
            Some(m) => m.parse().map_err(|e: String| RpcError::bad_request(e))?,
            None => Default::default(),
        };
        Ok(WorkspaceSpec {
            path: self.path.clone(),
            mode,
            include_untracked: self.include_untracked,
            from: None,
            keep_ignored: false,
        })
    }
}

fn default_true() -> bool {
    true
}

/// `POST /v1/run`: `vm run` as one call.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunBody {
    #[serde(flatten)]
    pub create: CreateBody,
    pub workspace: Option<WorkspaceBody>,
    /// The argv (no shell); none with `rm: false` leaves the VM running.
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    pub cwd: Option<String>,
    /// The command's whole stdin.
    pub stdin_b64: Option<String>,
    /// Delete the VM when the run ends (default true).
    #[serde(default = "default_true")]
    pub rm: bool,
    /// The daemon writes the workspace's changes here (absolute) before
    /// the VM goes; the stream carries them too.
    pub export_patch: Option<String>,
    #[serde(default)]
    pub no_bootstrap: bool,
}

impl RunBody {
    pub fn spec(&self, ctx: &Ctx) -> Result<RunSpec, RpcError> {
        let command = match (self.command.is_empty(), self.rm) {
            (true, true) => {
                return Err(RpcError::bad_request(
                    "give a command, or rm: false to leave the VM running",
                ))
            }
            (true, false) => None,
            (false, _) => Some(RunCommand {
                argv: self.command.clone(),
                env: self.env.clone().into_iter().collect(),
                cwd: self.cwd.clone(),
                tty: None,
                stdin: self.stdin_b64.is_some(),
            }),
        };
        Ok(RunSpec {
            create: self.create.spec(ctx)?,
            workspace: self.workspace.as_ref().map(|w| w.spec()).transpose()?,
            no_bootstrap: self.no_bootstrap,
            warm: None,
            command,
            rm: self.rm,
            export_patch: self.export_patch.clone(),
        })
    }
}

/// `POST /v1/vms/{name}/exec`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecBody {
    pub argv: Vec<String>,
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    pub cwd: Option<String>,
    pub stdin_b64: Option<String>,
}

/// `POST /v1/vms/{name}/snapshots`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotBody {
    pub name: Option<String>,
    #[serde(default)]
    pub stop: bool,
}

/// `POST /v1/images`: pull an OCI image (a reference or a catalog name).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullBody {
    pub reference: String,
    /// The image's name here (default: from the reference).
    pub name: Option<String>,
    /// Plain HTTP or an unverified certificate (loopback registries need
    /// neither).
    #[serde(default)]
    pub insecure: bool,
}
