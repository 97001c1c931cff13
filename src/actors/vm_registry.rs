//! `VmRegistry`: owns one [`VmActor`] per VM record and routes work to them by
//! name. It supervises them one-for-one: a failed VmActor is restarted (after
//! a backoff) from its record in the store, and the others never notice.

use std::collections::HashMap;
use std::sync::Arc;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use super::vm_actor::{VmActor, VmMsg, VmOp};
use crate::ops::Ctx;
use crate::ops::OpError;
use crate::store::VmRecord;
use crate::supervise::{ended, Ending, Restarts};

/// Messages to the [`VmRegistry`].
pub enum RegistryMsg {
    /// Every VM record, in name order.
    List(RpcReplyPort<Result<Vec<VmRecord>, OpError>>),
    /// The actor of the VM named `name` (`not_found` when there is none, `busy`
    /// while it is being restarted).
    Lookup {
        name: String,
        reply: RpcReplyPort<Result<ActorRef<VmMsg>, OpError>>,
    },
    /// Queues `op` on the VM named `name`; rejects it when there is none.
    Run { name: String, op: Box<dyn VmOp> },
    /// Starts an actor for a record just written to the store.
    Adopt {
        id: String,
        reply: RpcReplyPort<Result<ActorRef<VmMsg>, OpError>>,
    },
    /// Internal: restart the actor of VM `id` after its backoff.
    Respawn(String),
}

struct Entry {
    name: String,
    actor: Option<ActorRef<VmMsg>>,
}

/// The registry: it reads the VM records from the daemon's context.
pub struct VmRegistry {
    pub ctx: Arc<Ctx>,
}

/// Registry state: entries by VM id, plus indexes.
pub struct RegistryState {
    entries: HashMap<String, Entry>,
    by_name: HashMap<String, String>,
    by_actor: HashMap<ActorId, String>,
    /// Restart backoff per VM id.
    restarts: Restarts<String>,
}

impl VmRegistry {
    async fn spawn_vm(
        &self,
        myself: &ActorRef<RegistryMsg>,
        state: &mut RegistryState,
        id: &str,
        recover: bool,
    ) -> Result<ActorRef<VmMsg>, OpError> {
        let actor = VmActor {
            id: id.to_string(),
            ctx: self.ctx.clone(),
            recover,
        };
        let (r, _) = Actor::spawn_linked(None, actor, (), myself.get_cell())
            .await
            .map_err(|e| OpError::failed(format!("starting the actor of VM {id}: {e}")))?;
        state.by_actor.insert(r.get_id(), id.to_string());
        if let Some(e) = state.entries.get_mut(id) {
            e.actor = Some(r.clone());
        }
        Ok(r)
    }

    fn lookup(&self, state: &RegistryState, name: &str) -> Result<ActorRef<VmMsg>, OpError> {
        let id = state.by_name.get(name).ok_or_else(|| {
            OpError::not_found(format!("no VM named {name:?}; see `banger vm list`"))
        })?;
        state
            .entries
            .get(id)
            .and_then(|e| e.actor.clone())
            .ok_or_else(|| {
                OpError::busy(format!(
                    "VM {name} is recovering from an internal error; retry in a moment"
                ))
            })
    }
}

