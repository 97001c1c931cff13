//! QEMU microvm: the command line (built by bangerd-root from a typed
//! [`QemuMachine`]) and the driver (QMP for readiness and power-off).

use std::path::Path;
use std::time::Duration;

use super::{BootFut, BootSpec, Vmm, VmmError};
use super::{LaunchSpec, QemuMachine};
use crate::domain::VmmKind;
use crate::paths::VmPaths;

/// The kernel command line: console, root, stable interface names, the
/// banger guest parameters, and under TCG the TSC rate (guest calibration can
/// hang under emulation).
pub fn kernel_cmdline(kvm: bool, params: &banger_agent::cmdline::GuestParams) -> String {
    let mut t = vec![
        "console=ttyS0".to_string(),
        "root=/dev/vda".into(),
        "rw".into(),
        "net.ifnames=0".into(),
        // A panicking guest reboots (QEMU, with -no-reboot, exits) after a
        // second: time for the daemon to drain the panic's lines from the
        // console ring (`vmm::serial`) before QEMU and the ring are gone.
        "panic=1".into(),
        "quiet".into(),
    ];
    if !kvm {
        t.push(format!("tsc_early_khz={}", crate::host::cpu::tsc_khz()));
        t.push("tsc=reliable".into());
    }
    t.extend(params.to_tokens());
    t.join(" ")
}

/// A path inside a QEMU `-chardev` option: commas are doubled.
fn opt_path(p: &std::path::Path) -> String {
    p.display().to_string().replace(',', ",,")
}

/// The argv (without the program) of `qemu-system-x86_64` for `m`, with its
/// QMP socket at `qmp`.
/// QEMU's argv for `m`; with `tap_fd`, the tap is the inherited file
/// descriptor of that number rather than opened by name.
/// QEMU's seccomp policy for every VMM.
pub const SANDBOX: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

pub fn argv(m: &QemuMachine, qmp: Option<&Path>, tap_fd: Option<i32>) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "-M".into(),
        "microvm".into(),
        "-accel".into(),
        match (m.kvm, m.tcg_tb_mib) {
            (true, _) => "kvm".into(),
            (false, 0) => "tcg".into(),
            (false, mib) => format!("tcg,tb-size={mib}"),
        },
        "-cpu".into(),
        if m.kvm { "host" } else { "max" }.into(),
        "-smp".into(),
        m.vcpu.to_string(),
        "-m".into(),
        format!("{}M", m.memory_mib),
        "-display".into(),
        "none".into(),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-no-reboot".into(),
        // seccomp: no obsolete syscalls, no setuid, no fork/exec, no
        // scheduler or affinity changes. Migration goes through an fd the
        // daemon passes, so nothing here needs to spawn.
        "-sandbox".into(),
        SANDBOX.into(),
        "-kernel".into(),
        m.kernel.display().to_string(),
        "-append".into(),
        m.cmdline.clone(),
        // A ring in QEMU's memory, drained by the daemon into the serial
        // log over its own monitor (`vmm::serial`): with no daemon, a guest
        // writing to its console without end fills no disk. Without a QMP
        // socket (QEMU run by hand in tests and benches) nobody drains: a
        // plain file then.
        "-chardev".into(),
        match qmp {
            Some(_) => format!(
                "ringbuf,id={},size={}",
                super::serial::SERIAL_DEVICE,
                super::serial::SERIAL_RING
            ),
            None => format!(
                "file,id={},path={},append=on",
                super::serial::SERIAL_DEVICE,
                opt_path(&m.serial_log)
            ),
        },
        "-serial".into(),
        format!("chardev:{}", super::serial::SERIAL_DEVICE),
    ];
    if let Some(i) = &m.initrd {
        a.extend(["-initrd".into(), i.display().to_string()]);
    }
    for (n, (d, fmt)) in m.disks.iter().enumerate() {
        a.extend([
            "-drive".into(),
            format!(
                "id=disk{n},file={},format={fmt},if=none,cache=writeback,aio=threads",
                d.display()
            ),
            "-device".into(),
            format!("virtio-blk-device,drive=disk{n}"),
        ]);
    }
    if let (Some(tap), Some(mac)) = (&m.tap, &m.mac) {
        a.extend([
            "-netdev".into(),
            match tap_fd {
                // The helper opened the tap (the owner need not be able to
                // open /dev/net/tun); QEMU inherits the queue.
                Some(fd) => format!("tap,id=net0,fd={fd}"),
                None => format!("tap,id=net0,ifname={tap},script=no,downscript=no"),
            },
            "-device".into(),
            format!("virtio-net-device,netdev=net0,mac={mac}"),
        ]);
    }
    if let Some(p) = &m.agent_socket {
        // The agent's channel: a virtio-serial port whose other end is a
        // Unix socket QEMU listens on (no vhost-user device: it migrates).
        a.extend([
            "-device".into(),
            "virtio-serial-device,max_ports=2".into(),
            "-chardev".into(),
            format!("socket,id=agent,path={},server=on,wait=off", opt_path(p)),
            "-device".into(),
            format!(
                "virtserialport,chardev=agent,name={}",
                banger_agent::channel::PORT_NAME
            ),
        ]);
    }
    if m.incoming {
        a.extend(["-incoming".into(), "defer".into()]);
    }
    if let Some(q) = qmp {
        a.extend([
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", q.display()),
            // A second monitor, the serial drain's own (QMP takes one
            // client at a time).
            "-chardev".into(),
            format!(
                "socket,id=drain,path={},server=on,wait=off",
                opt_path(&super::serial::socket_beside(q))
            ),
            "-mon".into(),
            "chardev=drain,mode=control".into(),
        ]);
    }
    a
}

