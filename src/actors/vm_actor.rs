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

use super::Services;
use crate::protocol::RpcError;
use crate::store::VmRecord;

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What a job gets: the VM's current record and the daemon's services.
pub struct JobCtx {
    pub record: VmRecord,
    pub services: Arc<Services>,
}

/// One queued operation on a VM.
pub trait Job: Send + 'static {
    /// Name for logs.
    fn name(&self) -> &'static str;
    /// Runs the operation. Returns the VM's record afterwards (`None` when the
    /// VM no longer exists, e.g. after delete).
    fn run(self: Box<Self>, ctx: JobCtx) -> BoxFuture<Option<VmRecord>>;
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
    fn run(self: Box<Self>, ctx: JobCtx) -> BoxFuture<Option<VmRecord>> {
        let FnJob { f, reply, .. } = *self;
        Box::pin(async move {
            let (record, result) = f(ctx).await;
            let _ = reply.send(result);
            record
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
    JobDone(Option<VmRecord>),
    /// Test hook: the handler panics, as a bug would.
    #[cfg(test)]
    Panic,
}

/// The actor. Holds only its VM id and the shared services.
pub struct VmActor {
    pub id: String,
    pub services: Arc<Services>,
}

/// Mutable state: the cached record and the queue.
pub struct VmActorState {
    record: VmRecord,
    running: Option<&'static str>,
    queue: VecDeque<Box<dyn Job>>,
    deleted: bool,
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
        };
        let me = myself.clone();
        let vm = state.record.name.clone();
        tokio::spawn(async move {
            let inner = tokio::spawn(job.run(ctx));
            let record = match inner.await {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(%vm, "a job on this VM failed unexpectedly: {e}");
                    None
                }
            };
            let _ = me.cast(VmMsg::JobDone(record));
        });
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
        })
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
            VmMsg::JobDone(record) => {
                state.running = None;
                match record {
                    Some(r) => state.record = r,
                    None => match self.services.store.get_vm(&self.id) {
                        Ok(Some(r)) => state.record = r,
                        Ok(None) => state.deleted = true,
                        Err(e) => tracing::warn!(vm = %state.record.name, "re-reading record: {e}"),
                    },
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
                self.start_next(&myself, state);
            }
            #[cfg(test)]
            VmMsg::Panic => panic!("test-induced panic in VmActor {}", self.id),
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
