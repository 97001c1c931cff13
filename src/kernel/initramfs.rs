//! The initramfs: busybox (static, from Debian's busybox-static), the boot
//! modules, and a small `/init` that loads them, mounts the root device and
//! switches to it. Written as a `newc` cpio archive with explicit owners, so
//! building it needs no privileges.

use super::modules::Module;

/// A cpio `newc` archive writer.
#[derive(Default)]
pub struct Cpio {
    buf: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
        self.ino += 1;
        let namesize = name.len() + 1;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0, // uid
            0, // gid
            1, // nlink
            0, // mtime: reproducible
            data.len(),
            0,
            0,
            rdev.0,
            rdev.1,
            namesize,
            0, // check
        );
        self.buf.extend_from_slice(header.as_bytes());
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    pub fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, &[], (0, 0));
    }
    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.entry(name, 0o100000 | mode, data, (0, 0));
    }
    pub fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, 0o120777, target.as_bytes(), (0, 0));
    }
    pub fn char_dev(&mut self, name: &str, mode: u32, major: u32, minor: u32) {
        self.entry(name, 0o020000 | mode, &[], (major, minor));
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[], (0, 0));
        while !self.buf.len().is_multiple_of(512) {
            self.buf.push(0);
        }
        self.buf
    }
}

/// Bumped whenever the initramfs changes (modules, `/init`): a kernel
/// pulled with an older one is pulled again.
pub const REVISION: u32 = 2;

/// Where the image keeps the agent, which the initramfs starts as PID 1.
pub const AGENT_PATH: &str = "/usr/local/bin/banger-agent";

/// The `/init` script. Module names are substituted in load order.
pub fn init_script(modules: &[Module]) -> String {
    let names: Vec<String> = modules.iter().map(|m| m.name.clone()).collect();
    format!(
        r#"#!/bin/busybox sh
# banger initramfs: load the virtio/vsock/console modules, mount the root,
# switch to the banger agent as PID 1 (it starts the image's own init).
export PATH=/bin
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
for m in {mods}; do
  /bin/busybox insmod /lib/modules/$m.ko || echo "initramfs: insmod $m failed"
done
root=/dev/vda
fstype=ext4
rootflags=rw
for arg in $(/bin/busybox cat /proc/cmdline); do
  case "$arg" in
    root=*) root="${{arg#root=}}" ;;
    rootfstype=*) fstype="${{arg#rootfstype=}}" ;;
    ro) rootflags=ro ;;
  esac
done
i=0
while [ ! -b "$root" ] && [ $i -lt 500 ]; do /bin/busybox sleep 0.02; i=$((i+1)); done
if ! /bin/busybox mount -t "$fstype" -o "$rootflags" "$root" /newroot; then
  echo "initramfs: cannot mount $root; dropping to a shell"
  exec /bin/busybox sh
fi
/bin/busybox mount --move /dev /newroot/dev
/bin/busybox umount /proc /sys
if [ -x /newroot{agent} ]; then
  exec /bin/busybox switch_root /newroot {agent} --init
fi
exec /bin/busybox switch_root /newroot /sbin/init
"#,
        mods = names.join(" "),
        agent = AGENT_PATH
    )
}

/// Builds the initramfs from a static busybox and the boot modules.
pub fn build(busybox: &[u8], modules: &[Module]) -> Vec<u8> {
    let mut c = Cpio::default();
    for d in ["bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules"] {
        c.dir(d);
    }
    c.char_dev("dev/console", 0o600, 5, 1);
    c.char_dev("dev/null", 0o666, 1, 3);
    c.file("bin/busybox", 0o755, busybox);
    c.symlink("bin/sh", "busybox");
    for m in modules {
        c.file(&format!("lib/modules/{}.ko", m.name), 0o644, &m.data);
    }
    c.file("init", 0o755, init_script(modules).as_bytes());
    c.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_is_well_formed_and_lists_entries() {
        let mods = vec![Module {
            name: "virtio".into(),
            data: vec![1, 2, 3],
        }];
        let img = build(b"BUSYBOX", &mods);
        assert_eq!(img.len() % 512, 0);
        // Walk the archive.
        let mut pos = 0;
        let mut names = Vec::new();
        loop {
            let h = std::str::from_utf8(&img[pos..pos + 110]).unwrap();
            assert_eq!(&h[..6], "070701");
            let field = |i: usize| usize::from_str_radix(&h[6 + i * 8..14 + i * 8], 16).unwrap();
            let (filesize, namesize) = (field(6), field(11));
            let name = std::str::from_utf8(&img[pos + 110..pos + 110 + namesize - 1])
                .unwrap()
                .to_string();
            pos = (pos + 110 + namesize).div_ceil(4) * 4;
            pos = (pos + filesize).div_ceil(4) * 4;
            if name == "TRAILER!!!" {
                break;
            }
            names.push(name);
        }
        assert!(names.contains(&"init".to_string()));
        assert!(names.contains(&"lib/modules/virtio.ko".to_string()));
        assert!(names.contains(&"dev/console".to_string()));
        assert!(init_script(&mods).contains("for m in virtio; do"));
        assert!(
            init_script(&mods).contains("switch_root /newroot /usr/local/bin/banger-agent --init")
        );
    }
}
