//! `JobManager` and `JobActor`: long jobs keyed by name (an image build, a
//! kernel pull). Requests for a key with a job in flight attach to it and all
//! get its result; different keys run in parallel. Two managers run in the
//! daemon: the ImageManager and the KernelManager. ("Job" means only this
//! here; what queues on a VM is an operation, see `vm_actor`.)

use std::collections::HashMap;
use std::sync::Arc;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::{mpsc, oneshot};

use crate::domain::Event;
use crate::ops::{Made, OpError, Progress, Work};

/// Someone waiting for a job.
pub struct Waiter {
    pub events: mpsc::Sender<Event>,
    pub reply: oneshot::Sender<Result<Made, OpError>>,
}

/// A job's result, its failure shared by every waiter.
type Outcome = Result<Made, Arc<OpError>>;

fn share(r: &Outcome) -> Result<Made, OpError> {
    r.clone().map_err(OpError::Shared)
}

/// Messages to a [`JobActor`].
pub enum JobMsg {
    /// Another request for the same key.
    Attach(Waiter),
    /// Internal: progress from the work.
    Event(Event),
    /// Internal: the work finished.
    Done(Box<Result<Made, OpError>>),
    /// From the manager: no more attachments will come; stop.
    Retire,
}

/// One job: its key and the manager to tell when it is done.
pub struct JobActor {
    pub key: String,
    pub manager: ActorRef<ManagerMsg>,
}

/// Who waits for the job, the last stage (for late attachers) and, once
/// done, the result.
pub struct JobState {
    waiters: Vec<Waiter>,
    last_stage: Option<Event>,
    result: Option<Outcome>,
}

impl Actor for JobActor {
    type Msg = JobMsg;
    type State = JobState;
    type Arguments = (Work, Waiter);

    async fn pre_start(
        &self,
        myself: ActorRef<JobMsg>,
        (work, first): (Work, Waiter),
    ) -> Result<JobState, ActorProcessingErr> {
        let sink = myself.clone();
        let progress = Progress::with(Arc::new(move |ev| {
            let _ = sink.cast(JobMsg::Event(ev));
        }));
        let me = myself.clone();
        tokio::spawn(async move {
            let inner = tokio::spawn(work(progress));
            let res = inner.await.unwrap_or_else(|e| {
                Err(OpError::failed(format!("the job failed unexpectedly: {e}")))
            });
            let _ = me.cast(JobMsg::Done(Box::new(res)));
        });
        Ok(JobState {
            waiters: vec![first],
            last_stage: None,
            result: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<JobMsg>,
        msg: JobMsg,
        state: &mut JobState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            JobMsg::Attach(w) => match &state.result {
                Some(r) => {
                    let _ = w.reply.send(share(r));
                }
                None => {
                    let _ = w.events.try_send(Event::Log(format!(
                        "{} is already in progress; waiting for it",
                        self.key
                    )));
                    if let Some(ev) = &state.last_stage {
                        let _ = w.events.try_send(ev.clone());
                    }
                    state.waiters.push(w);
                }
            },
            JobMsg::Event(ev) => {
                if matches!(ev, Event::Stage { .. }) {
                    state.last_stage = Some(ev.clone());
                }
                for w in &state.waiters {
                    let _ = w.events.try_send(ev.clone());
                }
            }
            JobMsg::Done(res) => {
                let res: Outcome = (*res).map_err(Arc::new);
                for w in state.waiters.drain(..) {
                    let _ = w.reply.send(share(&res));
                }
                state.result = Some(res);
                let _ = self.manager.cast(ManagerMsg::Finished {
                    key: self.key.clone(),
                    job: myself.get_id(),
                });
            }
            JobMsg::Retire => myself.stop(Some("retired".into())),
        }
        Ok(())
    }
}

/// Messages to a [`JobManager`].
pub enum ManagerMsg {
    /// Runs `work` for `key`, or attaches to the job already running it.
    Run {
        key: String,
        work: Work,
        waiter: Waiter,
    },
    /// Internal: the job for `key` is done.
    Finished { key: String, job: ActorId },
}

/// Coalesces jobs by key; `kind` names it in logs.
pub struct JobManager {
    pub kind: &'static str,
}

/// The job in flight per key, and the key of each job actor.
#[derive(Default)]
pub struct ManagerState {
    jobs: HashMap<String, ActorRef<JobMsg>>,
    by_id: HashMap<ActorId, String>,
}

impl Actor for JobManager {
    type Msg = ManagerMsg;
    type State = ManagerState;
    type Arguments = ();

    async fn pre_start(
        &self,
        _: ActorRef<ManagerMsg>,
        _: (),
    ) -> Result<ManagerState, ActorProcessingErr> {
        Ok(ManagerState::default())
    }

