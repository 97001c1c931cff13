//! Fakes of the `ops` seams, for error paths the real parts cannot produce
//! on demand (a helper that refuses NAT, a VMM that exits at once, a guest
//! that never answers). The "VMM" is a real process (`sleep`), so liveness,
//! pidfds and kills are the real ones.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use super::{BoxFuture, Ctx, Drivers, Privileged, SharedJobs, Taps, Timeouts, VmChildren, Work};
use crate::domain::VmmKind;
use crate::guest::session::{AgentChannel, AgentSession};
use crate::paths::VmPaths;

use crate::domain::Event;
use crate::ops::OpError;
use crate::protocol::helper::{PrivReply, PrivRequest};
use crate::store::{ImageRecord, KernelRecord, Store, VmRecord};
use crate::vmm::LaunchSpec;
use crate::vmm::{BootFut, BootSpec, Vmm};

/// What a launched fake VMM does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaunchMode {
    /// Runs until killed.
    Run,
    /// Exits at once (a VMM that cannot start the guest).
    ExitAtOnce,
}

/// A helper that records every request and runs `sleep` as the VMM.
pub struct FakeHelper {
    pub requests: Mutex<Vec<PrivRequest>>,
    pub refuse_nat: std::sync::atomic::AtomicBool,
    /// Every call fails as if bangerd-root were not running.
    pub down: std::sync::atomic::AtomicBool,
    pub mode: Mutex<LaunchMode>,
    children: Mutex<HashMap<u32, std::process::Child>>,
    /// The VM id each launched VMM was started for (ListVmms answers these).
    vm_ids: Mutex<HashMap<u32, String>>,
}

impl FakeHelper {
    fn new() -> FakeHelper {
        FakeHelper {
            requests: Mutex::new(Vec::new()),
            refuse_nat: Default::default(),
            down: Default::default(),
            mode: Mutex::new(LaunchMode::Run),
            children: Mutex::new(HashMap::new()),
            vm_ids: Mutex::new(HashMap::new()),
        }
    }

    /// Every request so far, by method name.
    pub fn methods(&self) -> Vec<&'static str> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.method())
            .collect()
    }

    pub fn count(&self, method: &str) -> usize {
        self.methods().iter().filter(|m| **m == method).count()
    }

    /// Pids of every VMM launched so far.
    pub fn launched(&self) -> Vec<u32> {
        self.children.lock().unwrap().keys().copied().collect()
    }

    /// Starts a fake VMM directly (for tests that begin with a running VM).
    pub fn spawn_vmm(&self) -> u32 {
        let mode = *self.mode.lock().unwrap();
        let child = match mode {
            LaunchMode::Run => std::process::Command::new("sleep").arg("600").spawn(),
            LaunchMode::ExitAtOnce => std::process::Command::new("true").spawn(),
        }
        .expect("spawning a fake VMM");
        let pid = child.id();
        self.children.lock().unwrap().insert(pid, child);
        pid
    }

    /// Starts a fake VMM for VM `vm_id` (listed by ListVmms).
    pub fn spawn_vmm_for(&self, vm_id: &str) -> u32 {
        let pid = self.spawn_vmm();
        self.vm_ids.lock().unwrap().insert(pid, vm_id.to_string());
        pid
    }
}

