//! `VmActor`: one per VM record. Every operation on a VM is a [`Job`] queued
//! in this actor's mailbox and run one at a time, in arrival order, on a
//! spawned task; reads of the record are answered at once, even while a job
//! runs. Different VMs' actors run their jobs in parallel.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::oneshot;

use super::vmm_monitor::{MonitorMsg, VmmMonitor};
use super::vsock_bridge::{VsockBridge, VsockMsg};
use super::Services;
use crate::protocol::cli::VmState;
use crate::protocol::RpcError;
use crate::store::VmRecord;

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What a job gets: the VM's current record, the daemon's services and its
/// VmActor (to start or stop the VM's child actors).
pub struct JobCtx {
    pub record: VmRecord,
    pub services: Arc<Services>,
    pub me: ActorRef<VmMsg>,
}

/// Sends a finished job's answer to its caller.
pub type Deliver = Box<dyn FnOnce() + Send>;

/// One queued operation on a VM.
pub trait Job: Send + 'static {
    /// Name for logs.
    fn name(&self) -> &'static str;
    /// Runs the operation. Returns the VM's record afterwards (`None` when the
    /// VM no longer exists, e.g. after delete) and the delivery of the
    /// caller's answer, which the actor makes only once it holds that record:
    /// a caller that sends its next request on seeing the answer always reads
    /// the state the job left.
    fn run(self: Box<Self>, ctx: JobCtx) -> BoxFuture<(Option<VmRecord>, Deliver)>;
    /// Answers the caller when the job cannot run at all.
    fn reject(self: Box<Self>, err: RpcError);
}

struct FnJob<T, F> {
    name: &'static str,
    f: F,
    reply: oneshot::Sender<Result<T, RpcError>>,
}

impl<T, F, Fut> Job for FnJob<T, F>
where
    T: Send + 'static,
    F: FnOnce(JobCtx) -> Fut + Send + 'static,
    Fut: Future<Output = (Option<VmRecord>, Result<T, RpcError>)> + Send + 'static,
{
    fn name(&self) -> &'static str {
        self.name
    }
    fn run(self: Box<Self>, ctx: JobCtx) -> BoxFuture<(Option<VmRecord>, Deliver)> {
        let FnJob { f, reply, .. } = *self;
        Box::pin(async move {
            let (record, result) = f(ctx).await;
            let deliver: Deliver = Box::new(move || {
                let _ = reply.send(result);
            });
            (record, deliver)
        })
    }
    fn reject(self: Box<Self>, err: RpcError) {
        let _ = self.reply.send(Err(err));
    }
}

/// Builds a job from an async closure, returning it and the receiver of its
/// result. If the job is dropped unrun (its actor died), the receiver reports
/// a closed channel; see [`await_job`].
pub fn job<T, F, Fut>(
    name: &'static str,
    f: F,
) -> (Box<dyn Job>, oneshot::Receiver<Result<T, RpcError>>)
where
    T: Send + 'static,
    F: FnOnce(JobCtx) -> Fut + Send + 'static,
    Fut: Future<Output = (Option<VmRecord>, Result<T, RpcError>)> + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    (Box::new(FnJob { name, f, reply: tx }), rx)
}

/// Waits for a job's result, turning a lost job into a clear error.
pub async fn await_job<T>(rx: oneshot::Receiver<Result<T, RpcError>>) -> Result<T, RpcError> {
    rx.await.unwrap_or_else(|_| {
        Err(RpcError::failed(
            "the VM's actor stopped before finishing the operation (it is restarted automatically); check `banger vm show` and retry",
        ))
    })
}

/// Messages to a [`VmActor`].
pub enum VmMsg {
    /// The current record. Answered at once, even while a job runs.
    Get(RpcReplyPort<VmRecord>),
    /// Queues an operation; it runs after every earlier one has finished.
    Run(Box<dyn Job>),
    /// Internal: the running job finished with this record.
    JobDone(Option<Box<VmRecord>>, Option<Deliver>),
    /// From a job: watch VMM `pid` (a VmmMonitor child).
    AttachVmm(u32),
    /// From the VmmMonitor: the VMM exited.
    VmmExited(u32),
    /// From a job: start (or adopt) the VM's vhost-device-vsock (a
    /// VsockBridge child); answers its pid.
    StartVsock(Option<u32>, RpcReplyPort<Result<u32, String>>),
    /// From a job: stop the VsockBridge.
    StopVsock(RpcReplyPort<()>),
    /// Test hook: the handler panics, as a bug would.
    #[cfg(test)]
    Panic,
}

/// The actor. Holds only its VM id and the shared services.
pub struct VmActor {
    pub id: String,
    pub services: Arc<Services>,
}

/// Mutable state: the cached record, the queue and the child actors.
pub struct VmActorState {
    record: VmRecord,
    running: Option<&'static str>,
    queue: VecDeque<Box<dyn Job>>,
    deleted: bool,
    monitor: Option<ActorRef<MonitorMsg>>,
    vsock: Option<ActorRef<VsockMsg>>,
}

