//! QEMU microvm: the command line for a banger VM.

use std::path::PathBuf;

/// Acceleration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// KVM when hardware virtualisation works, TCG otherwise.
    pub fn detect() -> Accel {
        if crate::host::cpu::hardware_kvm() {
            Accel::Kvm
        } else {
            Accel::Tcg
        }
    }
}

/// A network interface on a tap.
#[derive(Debug, Clone)]
pub struct Nic {
    pub tap: String,
    pub mac: String,
}

/// Everything a QEMU microvm launch needs.
#[derive(Debug, Clone)]
pub struct QemuSpec {
    pub accel: Accel,
    pub vcpu: u32,
    pub memory_mib: u32,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// Kernel command line (see [`kernel_cmdline`]).
    pub cmdline: String,
    /// Disks in order: the first is `/dev/vda`.
    pub disks: Vec<PathBuf>,
    pub nic: Option<Nic>,
    /// vhost-user socket of the VM's vhost-device-vsock.
    pub vhost_vsock: Option<PathBuf>,
    pub qmp_socket: Option<PathBuf>,
    pub serial_log: PathBuf,
    pub pid_file: Option<PathBuf>,
}

/// The kernel command line: console, root, stable interface names, the
/// banger guest parameters, and under TCG the TSC rate.
pub fn kernel_cmdline(accel: Accel, params: &banger_agent::cmdline::GuestParams) -> String {
    let mut t = vec![
        "console=ttyS0".to_string(),
        "root=/dev/vda".into(),
        "rw".into(),
        "net.ifnames=0".into(),
        "panic=-1".into(),
        "quiet".into(),
    ];
    if accel == Accel::Tcg {
        t.push(format!("tsc_early_khz={}", crate::host::cpu::tsc_khz()));
        t.push("tsc=reliable".into());
    }
    t.extend(params.to_tokens());
    t.join(" ")
}

/// The argv (without the program) for `qemu-system-x86_64`.
pub fn argv(spec: &QemuSpec) -> Vec<String> {
    let mem = spec.memory_mib;
    let mut a: Vec<String> = vec![
        "-M".into(),
        "microvm,memory-backend=mem".into(),
        "-accel".into(),
        match spec.accel {
            Accel::Kvm => "kvm".into(),
            Accel::Tcg => "tcg".into(),
        },
        "-cpu".into(),
        match spec.accel {
            Accel::Kvm => "host".into(),
            Accel::Tcg => "max".into(),
        },
        "-smp".into(),
        spec.vcpu.to_string(),
        "-m".into(),
        format!("{mem}M"),
        "-object".into(),
        format!("memory-backend-memfd,id=mem,size={mem}M,share=on"),
        "-display".into(),
        "none".into(),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-no-reboot".into(),
        "-kernel".into(),
        spec.kernel.display().to_string(),
        "-append".into(),
        spec.cmdline.clone(),
        "-serial".into(),
        format!("file:{}", spec.serial_log.display()),
    ];
    if let Some(i) = &spec.initrd {
        a.extend(["-initrd".into(), i.display().to_string()]);
    }
    for (n, d) in spec.disks.iter().enumerate() {
        a.extend([
            "-drive".into(),
            format!(
                "id=disk{n},file={},format=raw,if=none,cache=none,aio=threads",
                d.display()
            ),
            "-device".into(),
            format!("virtio-blk-device,drive=disk{n}"),
        ]);
    }
    if let Some(n) = &spec.nic {
        a.extend([
            "-netdev".into(),
            format!("tap,id=net0,ifname={},script=no,downscript=no", n.tap),
            "-device".into(),
            format!("virtio-net-device,netdev=net0,mac={}", n.mac),
        ]);
    }
    if let Some(v) = &spec.vhost_vsock {
        a.extend([
            "-chardev".into(),
            format!("socket,id=vsock0,path={}", v.display()),
            "-device".into(),
            "vhost-user-vsock-device,chardev=vsock0".into(),
        ]);
    }
    if let Some(q) = &spec.qmp_socket {
        a.extend([
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", q.display()),
        ]);
    }
    if let Some(p) = &spec.pid_file {
        a.extend(["-pidfile".into(), p.display().to_string()]);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_has_disks_in_order_and_the_vsock() {
        let spec = QemuSpec {
            accel: Accel::Tcg,
            vcpu: 2,
            memory_mib: 1024,
            kernel: "/k/vmlinux".into(),
            initrd: Some("/k/initrd.img".into()),
            cmdline: "console=ttyS0".into(),
            disks: vec!["/v/root.ext4".into(), "/v/work.ext4".into()],
            nic: Some(Nic {
                tap: "bgt1".into(),
                mac: "02:00:00:00:00:01".into(),
            }),
            vhost_vsock: Some("/v/vhost.sock".into()),
            qmp_socket: Some("/v/qmp.sock".into()),
            serial_log: "/v/serial.log".into(),
            pid_file: None,
        };
        let a = argv(&spec).join(" ");
        let root = a.find("file=/v/root.ext4").unwrap();
        let work = a.find("file=/v/work.ext4").unwrap();
        assert!(root < work);
        assert!(a.contains("-accel tcg -cpu max"));
        assert!(a.contains("vhost-user-vsock-device,chardev=vsock0"));
        assert!(a.contains("memory-backend-memfd,id=mem,size=1024M,share=on"));
    }

    #[test]
    fn tcg_cmdline_carries_the_tsc_rate() {
        let p = banger_agent::cmdline::GuestParams {
            name: Some("x".into()),
            ..Default::default()
        };
        let c = kernel_cmdline(Accel::Tcg, &p);
        assert!(
            c.contains("tsc_early_khz=") && c.contains("banger.name=x"),
            "{c}"
        );
        assert!(!kernel_cmdline(Accel::Kvm, &p).contains("tsc_early_khz"));
    }
}
