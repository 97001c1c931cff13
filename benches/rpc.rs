//! RPC and CLI start-up benchmark (`cargo bench --bench rpc`).
//!
//! Measures, side by side in one run:
//! - `vm list` round trip over one connection with 200 VM records, against a
//!   `ping` round trip (the protocol floor: same socket, no store read);
//! - a whole `banger vm list` process, against `banger --version` (process
//!   start-up without the daemon) and `/bin/true` (exec floor).
//!
//! Prints medians and p90s. Not a test: nothing here asserts a time.

use std::process::Command;
use std::time::{Duration, Instant};

use banger::domain::VmState;
use banger::protocol::cli::{Event, Reply, Request};
use banger::protocol::conn::Client;
use banger::store::{Store, VmRecord};

fn stats(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[v.len() * 9 / 10])
}

fn show(name: &str, v: Vec<Duration>) {
    let n = v.len();
    let (med, p90) = stats(v);
    println!(
        "{name:<44} n={n:<5} median {:>9.3} ms   p90 {:>9.3} ms",
        med.as_secs_f64() * 1e3,
        p90.as_secs_f64() * 1e3
    );
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let envs = [
        ("HOME", root.join("home")),
        ("XDG_CONFIG_HOME", root.join("config")),
        ("XDG_STATE_HOME", root.join("state")),
        ("XDG_CACHE_HOME", root.join("cache")),
        ("XDG_RUNTIME_DIR", root.join("run")),
    ];
    {
        let store = Store::open(&root.join("state/banger/state.redb")).unwrap();
        for i in 0..200u32 {
            store
                .put_vm(&{
                    let mut v = VmRecord::new(
                        &format!("bench-vm-{i}"),
                        "debian-bookworm",
                        "debian-cloud",
                        2,
                        1024,
                        8 << 30,
                        i % 2 == 0,
                        Default::default(),
                    );
                    v.state = VmState::Stopped;
                    v.ip = Some(format!("172.16.0.{}", 2 + i % 250));
                    v
                })
                .unwrap();
        }
    }
    let banger = env!("CARGO_BIN_EXE_banger");
    let run = |args: &[&str]| {
        let out = Command::new(banger)
            .args(args)
            .envs(envs.iter().cloned())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    run(&["daemon", "start"]);
    let listed = run(&["vm", "list", "--json"]);
    let n: Vec<serde_json::Value> = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(n.len(), 200);

    let socket = root.join("run/banger/bangerd.sock");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c: Client<Request, Event, Reply> = Client::connect(&socket).await.unwrap();
        for _ in 0..200 {
            c.call(Request::VmList, |_| {}).await.unwrap();
            c.call(Request::Ping, |_| {}).await.unwrap();
        }
        let (mut list, mut ping) = (Vec::new(), Vec::new());
        for _ in 0..2000 {
            let t = Instant::now();
            c.call(Request::Ping, |_| {}).await.unwrap();
            ping.push(t.elapsed());
            let t = Instant::now();
            match c.call(Request::VmList, |_| {}).await.unwrap() {
                Reply::Vms(v) => assert_eq!(v.len(), 200),
                _ => unreachable!(),
            }
            list.push(t.elapsed());
        }
        show("rpc: ping round trip (baseline)", ping);
        show("rpc: vm list round trip, 200 records", list);
    });

    let (mut cli_list, mut cli_version, mut truebin) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..200 {
        let t = Instant::now();
        Command::new("/bin/true").status().unwrap();
        truebin.push(t.elapsed());
        let t = Instant::now();
        run(&["--version"]);
        cli_version.push(t.elapsed());
        let t = Instant::now();
        run(&["vm", "list"]);
        cli_list.push(t.elapsed());
    }
    show("process: /bin/true (exec floor)", truebin);
    show("process: banger --version (CLI start-up)", cli_version);
    show("process: banger vm list, 200 records", cli_list);
    run(&["daemon", "stop"]);
}