    async fn handle(
        &self,
        myself: ActorRef<ManagerMsg>,
        msg: ManagerMsg,
        state: &mut ManagerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ManagerMsg::Run { key, work, waiter } => {
                let waiter = match state.jobs.get(&key) {
                    Some(job) => match job.cast(JobMsg::Attach(waiter)) {
                        Ok(()) => return Ok(()),
                        Err(ractor::MessagingErr::SendErr(JobMsg::Attach(w))) => w,
                        Err(_) => return Ok(()),
                    },
                    None => waiter,
                };
                tracing::info!(kind = self.kind, %key, "job started");
                let actor = JobActor {
                    key: key.clone(),
                    manager: myself.clone(),
                };
                match Actor::spawn_linked(None, actor, (work, waiter), myself.get_cell()).await {
                    Ok((job, _)) => {
                        state.by_id.insert(job.get_id(), key.clone());
                        state.jobs.insert(key, job);
                    }
                    Err(e) => tracing::error!(kind = self.kind, %key, "cannot start job: {e}"),
                }
            }
            ManagerMsg::Finished { key, job } => {
                if state.jobs.get(&key).is_some_and(|j| j.get_id() == job) {
                    if let Some(j) = state.jobs.remove(&key) {
                        let _ = j.cast(JobMsg::Retire);
                    }
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<ManagerMsg>,
        evt: SupervisionEvent,
        state: &mut ManagerState,
    ) -> Result<(), ActorProcessingErr> {
        // A finished or failed job is forgotten; its waiters were answered or
        // see their reply channel close. Jobs are not restarted: the user retries.
        let (cell, why) = match evt {
            SupervisionEvent::ActorFailed(c, e) => (c, Some(e.to_string())),
            SupervisionEvent::ActorTerminated(c, _, _) => (c, None),
            _ => return Ok(()),
        };
        if let Some(key) = state.by_id.remove(&cell.get_id()) {
            if state
                .jobs
                .get(&key)
                .is_some_and(|j| j.get_id() == cell.get_id())
            {
                state.jobs.remove(&key);
            }
            if let Some(why) = why {
                tracing::error!(kind = self.kind, %key, "job actor failed: {why}");
            }
        }
        Ok(())
    }
}

/// Runs `work` under `key` on `manager`, forwarding events to `events`, and
/// waits for the (possibly shared) result.
pub async fn run_job(
    manager: &ActorRef<ManagerMsg>,
    key: &str,
    events: mpsc::Sender<Event>,
    work: Work,
) -> Result<Made, OpError> {
    let (tx, rx) = oneshot::channel();
    manager
        .cast(ManagerMsg::Run {
            key: key.to_string(),
            work,
            waiter: Waiter { events, reply: tx },
        })
        .map_err(|_| OpError::busy("the job manager is restarting; retry"))?;
    rx.await.unwrap_or_else(|_| {
        Err(OpError::failed(format!(
            "the job for {key} stopped without a result; retry"
        )))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn made() -> Made {
        Made::Kernel(crate::domain::views::KernelView {
            name: "k".into(),
            kernel_version: "1".into(),
            arch: "x86_64".into(),
            source: "test".into(),
            dir: "/nowhere".into(),
            has_initrd: false,
            has_modules: false,
            vmlinux_sha256: String::new(),
            created_at_unix: 0,
        })
    }

    fn work<F, Fut>(f: F) -> Work
    where
        F: FnOnce(Progress) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<Made, OpError>> + Send + 'static,
    {
        Box::new(move |p| Box::pin(f(p)))
    }

    #[tokio::test]
    async fn concurrent_requests_for_one_key_share_one_run() {
        let (m, _) = Actor::spawn(None, JobManager { kind: "test" }, ())
            .await
            .unwrap();
        let runs = Arc::new(AtomicU32::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        // Three requests enter the manager's mailbox before the work may finish,
        // so (FIFO) all are handled while the first job is in flight.
        let mut replies = Vec::new();
        for _ in 0..3 {
            let (runs, gate) = (runs.clone(), gate.clone());
            let (tx, rx) = oneshot::channel();
            let (etx, erx) = mpsc::channel(64);
            m.cast(ManagerMsg::Run {
                key: "img".into(),
                work: work(move |p| async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    p.stage("build", "working", false);
                    gate.notified().await;
                    Ok(made())
                }),
                waiter: Waiter {
                    events: etx,
                    reply: tx,
                },
            })
            .unwrap();
            replies.push((rx, erx));
        }
        gate.notify_one();
        for (rx, _events) in replies {
            assert!(matches!(rx.await.unwrap(), Ok(Made::Kernel(_))));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // The key is free again: a new request runs anew.
        let (tx, _rx) = mpsc::channel(8);
        let runs2 = runs.clone();
        let r = run_job(
            &m,
            "img",
            tx,
            work(move |_| async move {
                runs2.fetch_add(1, Ordering::SeqCst);
                Ok(made())
            }),
        )
        .await;
        assert!(matches!(r, Ok(Made::Kernel(_))));
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_panicking_job_reports_an_error_and_the_key_is_free_again() {
        let (m, _) = Actor::spawn(None, JobManager { kind: "test" }, ())
            .await
            .unwrap();
        let (tx, _rx) = mpsc::channel(8);
        let r = run_job(&m, "k", tx.clone(), work(|_| async { panic!("boom") })).await;
        assert!(r.unwrap_err().to_string().contains("unexpectedly"));
        let r = run_job(&m, "k", tx, work(|_| async { Ok(made()) })).await;
        assert!(matches!(r, Ok(Made::Kernel(_))));
    }
}
