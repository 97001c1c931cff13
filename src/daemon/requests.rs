//! What request handlers share: finding a VM's actor and record, and running
//! an operation on a VM (queued behind the others on it).

use std::future::Future;

use ractor::ActorRef;

use crate::actors::vm_actor::{await_op, op, OpArgs, VmMsg};
use crate::actors::vm_registry::RegistryMsg;
use crate::actors::Slots;
use crate::guest::session::AgentSession;
use crate::ops::OpError;
use crate::store::VmRecord;

/// How long a read of the registry or a VM's record may take: these are
/// answered at once by actors that never block.
pub const READ_MS: u64 = 30_000;

fn restarting(what: &str) -> OpError {
    OpError::busy(format!("the {what} is restarting; retry in a moment"))
}

pub fn registry(slots: &Slots) -> Result<ActorRef<RegistryMsg>, OpError> {
    slots
        .registry
        .get()
        .ok_or_else(|| restarting("VM registry"))
}

/// The actor of the VM named `name` (validated first).
pub async fn actor(slots: &Slots, name: &str) -> Result<ActorRef<VmMsg>, OpError> {
    crate::ops::vms::validate_name(name)?;
    let reg = registry(slots)?;
    ractor::call_t!(
        reg,
        |reply| RegistryMsg::Lookup {
            name: name.to_string(),
            reply
        },
        READ_MS
    )
    .map_err(|e| OpError::failed(format!("finding the VM: {e}")))?
}

/// The current record of the VM named `name`.
pub async fn record(slots: &Slots, name: &str) -> Result<VmRecord, OpError> {
    let a = actor(slots, name).await?;
    ractor::call_t!(a, VmMsg::Get, READ_MS)
        .map_err(|e| OpError::failed(format!("reading the VM: {e}")))
}

/// The current record and the agent session of the running VM `name`.
pub async fn agent(slots: &Slots, name: &str) -> Result<(VmRecord, AgentSession), OpError> {
    let a = actor(slots, name).await?;
    let rec = ractor::call_t!(a, VmMsg::Get, READ_MS)
        .map_err(|e| OpError::failed(format!("reading the VM: {e}")))?;
    crate::ops::vms::require_running(&rec)?;
    let session = ractor::call_t!(a, VmMsg::Agent, READ_MS)
        .map_err(|e| OpError::failed(format!("reading the VM: {e}")))?
        .ok_or_else(|| {
            OpError::failed(format!(
                "VM {name} has no agent session; restart it (banger vm restart {name})"
            ))
        })?;
    Ok((rec, session))
}

/// Queues an operation on the VM named `name` and waits for its result.
pub async fn run_on_vm<T, F, Fut>(
    slots: &Slots,
    name: &str,
    op_name: &'static str,
    f: F,
) -> Result<T, OpError>
where
    T: Send + 'static,
    F: FnOnce(OpArgs) -> Fut + Send + 'static,
    Fut: Future<Output = (Option<VmRecord>, Result<T, OpError>)> + Send + 'static,
{
    queue_on_vm(slots, name, op(op_name, f)).await
}

/// Like [`run_on_vm`], for kill and delete: the VM's running operation is
/// aborted and this one goes first.
pub async fn preempt_on_vm<T, F, Fut>(
    slots: &Slots,
    name: &str,
    op_name: &'static str,
    f: F,
) -> Result<T, OpError>
where
    T: Send + 'static,
    F: FnOnce(OpArgs) -> Fut + Send + 'static,
    Fut: Future<Output = (Option<VmRecord>, Result<T, OpError>)> + Send + 'static,
{
    queue_on_vm(
        slots,
        name,
        crate::actors::vm_actor::preempting_op(op_name, f),
    )
    .await
}

async fn queue_on_vm<T>(
    slots: &Slots,
    name: &str,
    (o, rx): (
        Box<dyn crate::actors::vm_actor::VmOp>,
        tokio::sync::oneshot::Receiver<Result<T, OpError>>,
    ),
) -> Result<T, OpError> {
    crate::ops::vms::validate_name(name)?;
    // The registry routes it (or rejects it: unknown VM, actor restarting).
    registry(slots)?
        .cast(RegistryMsg::Run {
            name: name.to_string(),
            op: o,
        })
        .map_err(|_| restarting("VM registry"))?;
    await_op(rx).await
}