impl Drop for FakeHelper {
    fn drop(&mut self) {
        for (_, mut c) in self.children.lock().unwrap().drain() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl FakeHelper {
    fn call(&self, request: PrivRequest) -> BoxFuture<'_, Result<PrivReply, OpError>> {
        self.requests.lock().unwrap().push(request.clone());
        Box::pin(async move {
            if self.down.load(Ordering::SeqCst) {
                return Err(OpError::failed("bangerd-root is not running (test)"));
            }
            match request {
                PrivRequest::EnableNat { .. } if self.refuse_nat.load(Ordering::SeqCst) => {
                    Err(OpError::invalid("refusing NAT (test)"))
                }
                PrivRequest::LaunchVmm(spec) => Ok(PrivReply::Launched {
                    pid: self.spawn_vmm_for(&spec.vm_id),
                }),
                PrivRequest::SignalVmm { pid, signal } => {
                    let child = self.children.lock().unwrap().remove(&pid);
                    match child {
                        // A VMM handles USR1 and USR2 itself (`sleep` would
                        // die of them): those are recorded, not delivered.
                        Some(c) if !signal.terminates() => {
                            self.children.lock().unwrap().insert(pid, c);
                            Ok(PrivReply::Done)
                        }
                        Some(mut c) => {
                            let _ = nix::sys::signal::kill(
                                nix::unistd::Pid::from_raw(pid as i32),
                                signal.to_nix(),
                            );
                            let _ = c.wait();
                            Ok(PrivReply::Done)
                        }
                        None => Err(OpError::invalid(format!("pid {pid} is not a VMM"))),
                    }
                }
                PrivRequest::ListVmms => {
                    let children = self.children.lock().unwrap();
                    let ids = self.vm_ids.lock().unwrap();
                    Ok(PrivReply::Vmms(
                        children
                            .keys()
                            .filter_map(|pid| {
                                ids.get(pid).map(|id| crate::vmm::VmmProcess {
                                    pid: *pid,
                                    vm_id: id.clone(),
                                })
                            })
                            .collect(),
                    ))
                }
                PrivRequest::ListTaps => Ok(PrivReply::Taps(vec![])),
                _ => Ok(PrivReply::Done),
            }
        })
    }
}

fn done(r: Result<PrivReply, OpError>) -> Result<(), OpError> {
    r.map(drop)
}

impl Privileged for FakeHelper {
    fn ensure_bridge(&self, b: super::Bridge) -> BoxFuture<'_, Result<(), OpError>> {
        let r = self.call(PrivRequest::EnsureBridge {
            name: b.name,
            address: b.address,
            prefix_len: b.prefix_len,
            dns_port: b.dns_port,
        });
        Box::pin(async move { done(r.await) })
    }
    fn create_tap(&self, name: String, bridge: String) -> BoxFuture<'_, Result<(), OpError>> {
        let r = self.call(PrivRequest::CreateTap { name, bridge });
        Box::pin(async move { done(r.await) })
    }
    fn delete_tap(&self, name: String) -> BoxFuture<'_, Result<(), OpError>> {
        let r = self.call(PrivRequest::DeleteTap { name });
        Box::pin(async move { done(r.await) })
    }
    fn list_taps(&self) -> BoxFuture<'_, Result<Vec<crate::host::net::TapInfo>, OpError>> {
        let r = self.call(PrivRequest::ListTaps);
        Box::pin(async move {
            match r.await? {
                PrivReply::Taps(t) => Ok(t),
                other => Err(OpError::failed(format!("unexpected {other:?}"))),
            }
        })
    }
    fn guard_tap(
        &self,
        name: String,
        ip: std::net::Ipv4Addr,
        mac: String,
    ) -> BoxFuture<'_, Result<(), OpError>> {
        let r = self.call(PrivRequest::GuardTap { name, ip, mac });
        Box::pin(async move { done(r.await) })
    }
    fn nat(
        &self,
        on: bool,
        vm_id: String,
        ip: std::net::Ipv4Addr,
        bridge: String,
    ) -> BoxFuture<'_, Result<(), OpError>> {
        let r = self.call(if on {
            PrivRequest::EnableNat { vm_id, ip, bridge }
        } else {
            PrivRequest::DisableNat { vm_id, ip, bridge }
        });
        Box::pin(async move { done(r.await) })
    }
    fn police(
        &self,
        vm_id: String,
        ip: std::net::Ipv4Addr,
        bridge: String,
        port: u16,
    ) -> BoxFuture<'_, Result<(), OpError>> {
        let r = self.call(PrivRequest::PoliceEgress {
            vm_id,
            ip,
            bridge,
            port,
        });
        Box::pin(async move { done(r.await) })
    }

    fn link_vms(
        &self,
        bridge: String,
        a: (String, std::net::Ipv4Addr),
        b: (String, std::net::Ipv4Addr),
    ) -> BoxFuture<'_, Result<(), OpError>> {
        let r = self.call(PrivRequest::LinkVms {
            bridge,
            a_id: a.0,
            a_ip: a.1,
            b_id: b.0,
            b_ip: b.1,
        });
        Box::pin(async move { done(r.await) })
    }
    fn list_nat(&self) -> BoxFuture<'_, Result<Vec<String>, OpError>> {
        let r = self.call(PrivRequest::ListNat);
        Box::pin(async move {
            match r.await? {
                PrivReply::NatVms(v) => Ok(v),
                _ => Ok(vec![]),
            }
        })
    }
    fn route_dns(
        &self,
        bridge: String,
        address: std::net::Ipv4Addr,
        port: u16,
        on: bool,
    ) -> BoxFuture<'_, Result<String, OpError>> {
        let r = self.call(PrivRequest::RouteDns {
            bridge,
            address,
            port,
            on,
        });
        Box::pin(async move { r.await.map(|_| "not routed (test)".to_string()) })
    }
    fn build_rootfs(
        &self,
        spec: crate::image::build::RootfsSpec,
    ) -> BoxFuture<'_, Result<crate::image::build::BuiltRootfs, OpError>> {
        let r = self.call(PrivRequest::BuildRootfs(spec));
        Box::pin(async move {
            r.await?;
            Err(OpError::failed("the fake helper builds no rootfs"))
        })
    }
    fn launch_vmm(&self, spec: LaunchSpec) -> BoxFuture<'_, Result<u32, OpError>> {
        let r = self.call(PrivRequest::LaunchVmm(Box::new(spec)));
        Box::pin(async move {
            match r.await? {
                PrivReply::Launched { pid } => Ok(pid),
                other => Err(OpError::failed(format!("unexpected {other:?}"))),
            }
        })
    }
    fn signal_vmm(
        &self,
        pid: u32,
        signal: crate::domain::Signal,
    ) -> BoxFuture<'_, Result<(), OpError>> {
        let r = self.call(PrivRequest::SignalVmm { pid, signal });
        Box::pin(async move { done(r.await) })
    }
    fn list_vmms(&self) -> BoxFuture<'_, Result<Vec<crate::vmm::VmmProcess>, OpError>> {
        let r = self.call(PrivRequest::ListVmms);
        Box::pin(async move {
            match r.await? {
                PrivReply::Vmms(v) => Ok(v),
                other => Err(OpError::failed(format!("unexpected {other:?}"))),
            }
        })
    }
}

