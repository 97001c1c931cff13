//! `VmActor`: one per VM record. Every operation on a VM is a [`VmOp`]
//! queued in this actor's mailbox and run one at a time, in arrival order, on
//! a spawned task; reads of the record are answered at once, even while an
//! operation runs. Different VMs' actors run their operations in parallel.
//!
//! The actor owns the VM's children (its [`VmmMonitor`] and its agent
//! session, which reconnects on its own) and offers them to operations as
//! `ops::VmChildren`.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::oneshot;

use super::guest_watch::{GuestWatch, WatchMsg};
use super::vmm_monitor::{MonitorMsg, VmmMonitor};
use crate::guest::session::{AgentChannel, AgentSession};
use crate::ops::lifecycle::{self, Recovery};
use crate::ops::OpError;
use crate::ops::{BoxFuture, Ctx, VmChildren};
use crate::store::VmRecord;

/// What an operation gets: the VM's current record, the daemon's context
/// and the VM's children.
pub struct OpArgs {
    pub record: VmRecord,
    pub ctx: Arc<Ctx>,
    pub vm: Arc<dyn VmChildren>,
}

/// Sends a finished operation's answer to its caller.
pub type Deliver = Box<dyn FnOnce() + Send>;

/// One queued operation on a VM.
pub trait VmOp: Send + 'static {
    /// Name for logs.
    fn name(&self) -> &'static str;
    /// Runs the operation. Returns the VM's record afterwards (`None` when
    /// the VM no longer exists, e.g. after delete) and the delivery of the
    /// caller's answer, which the actor makes only once it holds that
    /// record: a caller that sends its next request on seeing the answer
    /// always reads the state the operation left.
    fn run(self: Box<Self>, args: OpArgs) -> BoxFuture<'static, (Option<VmRecord>, Deliver)>;
    /// Answers the caller when the operation cannot run at all.
    fn reject(self: Box<Self>, err: OpError);
    /// Kill and delete: the running operation is aborted (a guest that
    /// never answers must not make its VM impossible to stop) and this one
    /// runs next.
    fn preempts(&self) -> bool {
        false
    }
}

struct FnOp<T, F> {
    name: &'static str,
    f: F,
    reply: oneshot::Sender<Result<T, OpError>>,
    preempts: bool,
}

impl<T, F, Fut> VmOp for FnOp<T, F>
where
    T: Send + 'static,
    F: FnOnce(OpArgs) -> Fut + Send + 'static,
    Fut: Future<Output = (Option<VmRecord>, Result<T, OpError>)> + Send + 'static,
{
    fn name(&self) -> &'static str {
        self.name
    }
    fn run(self: Box<Self>, args: OpArgs) -> BoxFuture<'static, (Option<VmRecord>, Deliver)> {
        let FnOp { f, reply, .. } = *self;
        Box::pin(async move {
            let (record, result) = f(args).await;
            let deliver: Deliver = Box::new(move || {
                let _ = reply.send(result);
            });
            (record, deliver)
        })
    }
    fn reject(self: Box<Self>, err: OpError) {
        let _ = self.reply.send(Err(err));
    }
    fn preempts(&self) -> bool {
        self.preempts
    }
}

/// Builds an operation from an async closure, returning it and the receiver
/// of its result. If the operation is dropped unrun (its actor died), the
/// receiver reports a closed channel; see [`await_op`].
pub fn op<T, F, Fut>(
    name: &'static str,
    f: F,
) -> (Box<dyn VmOp>, oneshot::Receiver<Result<T, OpError>>)
where
    T: Send + 'static,
    F: FnOnce(OpArgs) -> Fut + Send + 'static,
    Fut: Future<Output = (Option<VmRecord>, Result<T, OpError>)> + Send + 'static,
{
    fn_op(name, f, false)
}

