//! The Firecracker driver against the real firecracker binary, launched by
//! bangerd-root. KVM here is nested PVM: the API, configuration,
//! InstanceStart, SendCtrlAltDel, signals and cleanup work; the guest kernel
//! itself cannot boot, which the test name says.

use std::time::Duration;

use banger::domain::{Signal, VmmKind};
use banger::protocol::conn::Client;
use banger::protocol::helper::{NoEvent, PrivReply, PrivRequest};
use banger::vmm::{firecracker, BootSpec, DiskFormat, Vmm};

use crate::support::*;

type Helper = Client<PrivRequest, NoEvent, PrivReply>;

async fn call(h: &mut Helper, r: PrivRequest) -> PrivReply {
    h.call(r, |_| {})
        .await
        .unwrap_or_else(|e| panic!("helper: {e}"))
}

#[test]
fn firecracker_driver_configures_starts_signals_and_cleans_up_but_the_guest_cannot_boot_on_this_host(
) {
    let _heavy = heavy();
    let bin = firecracker::binary()
        .expect("firecracker installed root-owned in /usr/local/bin (scripts/test.sh does it)");
    let v = firecracker::version(&bin).unwrap();
    assert!(v >= firecracker::MIN_VERSION, "{v:?}");
    let a = artifacts();
    let env = TestEnv::new();
    env.start();
    let id = "00000000000f1c00".to_string();
    let layout = banger::paths::Layout::resolve(&banger::paths::Env {
        home: Some(env.root().join("home")),
        xdg_config_home: Some(env.root().join("config")),
        xdg_state_home: Some(env.root().join("state")),
        xdg_cache_home: Some(shared_cache()),
        xdg_runtime_dir: Some(env.root().join("run")),
        system: false,
        uid: 0,
    });
    let paths = layout.vm(&id);
    std::fs::create_dir_all(&paths.state).unwrap();
    std::fs::create_dir_all(&paths.run).unwrap();
    let root = paths.root_raw();
    banger::fsutil::copy_synced(&a.rootfs, &root).unwrap();
    let work = paths.work_disk();
    banger::fsutil::copy_synced(&a.work_seed, &work).unwrap();
    let rt = rt();
    rt.block_on(async {
        let mut h = Helper::connect(&env.helper_socket()).await.unwrap();
        call(
            &mut h,
            PrivRequest::EnsureBridge {
                name: "banger0".into(),
                address: "172.16.0.1".parse().unwrap(),
                prefix_len: 24,
                dns_port: 0,
            },
        )
        .await;
        call(
            &mut h,
            PrivRequest::CreateTap {
                name: "bgtfc0001".into(),
                bridge: "banger0".into(),
            },
        )
        .await;
        let boot = BootSpec {
            vm_id: id.clone(),
            paths: paths.clone(),
            vcpu: 1,
            memory_mib: 512,
            kernel: a.vmlinux.clone(),
            initrd: Some(a.initrd.clone()),
            cmdline: "console=ttyS0 root=/dev/vda rw".into(),
            disks: vec![
                (root.clone(), DiskFormat::Raw),
                (work.clone(), DiskFormat::Raw),
            ],
            tap: Some("bgtfc0001".into()),
            mac: Some("02:42:ac:10:00:fe".into()),
            kvm: true,
            binary: None,
            incoming: false,
            tcg_tb_mib: 0,
            backing: vec![],
        };
        let driver = firecracker::Firecracker;
        assert_eq!(driver.kind(), VmmKind::Firecracker);
        let pid = match call(
            &mut h,
            PrivRequest::LaunchVmm(Box::new(driver.launch_spec(&boot))),
        )
        .await
        {
            PrivReply::Launched { pid } => pid,
            other => panic!("{other:?}"),
        };
        // Every configuration call and InstanceStart are accepted.
        driver
            .boot(&boot)
            .await
            .expect("configuration and InstanceStart");
        assert!(banger::host::process::pid_alive(pid));
        // The instance is running from Firecracker's point of view.
        let info = firecracker::api(&paths.api_socket(), "GET", "/", None)
            .await
            .unwrap();
        assert!(info.contains("\"state\":\"Running\""), "{info}");
        // A full snapshot (pause, state and memory files, resume), as
        // `vm snapshot` asks of Firecracker where it can boot guests.
        let (state, mem) = (paths.state.join("fc.state"), paths.state.join("fc.mem"));
        firecracker::snapshot_create(&paths.api_socket(), &state, &mem)
            .await
            .expect("PUT /snapshot/create");
        assert_eq!(std::fs::metadata(&mem).unwrap().len(), 512 << 20);
        assert!(std::fs::metadata(&state).unwrap().len() > 0);
        let info = firecracker::api(&paths.api_socket(), "GET", "/", None)
            .await
            .unwrap();
        assert!(info.contains("\"state\":\"Running\""), "resumed: {info}");
        driver.powerdown(&paths).await.expect("SendCtrlAltDel");
        // The helper lists it as the owner's banger VMM, and signals it.
        match call(&mut h, PrivRequest::ListVmms).await {
            PrivReply::Vmms(v) => assert!(v.iter().any(|p| p.pid == pid && p.vm_id == id), "{v:?}"),
            other => panic!("{other:?}"),
        }
        let e = h
            .call(
                PrivRequest::SignalVmm {
                    pid: 1,
                    signal: Signal::Kill,
                },
                |_| {},
            )
            .await;
        assert!(e.is_err(), "pid 1 is not a banger VMM");
        call(
            &mut h,
            PrivRequest::SignalVmm {
                pid,
                signal: Signal::Kill,
            },
        )
        .await;
        assert!(
            banger::host::process::wait_exit(pid, Duration::from_secs(10)).await,
            "firecracker exited"
        );
        // A fresh Firecracker loads that snapshot (same drives, and a tap of
        // the same name: made again, as the kernel may keep the old one
        // attached for a moment after its process is gone).
        let _ = std::fs::remove_file(paths.api_socket());
        let _ = std::fs::remove_file(paths.vsock_socket());
        for req in [
            PrivRequest::DeleteTap {
                name: "bgtfc0001".into(),
            },
            PrivRequest::CreateTap {
                name: "bgtfc0001".into(),
                bridge: "banger0".into(),
            },
        ] {
            call(&mut h, req).await;
        }
        let pid = match call(
            &mut h,
            PrivRequest::LaunchVmm(Box::new(driver.launch_spec(&boot))),
        )
        .await
        {
            PrivReply::Launched { pid } => pid,
            other => panic!("{other:?}"),
        };
        firecracker::wait_api(&paths.api_socket(), Duration::from_secs(10))
            .await
            .unwrap();
        firecracker::snapshot_load(&paths.api_socket(), &state, &mem)
            .await
            .expect("PUT /snapshot/load");
        let info = firecracker::api(&paths.api_socket(), "GET", "/", None)
            .await
            .unwrap();
        assert!(info.contains("\"state\":\"Running\""), "restored: {info}");
        call(
            &mut h,
            PrivRequest::SignalVmm {
                pid,
                signal: Signal::Kill,
            },
        )
        .await;
        assert!(
            banger::host::process::wait_exit(pid, Duration::from_secs(10)).await,
            "the restored firecracker exited"
        );
        call(
            &mut h,
            PrivRequest::DeleteTap {
                name: "bgtfc0001".into(),
            },
        )
        .await;
    });
    // A killed firecracker cannot unlink its socket: removing the VM's
    // directories is banger's (`ops::lifecycle::delete`, tested there).
    assert!(paths.api_socket().exists());
    banger::fsutil::remove_all(&paths.run).unwrap();
    banger::fsutil::remove_all(&paths.state).unwrap();
}