/// A tap pool that hands out numbered names and records what comes back.
#[derive(Default)]
pub struct FakeTaps {
    next: AtomicU32,
    pub leased: Mutex<Vec<String>>,
    pub released: Mutex<Vec<String>>,
}

impl Taps for FakeTaps {
    fn lease(&self) -> BoxFuture<'_, Result<String, OpError>> {
        Box::pin(async move {
            let t = format!("bgtfake{}", self.next.fetch_add(1, Ordering::SeqCst));
            self.leased.lock().unwrap().push(t.clone());
            Ok(t)
        })
    }
    fn release(&self, tap: String) -> BoxFuture<'_, ()> {
        self.released.lock().unwrap().push(tap);
        Box::pin(async {})
    }
}

/// Shared jobs without sharing: each runs at once.
pub struct InlineJobs;

impl SharedJobs for InlineJobs {
    fn run(
        &self,
        _key: &str,
        events: mpsc::Sender<Event>,
        work: Work,
    ) -> BoxFuture<'static, Result<super::Made, OpError>> {
        work(super::Progress::to(events))
    }
}

/// A VMM driver that boots at once and records power-button presses.
#[derive(Default)]
pub struct FakeVmm {
    pub powerdowns: Arc<AtomicU32>,
}

impl Vmm for FakeVmm {
    fn kind(&self) -> VmmKind {
        VmmKind::Qemu
    }
    fn launch_spec(&self, boot: &BootSpec) -> LaunchSpec {
        crate::vmm::qemu::Qemu.launch_spec(boot)
    }
    fn boot<'a>(&'a self, _boot: &'a BootSpec) -> BootFut<'a> {
        Box::pin(async { Ok(()) })
    }
    fn powerdown<'a>(&'a self, _paths: &'a VmPaths) -> BootFut<'a> {
        self.powerdowns.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Ok(()) })
    }
}

/// [`FakeVmm`] for every kind, sharing one power-button counter.
#[derive(Default)]
pub struct FakeDrivers {
    pub powerdowns: Arc<AtomicU32>,
}

impl Drivers for FakeDrivers {
    fn driver(&self, _kind: VmmKind) -> Box<dyn Vmm> {
        Box::new(FakeVmm {
            powerdowns: self.powerdowns.clone(),
        })
    }
}

/// A VM's children: a real agent session (on whatever the channel's socket
/// is, often nothing), the rest counted.
#[derive(Default)]
pub struct FakeChildren {
    pub changes: Mutex<Vec<VmRecord>>,
    pub watched: Mutex<Vec<u32>>,
    pub agent: Mutex<Option<AgentSession>>,
    pub agent_starts: AtomicU32,
    pub agent_stops: AtomicU32,
}

