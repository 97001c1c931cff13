//! What the VM benchmarks share: a private XDG tree and network namespace
//! with the kernel and default image in place, banger run inside it, and
//! the statistics.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

pub const BANGER: &str = env!("CARGO_BIN_EXE_banger");

/// Runs `cmd`, asserting success; its stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// How many alternating runs (`BANGER_BENCH_RUNS`, else `default`).
pub fn runs(default: usize) -> usize {
    std::env::var("BANGER_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The median (sorts `v`).
pub fn median(v: &mut [Duration]) -> Duration {
    percentile(v, 50)
}

/// The `p`th percentile (nearest rank; sorts `v`).
pub fn percentile(v: &mut [Duration], p: usize) -> Duration {
    v.sort();
    let i = ((v.len() * p).div_ceil(100))
        .saturating_sub(1)
        .min(v.len() - 1);
    v[i]
}

/// Seconds with one decimal, for run lists.
pub fn secs(v: &[Duration]) -> Vec<String> {
    v.iter()
        .map(|d| format!("{:.2}", d.as_secs_f64()))
        .collect()
}

/// A tree and a namespace; removed on drop.
pub struct Bench {
    pub tmp: tempfile::TempDir,
    pub ns: String,
    cache: PathBuf,
}

impl Bench {
    /// As root: the tree (small VMs: `vcpu` vCPUs, 1 GiB), the kernel and
    /// image (from the shared cache, built there when missing, outside the
    /// namespace), and the namespace.
    pub fn new(tag: &str, vcpu: u32) -> Bench {
        assert!(nix::unistd::geteuid().is_root(), "run as root");
        let tmp = tempfile::Builder::new()
            .prefix("banger-bench-")
            .tempdir()
            .unwrap();
        let cache = std::env::var_os("BANGER_TEST_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| "/var/cache/banger-ci/test-cache".into());
        let b = Bench {
            ns: format!("bgbench-{tag}-{}", std::process::id()),
            tmp,
            cache,
        };
        for args in [
            &["kernel", "pull", "debian-cloud"][..],
            &["image", "build", "debian-bookworm"][..],
            &["daemon", "stop"][..],
        ] {
            run(&mut b.host_cmd(args));
        }
        std::fs::create_dir_all(b.root().join("config/banger")).unwrap();
        std::fs::write(
            b.root().join("config/banger/config.toml"),
            format!("[vm_defaults]\nvcpu = {vcpu}\nmemory_mib = 1024\ndisk_size = \"2G\"\n"),
        )
        .unwrap();
        run(Command::new("ip").args(["netns", "add", &b.ns]));
        run(Command::new("ip").args(["-n", &b.ns, "link", "set", "lo", "up"]));
        b
    }

    pub fn root(&self) -> &std::path::Path {
        self.tmp.path()
    }

    fn envs(&self, c: &mut Command) {
        let r = self.root();
        c.env("HOME", r.join("home"))
            .env("XDG_CONFIG_HOME", r.join("config"))
            .env("XDG_STATE_HOME", r.join("state"))
            .env("XDG_CACHE_HOME", &self.cache)
            .env("XDG_RUNTIME_DIR", r.join("run"))
            .env("BANGER_SYSTEM", "0")
            .env("NO_COLOR", "1");
    }

    /// `banger <args>` outside the namespace (for pulls and builds).
    pub fn host_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BANGER);
        c.args(args);
        self.envs(&mut c);
        c
    }

    /// `banger <args>` inside the namespace (`nsenter --net`: `ip netns
    /// exec` mounts a fresh /sys, hiding the cgroups VMMs are put in).
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.ns))
            .args(["--", BANGER])
            .args(args);
        self.envs(&mut c);
        c
    }

    /// `cmd` inside the namespace (e.g. ssh).
    pub fn in_ns(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, program]);
        c
    }

    pub fn banger(&self, args: &[&str]) -> String {
        run(&mut self.cmd(args))
    }

    pub fn ssh_config(&self) -> PathBuf {
        self.root().join("state/banger/ssh/ssh_config")
    }

    pub fn image_dir(&self) -> PathBuf {
        self.root().join("state/banger/images/debian-bookworm")
    }

    pub fn kernel_dir(&self) -> PathBuf {
        self.root().join("state/banger/kernels/debian-cloud")
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        if let Ok(out) = self.cmd(&["vm", "list", "--json"]).output() {
            let vms: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            for v in vms.as_array().into_iter().flatten() {
                if let Some(n) = v["name"].as_str() {
                    let _ = self.cmd(&["vm", "delete", n]).output();
                }
            }
        }
        let _ = self.cmd(&["daemon", "stop"]).output();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}