impl Actor for VmRegistry {
    type Msg = RegistryMsg;
    type State = RegistryState;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<RegistryMsg>,
        _: (),
    ) -> Result<RegistryState, ActorProcessingErr> {
        let mut state = RegistryState {
            entries: HashMap::new(),
            by_name: HashMap::new(),
            by_actor: HashMap::new(),
            restarts: Restarts::default(),
        };
        for vm in self.ctx.store.list_vms()? {
            state.by_name.insert(vm.name.clone(), vm.id.clone());
            state.entries.insert(
                vm.id.clone(),
                Entry {
                    name: vm.name.clone(),
                    actor: None,
                },
            );
            if let Err(e) = self.spawn_vm(&myself, &mut state, &vm.id, true).await {
                tracing::error!(vm = %vm.name, "{e}");
            }
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<RegistryMsg>,
        msg: RegistryMsg,
        state: &mut RegistryState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RegistryMsg::List(reply) => {
                let res = self
                    .ctx
                    .store
                    .list_vms()
                    .map(|mut v| {
                        v.sort_by(|a, b| a.name.cmp(&b.name));
                        v
                    })
                    .map_err(OpError::from);
                let _ = reply.send(res);
            }
            RegistryMsg::Lookup { name, reply } => {
                let _ = reply.send(self.lookup(state, &name));
            }
            RegistryMsg::Run { name, op } => match self.lookup(state, &name) {
                Ok(actor) => {
                    if let Err(ractor::MessagingErr::SendErr(VmMsg::Run(op))) =
                        actor.cast(VmMsg::Run(op))
                    {
                        op.reject(OpError::busy(format!(
                            "VM {name} is restarting its actor; retry"
                        )));
                    }
                }
                Err(e) => op.reject(e),
            },
            RegistryMsg::Adopt { id, reply } => {
                let res = match self.ctx.store.get_vm(&id) {
                    Ok(Some(vm)) => {
                        state.by_name.insert(vm.name.clone(), id.clone());
                        state.entries.insert(
                            id.clone(),
                            Entry {
                                name: vm.name.clone(),
                                actor: None,
                            },
                        );
                        // A VM being created: its creator starts it.
                        self.spawn_vm(&myself, state, &id, false).await
                    }
                    Ok(None) => Err(OpError::not_found(format!(
                        "VM record {id} is not in the store"
                    ))),
                    Err(e) => Err(e.into()),
                };
                let _ = reply.send(res);
            }
            RegistryMsg::Respawn(id) => {
                let exists = matches!(self.ctx.store.get_vm(&id), Ok(Some(_)));
                if !exists {
                    state.restarts.forget(&id);
                    if let Some(e) = state.entries.remove(&id) {
                        state.by_name.remove(&e.name);
                    }
                } else if state.entries.get(&id).is_some_and(|e| e.actor.is_none()) {
                    match self.spawn_vm(&myself, state, &id, true).await {
                        Ok(_) => tracing::info!(vm_id = %id, "restarted VM actor"),
                        Err(e) => {
                            tracing::error!(vm_id = %id, "{e}");
                            if state.entries.contains_key(&id) {
                                let again = id.clone();
                                state
                                    .restarts
                                    .schedule(id, &myself, move || RegistryMsg::Respawn(again));
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<RegistryMsg>,
        evt: SupervisionEvent,
        state: &mut RegistryState,
    ) -> Result<(), ActorProcessingErr> {
        let Some((cell, how)) = ended(evt) else {
            return Ok(());
        };
        let Some(id) = state.by_actor.remove(&cell.get_id()) else {
            return Ok(());
        };
        let Some(entry) = state.entries.get_mut(&id) else {
            return Ok(());
        };
        entry.actor = None;
        if how == Ending::Stopped(Some("deleted".into())) {
            let name = entry.name.clone();
            state.entries.remove(&id);
            state.by_name.remove(&name);
            state.restarts.forget(&id);
            tracing::debug!(vm = %name, "VM actor retired");
            return Ok(());
        }
        let name = entry.name.clone();
        let again = id.clone();
        let delay = state
            .restarts
            .schedule(id, &myself, move || RegistryMsg::Respawn(again));
        tracing::error!(
            vm = %name,
            restart_in_ms = delay.as_millis() as u64,
            "VM actor {how}; restarting"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::vm_actor::{await_op, op, VmMsg};
    use crate::domain::VmState;
    use crate::ops::testing::Fakes;
    use std::time::{Duration, Instant};

    fn record(name: &str) -> VmRecord {
        let mut v = VmRecord::new(name, "img", "", 1, 256, 1 << 30, false, Default::default());
        v.state = VmState::Stopped;
        v
    }

    async fn setup(names: &[&str]) -> (Fakes, ActorRef<RegistryMsg>) {
        let fakes = Fakes::new();
        for n in names {
            fakes.ctx.store.put_vm(&record(n)).unwrap();
        }
        let (reg, _) = Actor::spawn(
            None,
            VmRegistry {
                ctx: fakes.ctx.clone(),
            },
            (),
        )
        .await
        .unwrap();
        (fakes, reg)
    }

    async fn lookup(reg: &ActorRef<RegistryMsg>, name: &str) -> Result<ActorRef<VmMsg>, OpError> {
        ractor::call!(reg, |reply| RegistryMsg::Lookup {
            name: name.into(),
            reply
        })
        .unwrap()
    }

    /// Waits (with a deadline) until `name` has a live actor other than `old`.
    async fn wait_restarted(
        reg: &ActorRef<RegistryMsg>,
        name: &str,
        old: &ActorRef<VmMsg>,
    ) -> ActorRef<VmMsg> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(a) = lookup(reg, name).await {
                if a.get_id() != old.get_id() {
                    return a;
                }
            }
            assert!(
                Instant::now() < deadline,
                "actor of {name} was not restarted"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn panicking_vm_actor_is_restarted_and_siblings_keep_serving() {
        let (_f, reg) = setup(&["alpha", "beta"]).await;
        let alpha = lookup(&reg, "alpha").await.unwrap();
        let beta = lookup(&reg, "beta").await.unwrap();
        alpha.cast(VmMsg::Panic).unwrap();
        // Beta answers while alpha is down and after.
        let rec = ractor::call!(beta, VmMsg::Get).unwrap();
        assert_eq!(rec.name, "beta");
        let alpha2 = wait_restarted(&reg, "alpha", &alpha).await;
        let rec = ractor::call!(alpha2, VmMsg::Get).unwrap();
        assert_eq!(rec.name, "alpha", "restarted actor re-read its record");
        assert_eq!(
            lookup(&reg, "beta").await.unwrap().get_id(),
            beta.get_id(),
            "sibling was not restarted"
        );
        let rec = ractor::call!(beta, VmMsg::Get).unwrap();
        assert_eq!(rec.name, "beta");
        // Registry itself is alive and still routes.
        let list = ractor::call!(reg, RegistryMsg::List).unwrap().unwrap();
        assert_eq!(list.len(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_caller_that_heard_an_operation_reads_the_record_it_left() {
        let (_f, reg) = setup(&["fresh"]).await;
        let actor = lookup(&reg, "fresh").await.unwrap();
        for i in 0..200u32 {
            let got = super::super::vm_actor::run_op(&actor, "test-set", move |a| async move {
                let mut r = a.record;
                r.vcpu = i + 1;
                (Some(r), Ok(()))
            })
            .await;
            got.unwrap();
            // The very next read, as `vm run` does after its prepare.
            let rec = ractor::call_t!(actor, VmMsg::Get, 5000).unwrap();
            assert_eq!(rec.vcpu, i + 1, "read a record from before the operation");
        }
    }

    #[tokio::test]
    async fn operations_on_one_vm_run_one_at_a_time_in_arrival_order() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Mutex;
        let (_f, reg) = setup(&["solo"]).await;
        let log = Arc::new(Mutex::new(Vec::new()));
        let busy = Arc::new(AtomicBool::new(false));
        let mut rxs = Vec::new();
        for i in 0..100u32 {
            let (log, busy) = (log.clone(), busy.clone());
            let (j, rx) = op("test-append", move |a| async move {
                assert!(
                    !busy.swap(true, Ordering::SeqCst),
                    "two operations overlapped"
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
                log.lock().unwrap().push(i);
                busy.store(false, Ordering::SeqCst);
                (Some(a.record), Ok(i))
            });
            reg.cast(RegistryMsg::Run {
                name: "solo".into(),
                op: j,
            })
            .unwrap();
            rxs.push(rx);
        }
        for (i, rx) in rxs.into_iter().enumerate() {
            assert_eq!(await_op(rx).await.unwrap(), i as u32);
        }
        assert_eq!(*log.lock().unwrap(), (0..100).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn operations_on_different_vms_overlap() {
        let (_f, reg) = setup(&["one", "two"]).await;
        let mut rxs = Vec::new();
        for name in ["one", "two"] {
            let (j, rx) = op("test-span", |a| async move {
                let start = Instant::now();
                tokio::time::sleep(Duration::from_millis(300)).await;
                (Some(a.record), Ok((start, Instant::now())))
            });
            reg.cast(RegistryMsg::Run {
                name: name.into(),
                op: j,
            })
            .unwrap();
            rxs.push(rx);
        }
        let a = await_op(rxs.remove(0)).await.unwrap();
        let b = await_op(rxs.remove(0)).await.unwrap();
        assert!(
            a.0 < b.1 && b.0 < a.1,
            "spans {a:?} and {b:?} do not overlap"
        );
    }

    #[tokio::test]
    async fn kill_aborts_an_operation_that_never_ends_and_runs_next() {
        use crate::actors::vm_actor::preempting_op;
        let (_f, reg) = setup(&["stuck"]).await;
        // A guest that never answers: the operation waits forever.
        let (hang, hang_rx) = op("hang", |a| async move {
            std::future::pending::<()>().await;
            (Some(a.record), Ok("never"))
        });
        reg.cast(RegistryMsg::Run {
            name: "stuck".into(),
            op: hang,
        })
        .unwrap();
        let (queued, queued_rx) = op("after", |a| async move { (Some(a.record), Ok("after")) });
        reg.cast(RegistryMsg::Run {
            name: "stuck".into(),
            op: queued,
        })
        .unwrap();
        let (kill, kill_rx) =
            preempting_op("kill", |a| async move { (Some(a.record), Ok("kill")) });
        reg.cast(RegistryMsg::Run {
            name: "stuck".into(),
            op: kill,
        })
        .unwrap();
        let within = |rx| tokio::time::timeout(Duration::from_secs(5), await_op(rx));
        assert_eq!(within(kill_rx).await.unwrap().unwrap(), "kill");
        let e = within(hang_rx).await.unwrap().unwrap_err();
        assert!(e.to_string().contains("interrupted"), "{e}");
        assert_eq!(
            within(queued_rx).await.unwrap().unwrap(),
            "after",
            "what was queued still runs, after the kill"
        );
    }

    #[tokio::test]
    async fn an_interrupted_create_is_carried_through_on_the_next_start() {
        let f = Fakes::new();
        f.artifacts();
        let mut rec = f.vm("halfway", false);
        rec.state = VmState::Created;
        f.ctx.store.put_vm(&rec).unwrap();
        let (reg, _) = Actor::spawn(None, VmRegistry { ctx: f.ctx.clone() }, ())
            .await
            .unwrap();
        let actor = lookup(&reg, "halfway").await.unwrap();
        // The fake guest never answers, so the resumed start ends in error
        // after launching: what counts is that it was started at all.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = ractor::call!(actor, VmMsg::Get).unwrap();
            if r.state == VmState::Error {
                break;
            }
            assert!(Instant::now() < deadline, "not started: {r:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            f.helper.count("launch_vmm") >= 1,
            "{:?}",
            f.helper.methods()
        );
    }

    #[tokio::test]
    async fn unknown_vm_is_not_found() {
        let (_f, reg) = setup(&[]).await;
        let (j, rx) = op("noop", |a| async move { (Some(a.record), Ok(())) });
        reg.cast(RegistryMsg::Run {
            name: "ghost".into(),
            op: j,
        })
        .unwrap();
        let e = await_op(rx).await.unwrap_err();
        assert!(e.is_not_found(), "{e}");
    }
}
