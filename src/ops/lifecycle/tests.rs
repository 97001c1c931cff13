use super::*;
use crate::guest::session::AgentChannel;
use crate::ops::testing::{hostile_agent, Fakes, Hostile, LaunchMode};
use crate::ops::Privileged;
use std::sync::atomic::Ordering;

fn stages() -> (Stages, tokio::sync::mpsc::Receiver<crate::domain::Event>) {
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    (Stages::new(tx), rx)
}

/// Nothing the failed boot acquired is held any more.
fn assert_nothing_held(f: &Fakes, rec: &VmRecord) {
    assert_eq!(rec.state, VmState::Error, "{rec:?}");
    assert!(rec.vmm_pid.is_none() && rec.tap.is_none(), "{rec:?}");
    let stored = f.ctx.store.get_vm(&rec.id).unwrap().unwrap();
    assert_eq!(&stored, rec, "the store holds what was returned");
    assert_eq!(
        *f.taps.leased.lock().unwrap(),
        *f.taps.released.lock().unwrap(),
        "every leased tap was given back"
    );
    for pid in f.helper.launched() {
        assert!(!pid_alive(pid), "VMM {pid} still runs");
    }
}

#[tokio::test]
async fn a_vmm_that_exits_at_once_leaves_the_vm_in_error_holding_nothing() {
    let f = Fakes::new();
    f.artifacts();
    *f.helper.mode.lock().unwrap() = LaunchMode::ExitAtOnce;
    let rec = f.vm("early", true);
    let (mut st, _rx) = stages();
    let (rec, r) = start(&f.ctx, &*f.children, rec, &mut st).await;
    let e = r.unwrap_err();
    // At once, or (when the fake boot won the race) during the boot.
    assert!(e.to_string().contains("exited"), "{}", e.to_string());
    assert!(rec.last_error.as_deref().unwrap().contains("exited"));
    assert_nothing_held(&f, &rec);
    assert_eq!(f.helper.count("enable_nat"), 1);
    assert_eq!(f.helper.count("disable_nat"), 1, "NAT rules removed");
    assert!(
        f.children.agent.lock().unwrap().is_none(),
        "the agent session of the failed boot is closed"
    );
}

#[tokio::test]
async fn a_helper_that_refuses_nat_gets_no_vmm_launched_and_the_tap_back() {
    let f = Fakes::new();
    f.artifacts();
    f.helper.refuse_nat.store(true, Ordering::SeqCst);
    let rec = f.vm("nonat", true);
    let (mut st, _rx) = stages();
    let (rec, r) = start(&f.ctx, &*f.children, rec, &mut st).await;
    assert!(r.unwrap_err().to_string().contains("refusing NAT"));
    assert_eq!(f.helper.count("launch_vmm"), 0);
    assert_eq!(f.taps.leased.lock().unwrap().len(), 1);
    assert_nothing_held(&f, &rec);
    let paths = f.paths(&rec);
    assert!(!paths.root_qcow2().exists(), "no disks were made");
}

#[tokio::test]
async fn a_guest_that_hangs_in_boot_is_relaunched_once_then_killed_at_the_deadline() {
    let f = Fakes::new();
    f.artifacts();
    let rec = f.vm("silent", false);
    let (mut st, _rx) = stages();
    let (rec, r) = start(&f.ctx, &*f.children, rec, &mut st).await;
    let e = r.unwrap_err();
    assert!(
        e.to_string().contains("did not answer"),
        "{}",
        e.to_string()
    );
    assert_eq!(
        f.helper.count("launch_vmm"),
        2,
        "one relaunch after the stall"
    );
    assert_eq!(f.helper.count("signal_vmm"), 2, "both VMMs were killed");
    assert_eq!(f.helper.launched().len(), 0, "the fake helper reaped it");
    assert!(
        f.children.agent.lock().unwrap().is_none(),
        "the session is closed"
    );
    assert_nothing_held(&f, &rec);
    // The disks stay for the next start.
    assert!(disks::exist(&f.paths(&rec), rec.vmm));
}

/// A VM that runs (a live fake VMM, a tap, NAT) without a guest that
/// answers anything.
fn running(f: &Fakes, name: &str) -> VmRecord {
    let mut rec = f.vm(name, true);
    rec.state = VmState::Running;
    rec.vmm_pid = Some(f.helper.spawn_vmm());
    rec.tap = Some("bgtfake99".into());
    f.taps.leased.lock().unwrap().push("bgtfake99".into());
    f.ctx.store.put_vm(&rec).unwrap();
    rec
}