impl VmActor {
    fn start_next(&self, myself: &ActorRef<VmMsg>, state: &mut VmActorState) {
        if state.running.is_some() {
            return;
        }
        let Some(job) = state.queue.pop_front() else {
            return;
        };
        if state.deleted {
            job.reject(RpcError::not_found(format!(
                "VM {} was deleted",
                state.record.name
            )));
            return self.start_next(myself, state);
        }
        state.running = Some(job.name());
        tracing::debug!(vm = %state.record.name, job = job.name(), "job started");
        let ctx = JobCtx {
            record: state.record.clone(),
            services: self.services.clone(),
            me: myself.clone(),
        };
        let me = myself.clone();
        let vm = state.record.name.clone();
        tokio::spawn(async move {
            let inner = tokio::spawn(job.run(ctx));
            let (record, deliver) = match inner.await {
                Ok((r, d)) => (r, Some(d)),
                Err(e) => {
                    tracing::error!(%vm, "a job on this VM failed unexpectedly: {e}");
                    (None, None)
                }
            };
            let _ = me.cast(VmMsg::JobDone(record.map(Box::new), deliver));
        });
    }

    /// Queues the release of a VM whose VMM is gone.
    fn queue_reap(&self, myself: &ActorRef<VmMsg>, state: &mut VmActorState) {
        let (j, _rx) = job("reap", |ctx: JobCtx| async move {
            let rec = crate::vm::lifecycle::reap(&ctx).await;
            (Some(rec), Ok(()))
        });
        state.queue.push_back(j);
        self.start_next(myself, state);
    }
}

