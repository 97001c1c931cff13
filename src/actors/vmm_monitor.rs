//! `VmmMonitor`: watches one VMM process (by pidfd: it is bangerd-root's
//! child, not ours) and tells its VmActor when it exits.

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::vm_actor::VmMsg;

/// Watches `pid` for the VM actor `vm`; stops itself after reporting.
pub struct VmmMonitor {
    pub pid: u32,
    pub vm: ActorRef<VmMsg>,
}

/// Internal: the watched process exited.
pub enum MonitorMsg {
    /// Internal: the process exited.
    Exited,
    /// Test hook: the handler panics (the VmActor starts a new monitor).
    Panic,
}

impl Actor for VmmMonitor {
    type Msg = MonitorMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<MonitorMsg>,
        _: (),
    ) -> Result<(), ActorProcessingErr> {
        let pid = self.pid;
        tokio::spawn(async move {
            crate::host::process::wait_exit_forever(pid).await;
            let _ = myself.cast(MonitorMsg::Exited);
        });
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<MonitorMsg>,
        msg: MonitorMsg,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        if let MonitorMsg::Panic = msg {
            panic!("test hook: the VmmMonitor of pid {} panics", self.pid);
        }
        tracing::info!(pid = self.pid, "VMM exited");
        let _ = self.vm.cast(VmMsg::VmmExited(self.pid));
        myself.stop(Some("reported".into()));
        Ok(())
    }
}