fn fn_op<T, F, Fut>(
    name: &'static str,
    f: F,
    preempts: bool,
) -> (Box<dyn VmOp>, oneshot::Receiver<Result<T, OpError>>)
where
    T: Send + 'static,
    F: FnOnce(OpArgs) -> Fut + Send + 'static,
    Fut: Future<Output = (Option<VmRecord>, Result<T, OpError>)> + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    let o = FnOp {
        name,
        f,
        reply: tx,
        preempts,
    };
    (Box::new(o), rx)
}

/// Like [`op`], for an operation that aborts the running one and goes
/// first (see [`VmOp::preempts`]). The aborted operation's caller hears
/// that it was interrupted; what it had acquired is in the record (each
/// step stores what it takes before the next await) and is released by
/// this one.
pub fn preempting_op<T, F, Fut>(
    name: &'static str,
    f: F,
) -> (Box<dyn VmOp>, oneshot::Receiver<Result<T, OpError>>)
where
    T: Send + 'static,
    F: FnOnce(OpArgs) -> Fut + Send + 'static,
    Fut: Future<Output = (Option<VmRecord>, Result<T, OpError>)> + Send + 'static,
{
    fn_op(name, f, true)
}

/// Waits for an operation's result, turning a lost one into a clear error.
pub async fn await_op<T>(rx: oneshot::Receiver<Result<T, OpError>>) -> Result<T, OpError> {
    rx.await.unwrap_or_else(|_| {
        Err(OpError::failed(
            "the operation was interrupted (by vm kill or vm delete, or the VM's actor restarted); check `banger vm show` and retry",
        ))
    })
}

/// Messages to a [`VmActor`].
pub enum VmMsg {
    /// The current record. Answered at once, even while an operation runs.
    Get(RpcReplyPort<VmRecord>),
    /// Queues an operation; it runs after every earlier one has finished.
    Run(Box<dyn VmOp>),
    /// Internal: the running operation finished with this record.
    OpDone(Option<Box<VmRecord>>, Option<Deliver>),
    /// From the running operation: it stored this record.
    Changed(Box<VmRecord>),
    /// From an operation: watch VMM `pid` (a VmmMonitor child).
    AttachVmm(u32),
    /// From the VmmMonitor: the VMM exited.
    VmmExited(u32),
    /// From an operation: a fresh agent session on this channel (an earlier
    /// one is closed); answers it.
    StartAgent(AgentChannel, RpcReplyPort<AgentSession>),
    /// The agent session, if the VM has one. Answered at once.
    Agent(RpcReplyPort<Option<AgentSession>>),
    /// From an operation: close the agent session.
    StopAgent(RpcReplyPort<()>),
    /// From the GuestWatch: whether the record says running, and the
    /// session. Answered at once.
    Probe(RpcReplyPort<(bool, Option<AgentSession>)>),
    /// From the GuestWatch: the session's task died (why); a fresh one is
    /// started after the child's backoff.
    ReviveAgent(String),
    /// Internal: start the revived session now.
    RestartAgent,
    /// Internal: (re)start the GuestWatch after its backoff.
    SpawnWatch,
    /// Test hook (`Request::TestHook`): break one of this VM's children.
    #[cfg(feature = "test-hooks")]
    Hook(crate::protocol::cli::TestHook),
    /// Test hook: the handler panics, as a bug would.
    #[cfg(test)]
    Panic,
}

/// One VM's actor: its id and the daemon's context.
pub struct VmActor {
    pub id: String,
    pub ctx: Arc<Ctx>,
    /// Started for a record found in the store (daemon start, restart
    /// after a failure): an interrupted create or start is carried
    /// through. False for a VM its creator is about to start.
    pub recover: bool,
}

/// Mutable state: the cached record, the queue and the child actors.
pub struct VmActorState {
    record: VmRecord,
    running: Option<&'static str>,
    /// Aborts the running operation's task.
    abort: Option<tokio::task::AbortHandle>,
    queue: VecDeque<Box<dyn VmOp>>,
    deleted: bool,
    monitor: Option<ActorRef<MonitorMsg>>,
    agent: Option<AgentSession>,
    watch: Option<ActorRef<WatchMsg>>,
    /// Restart backoff per child.
    restarts: crate::supervise::Restarts<&'static str>,
}