#[tokio::test]
async fn stopping_a_silent_guest_presses_the_power_button_then_kills() {
    let f = Fakes::new();
    f.artifacts();
    let rec = running(&f, "deaf");
    let pid = rec.vmm_pid.unwrap();
    let (mut st, mut rx) = stages();
    let (rec, r) = stop(&f.ctx, &*f.children, rec, &mut st).await;
    r.unwrap();
    assert_eq!(rec.state, VmState::Stopped);
    assert_eq!(f.drivers.powerdowns.load(Ordering::SeqCst), 1);
    assert!(!pid_alive(pid));
    assert!(rec.vmm_pid.is_none() && rec.tap.is_none());
    assert_eq!(*f.taps.released.lock().unwrap(), ["bgtfake99"]);
    assert_eq!(f.helper.count("disable_nat"), 1);
    let mut said = Vec::new();
    while let Ok(crate::domain::Event::Stage { detail, .. }) = rx.try_recv() {
        said.push(detail);
    }
    assert!(said.iter().any(|d| d.contains("killed")), "{said:?}");
}

#[tokio::test]
async fn reaping_a_dead_vmm_releases_its_tap_and_nat() {
    let f = Fakes::new();
    let rec = running(&f, "gone");
    let pid = rec.vmm_pid.unwrap();
    f.helper.signal_vmm(pid, Signal::Kill).await.unwrap();
    let rec = reap(&f.ctx, &*f.children, rec).await;
    assert_eq!(rec.state, VmState::Stopped);
    assert!(rec.vmm_pid.is_none() && rec.tap.is_none());
    assert_eq!(*f.taps.released.lock().unwrap(), ["bgtfake99"]);
    assert_eq!(f.helper.count("disable_nat"), 1);
    assert_eq!(f.ctx.store.get_vm(&rec.id).unwrap().unwrap(), rec);
}

