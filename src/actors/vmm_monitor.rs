//! `VmmMonitor`: watches one VMM process (by pidfd: it is bangerd-root's
//! child, not ours) and tells its VmActor when it exits; for QEMU it also
//! drains the guest's serial console into its log (`vmm::serial`).

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::vm_actor::VmMsg;

/// Watches `pid` for the VM actor `vm`; stops itself after reporting.
pub struct VmmMonitor {
    pub pid: u32,
    pub vm: ActorRef<VmMsg>,
    /// QEMU: (the drain monitor's socket, the serial log).
    pub serial: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// The drain task, stopped with the monitor.
pub struct MonitorState(Option<tokio::task::AbortHandle>);

impl Drop for MonitorState {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
    }
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
    type State = MonitorState;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<MonitorMsg>,
        _: (),
    ) -> Result<MonitorState, ActorProcessingErr> {
        let pid = self.pid;
        tokio::spawn(async move {
            crate::host::process::wait_exit_forever(pid).await;
            let _ = myself.cast(MonitorMsg::Exited);
        });
        let drain = self.serial.clone().map(|(sock, log)| {
            tokio::spawn(async move { crate::vmm::serial::drain(&sock, &log).await }).abort_handle()
        });
        Ok(MonitorState(drain))
    }

    async fn handle(
        &self,
        myself: ActorRef<MonitorMsg>,
        msg: MonitorMsg,
        _: &mut MonitorState,
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