/// Replaces a session whose driving task died with a fresh one on the same
/// channel; whether it did.
fn revive_session(state: &mut VmActorState) -> bool {
    let Some(old) = state.agent.as_ref().filter(|a| a.is_dead()) else {
        return false;
    };
    tracing::warn!(vm = %state.record.name, "the agent session's task ended; a fresh session");
    let fresh = AgentSession::start(old.channel().clone());
    fresh.set_unresponsive_after(old.unresponsive_after());
    state.agent = Some(fresh);
    true
}

/// Names of the per-VM children in `vm health`.
pub const SESSION: &str = "agent-session";
pub const WATCH: &str = "guest-watch";
pub const MONITOR: &str = "vmm-monitor";

/// `ops::VmChildren` through messages to the VM's own actor (operations run
/// on tasks, so these calls never wait on the mailbox of a busy handler).
struct Children(ActorRef<VmMsg>);

impl VmChildren for Children {
    fn record_changed(&self, rec: &VmRecord) {
        let _ = self.0.cast(VmMsg::Changed(Box::new(rec.clone())));
    }
    fn watch_vmm(&self, pid: u32) {
        let _ = self.0.cast(VmMsg::AttachVmm(pid));
    }
    fn start_agent(&self, channel: AgentChannel) -> BoxFuture<'_, Result<AgentSession, OpError>> {
        Box::pin(async move {
            ractor::call_t!(self.0, |r| VmMsg::StartAgent(channel, r), 30_000)
                .map_err(|e| OpError::failed(format!("the VM's actor: {e}")))
        })
    }
    fn agent(&self) -> BoxFuture<'_, Option<AgentSession>> {
        Box::pin(async move { ractor::call_t!(self.0, VmMsg::Agent, 30_000).ok().flatten() })
    }
    fn stop_agent(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let _ = ractor::call_t!(self.0, VmMsg::StopAgent, 15_000);
        })
    }
}

impl VmActor {
    fn start_next(&self, myself: &ActorRef<VmMsg>, state: &mut VmActorState) {
        if state.running.is_some() {
            return;
        }
        let Some(op) = state.queue.pop_front() else {
            return;
        };
        if state.deleted {
            op.reject(OpError::not_found(format!(
                "VM {} was deleted",
                state.record.name
            )));
            return self.start_next(myself, state);
        }
        state.running = Some(op.name());
        tracing::debug!(vm = %state.record.name, op = op.name(), "operation started");
        let args = OpArgs {
            record: state.record.clone(),
            ctx: self.ctx.clone(),
            vm: Arc::new(Children(myself.clone())),
        };
        let me = myself.clone();
        let vm = state.record.name.clone();
        let inner = tokio::spawn(op.run(args));
        state.abort = Some(inner.abort_handle());
        tokio::spawn(async move {
            let (record, deliver) = match inner.await {
                Ok((r, d)) => (r, Some(d)),
                Err(e) if e.is_cancelled() => {
                    tracing::warn!(%vm, "the running operation was aborted");
                    (None, None)
                }
                Err(e) => {
                    tracing::error!(%vm, "an operation on this VM failed unexpectedly: {e}");
                    (None, None)
                }
            };
            let _ = me.cast(VmMsg::OpDone(record.map(Box::new), deliver));
        });
    }

    async fn spawn_watch(&self, myself: &ActorRef<VmMsg>, state: &mut VmActorState) {
        let w = GuestWatch {
            id: self.id.clone(),
            vm: myself.clone(),
            ctx: self.ctx.clone(),
        };
        match Actor::spawn_linked(None, w, (), myself.get_cell()).await {
            Ok((w, _)) => state.watch = Some(w),
            Err(e) => {
                tracing::error!(vm = %state.record.name, "cannot start the guest watch: {e}");
                self.restart_later(myself, state, WATCH, e.to_string(), VmMsg::SpawnWatch);
            }
        }
    }