impl Actor for VmActor {
    type Msg = VmMsg;
    type State = VmActorState;
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<VmMsg>,
        _args: (),
    ) -> Result<VmActorState, ActorProcessingErr> {
        // A (re)started actor reads its record fresh from the store.
        let record = self
            .services
            .store
            .get_vm(&self.id)?
            .ok_or_else(|| format!("VM record {} is gone", self.id))?;
        Ok(VmActorState {
            record,
            running: None,
            queue: VecDeque::new(),
            deleted: false,
            monitor: None,
            vsock: None,
        })
    }

    /// Reconciles with what actually runs: a live VMM is watched again (and
    /// its vsock bridge adopted); a dead one's resources are released.
    async fn post_start(
        &self,
        myself: ActorRef<VmMsg>,
        state: &mut VmActorState,
    ) -> Result<(), ActorProcessingErr> {
        use crate::protocol::cli::VmmKind;
        let rec = &state.record;
        if !matches!(
            rec.state,
            VmState::Running | VmState::Starting | VmState::Stopping
        ) {
            return Ok(());
        }
        let paths = self.services.layout.vm(&rec.id);
        let alive = rec.vmm_pid.filter(|p| {
            let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd);
            crate::host::process::pid_alive(*p)
                && (cmd.contains(&paths.qmp_socket().display().to_string())
                    || cmd.contains(&paths.api_socket().display().to_string()))
        });
        match alive {
            Some(pid) => {
                tracing::info!(vm = %rec.name, pid, "re-attached to a running VM");
                if rec.state != VmState::Running {
                    // A start or stop that the daemon's end interrupted: the
                    // VMM lives, so the VM runs (`vm stop` stops it).
                    let mut r = rec.clone();
                    r.state = VmState::Running;
                    if let Err(e) = self.services.store.put_vm(&r) {
                        tracing::warn!(vm = %r.name, "recording state running: {e}");
                    }
                    state.record = r;
                }
                let rec = &state.record;
                let _ = myself.cast(VmMsg::AttachVmm(pid));
                if rec.vmm == VmmKind::Qemu {
                    let (tx, _rx) = ractor::concurrency::oneshot();
                    let _ = myself.cast(VmMsg::StartVsock(rec.vsock_pid, tx.into()));
                }
            }
            None => {
                tracing::info!(vm = %rec.name, "its VMM is gone; releasing its resources");
                self.queue_reap(&myself, state);
            }
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<VmMsg>,
        msg: VmMsg,
        state: &mut VmActorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            VmMsg::Get(reply) => {
                let _ = reply.send(state.record.clone());
            }
            VmMsg::Run(job) => {
                state.queue.push_back(job);
                self.start_next(&myself, state);
            }
            VmMsg::JobDone(record, deliver) => {
                state.running = None;
                match record {
                    Some(r) => state.record = *r,
                    None => match self.services.store.get_vm(&self.id) {
                        Ok(Some(r)) => state.record = r,
                        Ok(None) => state.deleted = true,
                        Err(e) => tracing::warn!(vm = %state.record.name, "re-reading record: {e}"),
                    },
                }
                // Only now, with the record in place, does the caller hear.
                if let Some(d) = deliver {
                    d();
                }
                if state.deleted {
                    // Drain the queue with clear errors, then stop; the registry
                    // forgets us on termination.
                    while let Some(j) = state.queue.pop_front() {
                        j.reject(RpcError::not_found(format!(
                            "VM {} was deleted",
                            state.record.name
                        )));
                    }
                    myself.stop(Some("deleted".into()));
                    return Ok(());
                }
                // The VMM may have exited while the job ran (its exit is not
                // acted on mid-job): release what it held now.
                let r = &state.record;
                if matches!(r.state, VmState::Running)
                    && r.vmm_pid
                        .is_some_and(|p| !crate::host::process::pid_alive(p))
                {
                    tracing::info!(vm = %r.name, "the VMM exited during the last operation; releasing");
                    self.queue_reap(&myself, state);
                    return Ok(());
                }
                self.start_next(&myself, state);
            }
            VmMsg::AttachVmm(pid) => {
                if let Some(m) = state.monitor.take() {
                    m.stop(None);
                }
                let mon = VmmMonitor {
                    pid,
                    vm: myself.clone(),
                };
                match Actor::spawn_linked(None, mon, (), myself.get_cell()).await {
                    Ok((m, _)) => state.monitor = Some(m),
                    Err(e) => tracing::error!(vm = %state.record.name, "cannot watch the VMM: {e}"),
                }
            }
            VmMsg::VmmExited(pid) => {
                state.monitor = None;
                let rec = self.services.store.get_vm(&self.id).ok().flatten();
                if let Some(r) = rec {
                    state.record = r;
                }
                let ours = state.record.vmm_pid == Some(pid);
                if ours && state.running.is_none() {
                    tracing::info!(vm = %state.record.name, pid, "the VMM exited on its own; releasing");
                    self.queue_reap(&myself, state);
                }
            }
            VmMsg::StartVsock(adopt, reply) => {
                if let Some(v) = &state.vsock {
                    if let Ok(Some(pid)) = ractor::call_t!(v, VsockMsg::Pid, 5000) {
                        let _ = reply.send(Ok(pid));
                        return Ok(());
                    }
                }
                let Some(binary) = crate::actors::vsock_bridge::find_binary() else {
                    let _ = reply.send(Err("vhost-device-vsock is not installed (cargo install vhost-device-vsock); QEMU guests need it for the agent socket".into()));
                    return Ok(());
                };
                let bridge = VsockBridge {
                    paths: self.services.layout.vm(&self.id),
                    binary,
                };
                match Actor::spawn_linked(None, bridge, adopt, myself.get_cell()).await {
                    Ok((v, _)) => {
                        let pid = ractor::call_t!(v, VsockMsg::Pid, 5000).ok().flatten();
                        state.vsock = Some(v);
                        let _ = reply.send(
                            pid.ok_or_else(|| "vhost-device-vsock did not start".to_string()),
                        );
                    }
                    Err(e) => {
                        let _ = reply.send(Err(format!("starting vhost-device-vsock: {e}")));
                    }
                }
            }
            VmMsg::StopVsock(reply) => {
                // Off the mailbox: reads of the record stay prompt while the
                // process is waited for.
                match state.vsock.take() {
                    Some(v) => {
                        tokio::spawn(async move {
                            let _ = ractor::call_t!(v, VsockMsg::Stop, 10_000);
                            let _ = reply.send(());
                        });
                    }
                    None => {
                        let _ = reply.send(());
                    }
                }
            }
            #[cfg(test)]
            VmMsg::Panic => panic!("test-induced panic in VmActor {}", self.id),
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<VmMsg>,
        evt: ractor::SupervisionEvent,
        state: &mut VmActorState,
    ) -> Result<(), ActorProcessingErr> {
        // Children end on their own (a monitor after reporting, the vsock
        // bridge when stopped); a failed one is dropped and restarted by the
        // next start. The VmActor itself carries on.
        let cell = match &evt {
            ractor::SupervisionEvent::ActorFailed(c, e) => {
                tracing::error!(vm = %state.record.name, "a child actor failed: {e}");
                c
            }
            ractor::SupervisionEvent::ActorTerminated(c, _, _) => c,
            _ => return Ok(()),
        };
        if state
            .vsock
            .as_ref()
            .is_some_and(|v| v.get_id() == cell.get_id())
        {
            state.vsock = None;
        }
        if state
            .monitor
            .as_ref()
            .is_some_and(|m| m.get_id() == cell.get_id())
        {
            state.monitor = None;
        }
        Ok(())
    }
}

/// Convenience: runs `f` as a job on `actor` and waits for the result.
pub async fn run_on<T, F, Fut>(
    actor: &ActorRef<VmMsg>,
    name: &'static str,
    f: F,
) -> Result<T, RpcError>
where
    T: Send + 'static,
    F: FnOnce(JobCtx) -> Fut + Send + 'static,
    Fut: Future<Output = (Option<VmRecord>, Result<T, RpcError>)> + Send + 'static,
{
    let (j, rx) = job(name, f);
    if let Err(e) = actor.cast(VmMsg::Run(j)) {
        // The job is inside the failed message; it is dropped and rx reports it.
        drop(e);
    }
    await_job(rx).await
}