impl VmChildren for FakeChildren {
    fn record_changed(&self, rec: &VmRecord) {
        self.changes.lock().unwrap().push(rec.clone());
    }
    fn watch_vmm(&self, pid: u32) {
        self.watched.lock().unwrap().push(pid);
    }
    fn start_agent(&self, channel: AgentChannel) -> BoxFuture<'_, Result<AgentSession, OpError>> {
        self.agent_starts.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            let s = AgentSession::start(channel);
            *self.agent.lock().unwrap() = Some(s.clone());
            Ok(s)
        })
    }
    fn agent(&self) -> BoxFuture<'_, Option<AgentSession>> {
        Box::pin(async { self.agent.lock().unwrap().clone() })
    }
    fn stop_agent(&self) -> BoxFuture<'_, ()> {
        self.agent_stops.fetch_add(1, Ordering::SeqCst);
        Box::pin(async {
            self.agent.lock().unwrap().take();
        })
    }
}

/// A context over a temporary tree with every seam faked, plus handles to
/// the fakes.
pub struct Fakes {
    pub dir: tempfile::TempDir,
    pub ctx: Arc<Ctx>,
    pub helper: Arc<FakeHelper>,
    pub taps: Arc<FakeTaps>,
    pub drivers: Arc<FakeDrivers>,
    pub children: Arc<FakeChildren>,
}

impl Default for Fakes {
    fn default() -> Self {
        Fakes::new()
    }
}