    /// Counts a child's death and sends `msg` after its backoff.
    fn restart_later(
        &self,
        myself: &ActorRef<VmMsg>,
        state: &mut VmActorState,
        child: &'static str,
        why: String,
        msg: VmMsg,
    ) {
        let d = state.restarts.schedule(child, myself, move || msg);
        tracing::warn!(vm = %state.record.name, child, "{why}; restarting it in {d:?}");
        self.ctx.guests.restarted(&self.id, child, why);
    }

    /// Queues the release of a VM whose VMM is gone.
    /// An operation ended: its record (or the store's) is taken, its
    /// caller told, and the next one starts, unless the VM is gone or its
    /// VMM exited meanwhile.
    fn op_done(
        &self,
        myself: &ActorRef<VmMsg>,
        state: &mut VmActorState,
        record: Option<Box<VmRecord>>,
        deliver: Option<Deliver>,
    ) {
        state.running = None;
        state.abort = None;
        match record {
            Some(r) => state.record = *r,
            None => match self.ctx.store.get_vm(&self.id) {
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
            while let Some(o) = state.queue.pop_front() {
                o.reject(OpError::not_found(format!(
                    "VM {} was deleted",
                    state.record.name
                )));
            }
            myself.stop(Some("deleted".into()));
            return;
        }
        // The VMM may have exited while the operation ran (its exit
        // is not acted on mid-operation): release what it held now.
        let r = &state.record;
        if r.state == crate::domain::VmState::Running
            && r.vmm_pid
                .is_some_and(|p| !crate::host::process::pid_alive(p))
        {
            tracing::info!(vm = %r.name, "the VMM exited during the last operation; releasing");
            self.queue_reap(myself, state);
            return;
        }
        self.start_next(myself, state);
    }

    /// Watches the VMM `pid` (replacing an earlier watch).
    async fn attach_vmm(&self, myself: &ActorRef<VmMsg>, state: &mut VmActorState, pid: u32) {
        if let Some(m) = state.monitor.take() {
            m.stop(None);
        }
        let paths = self.ctx.layout.vm(&self.id);
        let mon = VmmMonitor {
            pid,
            vm: myself.clone(),
            serial: (state.record.vmm == crate::domain::VmmKind::Qemu)
                .then(|| (paths.serial_socket(), paths.serial_log())),
        };
        match Actor::spawn_linked(None, mon, (), myself.get_cell()).await {
            Ok((m, _)) => state.monitor = Some(m),
            Err(e) => tracing::error!(vm = %state.record.name, "cannot watch the VMM: {e}"),
        }
    }

    fn queue_reap(&self, myself: &ActorRef<VmMsg>, state: &mut VmActorState) {
        let (o, _rx) = op("reap", |a: OpArgs| async move {
            let rec = lifecycle::reap(&a.ctx, &*a.vm, a.record).await;
            (Some(rec), Ok(()))
        });
        state.queue.push_back(o);
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
            .ctx
            .store
            .get_vm(&self.id)?
            .ok_or_else(|| format!("VM record {} is gone", self.id))?;
        Ok(VmActorState {
            record,
            running: None,
            abort: None,
            queue: VecDeque::new(),
            deleted: false,
            monitor: None,
            agent: None,
            watch: None,
            restarts: Default::default(),
        })
    }

    /// Reconciles with what actually runs: a live VMM is watched again (and
    /// its agent reached again); a dead one's resources are released.
    async fn post_start(
        &self,
        myself: ActorRef<VmMsg>,
        state: &mut VmActorState,
    ) -> Result<(), ActorProcessingErr> {
        self.spawn_watch(&myself, state).await;
        match lifecycle::recover(&self.ctx, &mut state.record) {
            Recovery::Idle => {}
            Recovery::Restart | Recovery::Booting(_) if !self.recover => {}
            Recovery::Restart => {
                tracing::info!(vm = %state.record.name, state = %state.record.state, "a create or start was interrupted; starting it again");
                let (o, _rx) = op("resume start", |a: OpArgs| async move {
                    // Nobody watches these stages.
                    let (tx, rx) = tokio::sync::mpsc::channel(1);
                    drop(rx);
                    let mut st = crate::ops::Stages::new(tx);
                    let (rec, r) =
                        lifecycle::restart_interrupted(&a.ctx, &*a.vm, a.record, &mut st).await;
                    (Some(rec), r)
                });
                state.queue.push_back(o);
                self.start_next(&myself, state);
            }
            Recovery::Booting(pid) => {
                tracing::info!(vm = %state.record.name, pid, "a boot was interrupted with its VMM up; finishing it");
                let _ = myself.cast(VmMsg::AttachVmm(pid));
                let (o, _rx) = op("resume boot", move |a: OpArgs| async move {
                    let (rec, r) = lifecycle::resume_boot(&a.ctx, &*a.vm, a.record, pid).await;
                    (Some(rec), r)
                });
                state.queue.push_back(o);
                self.start_next(&myself, state);
            }
            Recovery::Live(pid) => {
                tracing::info!(vm = %state.record.name, pid, "re-attached to a running VM");
                let _ = myself.cast(VmMsg::AttachVmm(pid));
                let paths = self.ctx.layout.vm(&self.id);
                let s = AgentSession::start(crate::guest::session::channel_of(
                    state.record.vmm,
                    &paths,
                ));
                s.set_unresponsive_after(self.ctx.timeouts.unresponsive);
                state.agent = Some(s);
            }
            Recovery::Dead => {
                tracing::info!(vm = %state.record.name, "its VMM is gone; releasing its resources");
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
            VmMsg::Run(op) => {
                if op.preempts() {
                    if let (Some(running), Some(abort)) = (state.running, &state.abort) {
                        tracing::warn!(vm = %state.record.name, running, by = op.name(), "aborting the running operation");
                        abort.abort();
                    }
                    state.queue.push_front(op);
                } else {
                    state.queue.push_back(op);
                }
                self.start_next(&myself, state);
            }
            VmMsg::Changed(r) => {
                if state.running.is_some() && r.id == self.id {
                    state.record = *r;
                }
            }
            VmMsg::OpDone(record, deliver) => self.op_done(&myself, state, record, deliver),
            VmMsg::AttachVmm(pid) => self.attach_vmm(&myself, state, pid).await,
            VmMsg::VmmExited(pid) => {
                state.monitor = None;
                if let Ok(Some(r)) = self.ctx.store.get_vm(&self.id) {
                    state.record = r;
                }
                let ours = state.record.vmm_pid == Some(pid);
                if ours && state.running.is_none() {
                    tracing::info!(vm = %state.record.name, pid, "the VMM exited on its own; releasing");
                    self.queue_reap(&myself, state);
                }
            }
            VmMsg::StartAgent(channel, reply) => {
                // Dropping the old session closes it.
                let s = AgentSession::start(channel);
                s.set_unresponsive_after(self.ctx.timeouts.unresponsive);
                state.agent = Some(s.clone());
                let _ = reply.send(s);
            }
            VmMsg::Agent(reply) => {
                // A caller needs it now: a session whose task died is
                // replaced at once rather than at the watch's next tick.
                if revive_session(state) {
                    self.ctx.guests.restarted(
                        &self.id,
                        SESSION,
                        "the agent session's task ended".into(),
                    );
                }
                let _ = reply.send(state.agent.clone());
            }
            VmMsg::StopAgent(reply) => {
                state.agent = None;
                let _ = reply.send(());
            }
            VmMsg::Probe(reply) => {
                let running = state.record.state == crate::domain::VmState::Running
                    && !state.running.is_some_and(|op| {
                        matches!(op, "stop" | "restart" | "kill" | "delete" | "reap")
                    });
                let _ = reply.send((running, state.agent.clone()));
            }
            VmMsg::ReviveAgent(why) => {
                if state.agent.as_ref().is_some_and(|a| a.is_dead()) {
                    self.restart_later(&myself, state, SESSION, why, VmMsg::RestartAgent);
                }
            }
            VmMsg::RestartAgent => {
                revive_session(state);
            }
            VmMsg::SpawnWatch => {
                if state.watch.is_none() {
                    self.spawn_watch(&myself, state).await;
                }
            }
            #[cfg(feature = "test-hooks")]
            VmMsg::Hook(h) => hook(state, h),
            #[cfg(test)]
            VmMsg::Panic => panic!("test-induced panic in VmActor {}", self.id),
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<VmMsg>,
        evt: ractor::SupervisionEvent,
        state: &mut VmActorState,
    ) -> Result<(), ActorProcessingErr> {
        // A monitor ends on its own after reporting; a failed one (or a
        // failed watch) is restarted after its backoff. The VmActor and
        // the guest carry on.
        let Some((cell, how)) = crate::supervise::ended(evt) else {
            return Ok(());
        };
        let failed = match how {
            crate::supervise::Ending::Failed(e) => Some(e),
            crate::supervise::Ending::Stopped(_) => None,
        };
        let is = |r: &Option<ActorRef<_>>| {
            r.as_ref()
                .is_some_and(|m: &ActorRef<_>| m.get_id() == cell.get_id())
        };
        if is(&state.monitor) {
            state.monitor = None;
            if let Some(why) = failed {
                if let Some(pid) = state.record.vmm_pid {
                    let why = format!("the VMM monitor failed: {why}");
                    self.restart_later(&myself, state, MONITOR, why, VmMsg::AttachVmm(pid));
                }
            }
        } else if state
            .watch
            .as_ref()
            .is_some_and(|w| w.get_id() == cell.get_id())
        {
            state.watch = None;
            if let Some(why) = failed {
                let why = format!("the guest watch failed: {why}");
                self.restart_later(&myself, state, WATCH, why, VmMsg::SpawnWatch);
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<VmMsg>,
        state: &mut VmActorState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(w) = state.watch.take() {
            w.stop(None);
        }
        if let Some(m) = state.monitor.take() {
            m.stop(None);
        }
        if state.deleted {
            self.ctx.guests.forget(&self.id);
        }
        Ok(())
    }
}

/// Runs `f` as an operation on `actor` and waits for the result.
#[cfg(test)]
pub async fn run_op<T, F, Fut>(
    actor: &ActorRef<VmMsg>,
    name: &'static str,
    f: F,
) -> Result<T, OpError>
where
    T: Send + 'static,
    F: FnOnce(OpArgs) -> Fut + Send + 'static,
    Fut: Future<Output = (Option<VmRecord>, Result<T, OpError>)> + Send + 'static,
{
    let (o, rx) = op(name, f);
    // On a failed send the operation is dropped inside the error and `rx`
    // reports it.
    let _ = actor.cast(VmMsg::Run(o));
    await_op(rx).await
}

/// A test hook: breaks one of this VM's children.
#[cfg(feature = "test-hooks")]
fn hook(state: &mut VmActorState, h: crate::protocol::cli::TestHook) {
    use crate::protocol::cli::TestHook;
    match h {
        TestHook::PanicWatch { .. } => {
            if let Some(w) = &state.watch {
                let _ = w.cast(WatchMsg::Panic);
            }
        }
        TestHook::PanicMonitor { .. } => {
            if let Some(m) = &state.monitor {
                let _ = m.cast(MonitorMsg::Panic);
            }
        }
        TestHook::KillSession { .. } => {
            if let Some(a) = &state.agent {
                a.kill_task();
            }
        }
        TestHook::PanicDns | TestHook::PanicDnsTask => {}
    }
}