/// The QEMU driver.
pub struct Qemu;

impl Vmm for Qemu {
    fn kind(&self) -> VmmKind {
        VmmKind::Qemu
    }

    fn launch_spec(&self, b: &BootSpec) -> LaunchSpec {
        LaunchSpec {
            vm_id: b.vm_id.clone(),
            kind: VmmKind::Qemu,
            qemu: Some(QemuMachine {
                kvm: b.kvm,
                vcpu: b.vcpu,
                memory_mib: b.memory_mib,
                kernel: b.kernel.clone(),
                initrd: b.initrd.clone(),
                cmdline: b.cmdline.clone(),
                disks: b
                    .disks
                    .iter()
                    .map(|(p, f)| (p.clone(), f.as_str().to_string()))
                    .collect(),
                tap: b.tap.clone(),
                mac: b.mac.clone(),
                agent_socket: Some(b.paths.agent_socket()),
                serial_log: b.paths.serial_log(),
                incoming: b.incoming,
                tcg_tb_mib: b.tcg_tb_mib,
            }),
            control_socket: b.paths.qmp_socket(),
            log: b.paths.vmm_log(),
            binary: b.binary.clone(),
            reads: b.reads(),
        }
    }

    fn boot<'a>(&'a self, b: &'a BootSpec) -> BootFut<'a> {
        Box::pin(async move {
            let mut q =
                super::qmp::connect_within(&b.paths.qmp_socket(), Duration::from_secs(30)).await?;
            let st = q.execute("query-status", None).await?;
            match st.get("status").and_then(|s| s.as_str()) {
                Some("running") => Ok(()),
                Some("inmigrate") if b.incoming => Ok(()),
                other => Err(VmmError::Api(format!(
                    "QEMU is not running the guest (status {other:?})"
                ))),
            }
        })
    }

    fn powerdown<'a>(&'a self, paths: &'a VmPaths) -> BootFut<'a> {
        Box::pin(async move {
            let mut q = super::qmp::Qmp::connect(&paths.qmp_socket()).await?;
            q.execute("system_powerdown", None).await.map(drop)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> QemuMachine {
        QemuMachine {
            kvm: false,
            vcpu: 2,
            memory_mib: 1024,
            kernel: "/k/vmlinux".into(),
            initrd: Some("/k/initrd.img".into()),
            cmdline: "console=ttyS0".into(),
            disks: vec![
                ("/v/root.qcow2".into(), "qcow2".into()),
                ("/v/work.ext4".into(), "raw".into()),
            ],
            tap: Some("bgt1".into()),
            mac: Some("02:00:00:00:00:01".into()),
            agent_socket: Some("/v/agent.sock".into()),
            serial_log: "/v/serial.log".into(),
            incoming: false,
            tcg_tb_mib: 0,
        }
    }

    #[test]
    fn argv_has_disks_in_order_and_the_agent_port() {
        let a = argv(&machine(), Some(Path::new("/v/qmp.sock")), None).join(" ");
        assert!(a.contains("tap,id=net0,ifname=bgt1,script=no"));
        let b = argv(&machine(), None, Some(100)).join(" ");
        assert!(b.contains("-netdev tap,id=net0,fd=100 "), "{b}");
        let root = a.find("file=/v/root.qcow2,format=qcow2").unwrap();
        let work = a.find("file=/v/work.ext4,format=raw").unwrap();
        assert!(root < work);
        assert!(a.contains("-accel tcg -cpu max"));
        let sized = QemuMachine {
            tcg_tb_mib: 128,
            ..machine()
        };
        let b = argv(&sized, None, None).join(" ");
        assert!(b.contains("-accel tcg,tb-size=128 -cpu max"), "{b}");
        assert!(
            a.contains(
                "-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
            ),
            "{a}"
        );
        assert!(a.contains("socket,id=agent,path=/v/agent.sock,server=on,wait=off"));
        assert!(a.contains("virtserialport,chardev=agent,name=banger.agent"));
        assert!(a.contains("-m 1024M"));
        assert!(a.contains("-qmp unix:/v/qmp.sock,server=on,wait=off"));
    }

    #[test]
    fn tcg_cmdline_carries_the_tsc_rate() {
        let p = banger_agent::cmdline::GuestParams {
            name: Some("x".into()),
            ..Default::default()
        };
        let c = kernel_cmdline(false, &p);
        assert!(
            c.contains("tsc_early_khz=") && c.contains("banger.name=x"),
            "{c}"
        );
        assert!(!kernel_cmdline(true, &p).contains("tsc_early_khz"));
    }
}