impl Fakes {
    pub fn new() -> Fakes {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("state.redb")).unwrap());
        let layout = crate::paths::Layout::resolve(&crate::paths::Env {
            home: Some(dir.path().to_path_buf()),
            xdg_runtime_dir: Some(dir.path().join("run")),
            ..Default::default()
        });
        let config = crate::config::Config::load(
            &dir.path().join("none.toml"),
            crate::config::HostFacts {
                cpus: 2,
                memory_bytes: 1 << 30,
            },
        )
        .unwrap();
        let helper = Arc::new(FakeHelper::new());
        let taps = Arc::new(FakeTaps::default());
        let drivers = Arc::new(FakeDrivers::default());
        let ctx = Arc::new(Ctx {
            vault: Arc::new(super::egress::secrets::Vault::new(&layout.state_dir)),
            store,
            layout,
            config,
            helper: helper.clone(),
            taps: taps.clone(),
            images: Arc::new(InlineJobs),
            kernels: Arc::new(InlineJobs),
            drivers: drivers.clone(),
            timeouts: Timeouts {
                boot: Duration::from_secs(2),
                boot_stall: Duration::from_millis(600),
                poweroff: Duration::from_millis(500),
                powerdown: Duration::from_millis(500),
                unresponsive: Duration::from_secs(2),
            },
            guests: Default::default(),
            warming: Default::default(),
            tap_ledger: Default::default(),
            egress: Default::default(),
        });
        Fakes {
            dir,
            ctx,
            helper,
            taps,
            drivers,
            children: Arc::new(FakeChildren::default()),
        }
    }

    /// An image and a kernel with real (small) files, recorded in the store.
    pub fn artifacts(&self) {
        let idir = self.dir.path().join("images/img");
        let kdir = self.dir.path().join("kernels/krn");
        std::fs::create_dir_all(&idir).unwrap();
        std::fs::create_dir_all(&kdir).unwrap();
        std::fs::write(idir.join(crate::image::ROOTFS), vec![0u8; 1 << 20]).unwrap();
        let seed = idir.join(crate::image::WORK_SEED);
        std::fs::File::create(&seed)
            .unwrap()
            .set_len(256 << 20)
            .unwrap();
        let mkfs = std::process::Command::new(crate::host::system_tool("mkfs.ext4").unwrap())
            .args(["-q", "-F"])
            .arg(&seed)
            .output()
            .unwrap();
        assert!(mkfs.status.success(), "{mkfs:?}");
        std::fs::write(kdir.join("vmlinux"), b"not a kernel").unwrap();
        self.ctx
            .store
            .put_image(&ImageRecord {
                name: "img".into(),
                distro: "test".into(),
                arch: "x86_64".into(),
                kernel_ref: "krn".into(),
                dir: idir.display().to_string(),
                rootfs_bytes: 1 << 20,
                work_seed_bytes: 256 << 20,
                rootfs_sha256: String::new(),
                work_seed_sha256: String::new(),
                source: "test".into(),
                created_at_unix: 0,
            })
            .unwrap();
        self.ctx
            .store
            .put_kernel(&KernelRecord {
                name: "krn".into(),
                kernel_version: "0".into(),
                arch: "x86_64".into(),
                source: "test".into(),
                dir: kdir.display().to_string(),
                vmlinux_sha256: String::new(),
                has_initrd: false,
                has_modules: false,
                created_at_unix: 0,
            })
            .unwrap();
    }

    /// A reserved VM record on the artifacts (state `created`).
    pub fn vm(&self, name: &str, nat: bool) -> VmRecord {
        let rec = VmRecord::new(name, "img", "krn", 1, 256, 256 << 20, nat, VmmKind::Qemu);
        let net = &self.ctx.config.network;
        self.ctx
            .store
            .reserve_vm(&rec, net.bridge_ip, net.prefix_len)
            .unwrap()
            .unwrap()
    }

    /// The directories of a VM.
    pub fn paths(&self, rec: &VmRecord) -> VmPaths {
        self.ctx.layout.vm(&rec.id)
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

/// What a hostile guest agent answers every request with.
#[derive(Clone)]
pub enum Hostile {
    /// This health report (any boot id, any init name).
    Health(banger_agent::api::Healthz),
    /// These host keys, and port 22 listening.
    HostKeys(Vec<banger_agent::api::HostKey>),
    /// A response header announcing 4 GiB, then bytes for as long as read.
    Endless,
    /// Reads the request and never answers.
    Silent,
}

/// Plays a guest agent that speaks the channel and mux protocols correctly
/// and answers as `how` says, on the Unix socket `path` (where QEMU's
/// chardev would be). Binds at once, replacing any file there.
pub fn hostile_agent(path: PathBuf, how: Hostile) -> tokio::task::JoinHandle<()> {
    use banger_agent::proto;
    use tokio::io::AsyncWriteExt;
    let _ = std::fs::remove_file(&path);
    let l = tokio::net::UnixListener::bind(&path).expect("binding the hostile agent");
    tokio::spawn(async move {
        while let Ok((c, _)) = l.accept().await {
            let (rd, wr) = tokio::io::split(c);
            let how = how.clone();
            tokio::spawn(banger_agent::serve::serve_channel_with(
                rd,
                wr,
                move |mut s: banger_agent::mux::Stream| {
                    let how = how.clone();
                    tokio::spawn(async move {
                        let Ok(Some((_, req))) = proto::read_msg(&mut s, 64 << 10).await else {
                            return;
                        };
                        let req: proto::Request = match serde_json::from_slice(&req) {
                            Ok(r) => r,
                            Err(_) => return,
                        };
                        let ok =
                            |v: serde_json::Value| serde_json::to_vec(&Ok::<_, String>(v)).unwrap();
                        let body = match (&how, req) {
                            // Its words are hostile; it does say it is ready.
                            (Hostile::Health(_), proto::Request::Ready { .. }) => {
                                ok(serde_json::to_value(banger_agent::api::Readiness {
                                    ready: true,
                                    ..Default::default()
                                })
                                .unwrap())
                            }
                            (Hostile::Health(h), _) => ok(serde_json::to_value(h).unwrap()),
                            (Hostile::HostKeys(k), proto::Request::HostKeys) => {
                                ok(serde_json::to_value(k).unwrap())
                            }
                            (Hostile::HostKeys(_), proto::Request::Ports) => {
                                ok(serde_json::json!([
                                    {"proto": "tcp", "address": "0.0.0.0", "port": 22, "pid": 1, "process": "sshd"}
                                ]))
                            }
                            (Hostile::HostKeys(_), _) => ok(serde_json::json!(null)),
                            (Hostile::Endless, _) => {
                                let mut hdr = vec![proto::RESPONSE];
                                hdr.extend_from_slice(&u32::MAX.to_be_bytes());
                                let _ = s.write_all(&hdr).await;
                                let junk = vec![b'x'; 64 << 10];
                                while s.write_all(&junk).await.is_ok() {}
                                return;
                            }
                            (Hostile::Silent, _) => {
                                std::future::pending::<()>().await;
                                return;
                            }
                        };
                        let _ = proto::write_msg(&mut s, proto::RESPONSE, &body).await;
                        let _ = s.shutdown().await;
                    });
                },
            ));
        }
    })
}