#[tokio::test]
async fn reaping_leaves_a_live_vmm_alone() {
    let f = Fakes::new();
    let rec = running(&f, "alive");
    let r = reap(&f.ctx, &*f.children, rec.clone()).await;
    assert_eq!(r, rec);
    assert!(f.taps.released.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_non_terminating_signal_does_not_wait_or_reap() {
    let f = Fakes::new();
    let rec = running(&f, "usr");
    let t = Instant::now();
    let (r, res) = kill(&f.ctx, &*f.children, rec.clone(), Signal::Usr1).await;
    res.unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "it waited for an exit"
    );
    assert_eq!(r.state, VmState::Running, "not reaped");
    let (r, res) = kill(&f.ctx, &*f.children, rec, Signal::Kill).await;
    res.unwrap();
    assert_eq!(r.state, VmState::Stopped);
    assert!(f.taps.released.lock().unwrap().len() == 1);
}

#[tokio::test]
async fn a_delete_while_the_helper_is_down_keeps_the_vm_its_pid_and_tap() {
    let f = Fakes::new();
    let rec = running(&f, "keep");
    let pid = rec.vmm_pid.unwrap();
    f.helper.down.store(true, Ordering::SeqCst);
    let e = delete(&f.ctx, &*f.children, rec.clone()).await.unwrap_err();
    assert!(e.to_string().contains("still running"), "{}", e.to_string());
    assert!(pid_alive(pid), "the VMM was never reachable");
    let stored = f.ctx.store.get_vm(&rec.id).unwrap().expect("record kept");
    assert_eq!(stored.state, VmState::Error);
    assert_eq!(stored.vmm_pid, Some(pid), "the pid is kept");
    assert_eq!(stored.tap.as_deref(), Some("bgtfake99"), "the tap is kept");
    assert!(f.taps.released.lock().unwrap().is_empty());
    // Once the helper is back, the delete goes through.
    f.helper.down.store(false, Ordering::SeqCst);
    delete(&f.ctx, &*f.children, stored).await.unwrap();
    assert!(!pid_alive(pid));
    assert!(f.ctx.store.get_vm(&rec.id).unwrap().is_none());
}

#[tokio::test]
async fn a_failed_start_with_the_helper_gone_keeps_the_live_vmm_recorded() {
    let f = Fakes::new();
    f.artifacts();
    let rec = f.vm("orphaned", false);
    let (mut st, _rx) = stages();
    // The helper goes away mid-boot: the guest never answers, and the
    // kill that follows cannot be delivered.
    let helper = f.helper.clone();
    let flip = tokio::spawn(async move {
        while helper.count("launch_vmm") == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        helper.down.store(true, Ordering::SeqCst);
    });
    let (rec, r) = start(&f.ctx, &*f.children, rec, &mut st).await;
    flip.await.unwrap();
    assert!(r.is_err());
    let pid = rec.vmm_pid.expect("the pid is kept");
    assert!(pid_alive(pid));
    assert_eq!(rec.state, VmState::Error);
    assert!(rec.tap.is_some(), "the tap is kept while the VMM runs");
    let stored = f.ctx.store.get_vm(&rec.id).unwrap().unwrap();
    assert_eq!(stored.vmm_pid, Some(pid));
    f.helper.down.store(false, Ordering::SeqCst);
}

#[tokio::test]
async fn kill_after_an_aborted_start_takes_what_it_launched() {
    let f = Fakes::new();
    let mut rec = f.vm("aborted", true);
    // What an aborted start leaves: state starting, a tap recorded, a
    // VMM launched whose pid never reached the record.
    rec.state = VmState::Starting;
    rec.tap = Some("bgtfake98".into());
    f.taps.leased.lock().unwrap().push("bgtfake98".into());
    f.ctx.store.put_vm(&rec).unwrap();
    let stray = f.helper.spawn_vmm_for(&rec.id);
    let (rec, r) = kill(&f.ctx, &*f.children, rec, Signal::Kill).await;
    r.unwrap();
    assert!(!pid_alive(stray), "the unrecorded VMM was found and killed");
    assert_eq!(rec.state, VmState::Stopped);
    assert_eq!(*f.taps.released.lock().unwrap(), ["bgtfake98"]);
    assert_eq!(f.helper.count("disable_nat"), 1);
}

/// Serves `how` on the VM's agent socket after every VMM launch (a
/// launch removes the socket file, as QEMU needs).
fn hostile_after_each_launch(f: &Fakes, rec: &VmRecord, how: Hostile) {
    let (helper, sock) = (f.helper.clone(), f.paths(rec).agent_socket());
    tokio::spawn(async move {
        let (mut seen, mut agent) = (0, None);
        loop {
            let n = helper.count("launch_vmm");
            if n != seen {
                seen = n;
                if let Some(a) = agent.take() {
                    tokio::task::JoinHandle::abort(&a);
                }
                agent = Some(hostile_agent(sock.clone(), how.clone()));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
}

fn health(boot_id: &str, init: &str) -> banger_agent::api::Healthz {
    banger_agent::api::Healthz {
        boot_id: boot_id.into(),
        uptime_s: 1.0,
        hostname: "h".into(),
        agent_version: "x".into(),
        setup_errors: vec![],
        protocol: banger_agent::proto::VERSION,
        init: init.into(),
    }
}

#[tokio::test]
async fn a_guest_reporting_hostile_strings_boots_without_them_being_kept() {
    let f = Fakes::new();
    f.artifacts();
    let rec = f.vm("liar", false);
    // Multi-byte characters where a byte slice would split one, a
    // newline, and far too much.
    let boot = format!("{}\n* ssh-ed25519 AAAA{}", "é".repeat(40), "ß".repeat(5000));
    hostile_after_each_launch(&f, &rec, Hostile::Health(health(&boot, &"ü".repeat(9000))));
    let (mut st, mut rx) = stages();
    let (rec, r) = start(&f.ctx, &*f.children, rec, &mut st).await;
    r.unwrap();
    let id = rec.boot_id.clone().unwrap();
    assert!(id.len() <= 64, "{id}");
    assert!(
        id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
        "{id}"
    );
    let mut detail = String::new();
    while let Ok(e) = rx.try_recv() {
        detail.push_str(&format!("{e:?}"));
    }
    assert!(!detail.contains('ü') && !detail.contains('\n'), "{detail}");
    let _ = kill(&f.ctx, &*f.children, rec, Signal::Kill).await;
}

#[tokio::test]
async fn a_host_key_with_an_injected_line_plants_nothing() {
    let f = Fakes::new();
    let rec = running(&f, "keys");
    let good = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
    let sock = f.paths(&rec).agent_socket();
    std::fs::create_dir_all(sock.parent().unwrap()).unwrap();
    let evil = banger_agent::api::HostKey {
        algorithm: "ssh-ed25519".into(),
        key: format!("{good}\n* ssh-ed25519 {good}"),
    };
    let a = hostile_agent(sock.clone(), Hostile::HostKeys(vec![evil]));
    let agent = AgentSession::start(AgentChannel::Serial(sock.clone()));
    let e = pin_host_key(&f.ctx, &agent, &rec, Duration::from_secs(3))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("unusable host key"),
        "{}",
        e.to_string()
    );
    let files = SshFiles::of(&f.ctx.layout);
    let known = std::fs::read_to_string(&files.known_hosts).unwrap_or_default();
    assert!(!known.contains('*'), "{known}");
    a.abort();
    // The same key, sent plainly, is pinned for exactly this VM.
    let honest = banger_agent::api::HostKey {
        algorithm: "ssh-ed25519".into(),
        key: good.into(),
    };
    let sock2 = sock.with_file_name("honest.sock");
    let _a = hostile_agent(sock2.clone(), Hostile::HostKeys(vec![honest]));
    let agent = AgentSession::start(AgentChannel::Serial(sock2));
    pin_host_key(&f.ctx, &agent, &rec, Duration::from_secs(10))
        .await
        .unwrap();
    let known = std::fs::read_to_string(&files.known_hosts).unwrap();
    assert_eq!(known.lines().count(), 1, "{known}");
    assert!(known.starts_with("keys.vm,"), "{known}");
}

#[tokio::test]
async fn endless_and_silent_answers_are_bounded() {
    let d = tempfile::tempdir().unwrap();
    for (how, name) in [(Hostile::Endless, "endless"), (Hostile::Silent, "silent")] {
        let sock = d.path().join(name);
        let _a = hostile_agent(sock.clone(), how);
        let agent = AgentSession::start(AgentChannel::Serial(sock));
        agent.wait_up(Duration::from_secs(5)).await.unwrap();
        let t = Instant::now();
        let e = agent.health(Duration::from_secs(2)).await.unwrap_err();
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{name}: {:?}",
            t.elapsed()
        );
        let e = e.to_string();
        match name {
            "endless" => assert!(e.contains("limit"), "{name}: {e}"),
            _ => assert!(e.contains("2s") || e.contains("time"), "{name}: {e}"),
        }
    }
}

#[tokio::test]
async fn delete_kills_removes_files_the_record_and_the_pin() {
    let f = Fakes::new();
    let rec = running(&f, "doomed");
    let pid = rec.vmm_pid.unwrap();
    let paths = f.paths(&rec);
    std::fs::create_dir_all(&paths.state).unwrap();
    std::fs::create_dir_all(&paths.run).unwrap();
    std::fs::write(paths.work_disk(), b"disk").unwrap();
    let files = SshFiles::of(&f.ctx.layout);
    let ip = rec.ip.clone().unwrap();
    files.pin("doomed", &ip, "ssh-ed25519 AAAAkey").unwrap();
    files
        .pin("other", "172.16.0.200", "ssh-ed25519 BBBBkey")
        .unwrap();
    delete(&f.ctx, &*f.children, rec.clone()).await.unwrap();
    assert!(!pid_alive(pid));
    assert!(!paths.state.exists() && !paths.run.exists());
    assert!(f.ctx.store.get_vm(&rec.id).unwrap().is_none());
    let known = std::fs::read_to_string(&files.known_hosts).unwrap();
    assert!(
        !known.contains("AAAAkey") && known.contains("BBBBkey"),
        "{known}"
    );
    assert_eq!(*f.taps.released.lock().unwrap(), ["bgtfake99"]);
}

#[tokio::test]
async fn a_missing_kernel_file_is_named() {
    let f = Fakes::new();
    f.artifacts();
    let k = f.ctx.store.get_kernel("krn").unwrap().unwrap();
    let vmlinux = std::path::Path::new(&k.dir).join("vmlinux");
    std::fs::remove_file(&vmlinux).unwrap();
    let rec = f.vm("nokernel", false);
    let (mut st, _rx) = stages();
    let (rec, r) = start(&f.ctx, &*f.children, rec, &mut st).await;
    let e = r.unwrap_err();
    assert!(
        e.to_string().contains(&vmlinux.display().to_string()),
        "{}",
        e.to_string()
    );
    assert_eq!(f.helper.count("launch_vmm"), 0);
    assert_nothing_held(&f, &rec);
}
