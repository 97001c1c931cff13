//! Egress through banger's policy proxy against plain NAT, in the same run
//! (`cargo bench --bench egress`, as root). An "outside" namespace behind a
//! veth serves HTTPS (a test CA) and names (dnsmasq), as in
//! `tests/egress.rs`. Three VMs at once: `nat` (`--nat`, no policy: the
//! baseline), `policed` (`--egress deny --allow-host allowed.test`) and
//! `secret` (`--secret TOKEN@allowed.test`: TLS terminated and re-made by
//! the daemon). Inside each guest, curl's own timing of `BANGER_BENCH_RUNS`
//! (30) HTTPS requests, new connection each, by address (`--resolve`) and
//! for the policed VM by name (its DNS through the daemon too), and 3
//! downloads of 100 MB; medians.

#[path = "common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const ALLOWED: &str = "10.77.0.2";
const DNS: &str = "10.77.0.53";
/// The secret VM's own CA in its guest: curl given it alone, as the others
/// are given the test CA alone (the whole system bundle costs every curl
/// ~0.4 s of parsing in an emulated guest).
const VM_CA: &str = "--cacert /usr/local/share/ca-certificates/banger-egress.crt";

struct Outside {
    ns: String,
    servers: Vec<std::process::Child>,
}

impl Drop for Outside {
    fn drop(&mut self) {
        for c in &mut self.servers {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    run(Command::new("openssl").current_dir(dir).args(args));
}

fn outside(b: &Bench) -> Outside {
    let ns = format!("bgbench-out-{}", std::process::id());
    let (a, z) = (
        format!("bgo{}a", std::process::id() % 100_000),
        format!("bgo{}b", std::process::id() % 100_000),
    );
    run(Command::new("ip").args(["netns", "add", &ns]));
    run(Command::new("ip").args(["-n", &ns, "link", "set", "lo", "up"]));
    run(Command::new("ip").args(["link", "add", &a, "type", "veth", "peer", "name", &z]));
    run(Command::new("ip").args(["link", "set", &a, "netns", &b.ns]));
    run(Command::new("ip").args(["link", "set", &z, "netns", &ns]));
    run(Command::new("ip").args(["-n", &b.ns, "addr", "add", "10.77.0.1/24", "dev", &a]));
    run(Command::new("ip").args(["-n", &b.ns, "link", "set", &a, "up"]));
    // NAT leaves by the default route.
    run(Command::new("ip").args(["-n", &b.ns, "route", "add", "default", "via", ALLOWED]));
    for ip in [ALLOWED, DNS] {
        run(Command::new("ip").args(["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", &z]));
    }
    run(Command::new("ip").args(["-n", &ns, "link", "set", &z, "up"]));
    let dir = b.root().join("outside");
    std::fs::create_dir_all(&dir).unwrap();
    openssl(
        &dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=bench CA",
        ],
    );
    openssl(
        &dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "srv.key",
            "-out",
            "srv.csr",
            "-subj",
            "/CN=allowed.test",
        ],
    );
    std::fs::write(dir.join("ext"), "subjectAltName=DNS:allowed.test\n").unwrap();
    openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "srv.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "srv.pem",
            "-days",
            "2",
            "-extfile",
            "ext",
        ],
    );
    let in_ns = |p: &str| {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{ns}")).arg("--").arg(p);
        c
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/egress_server.py");
    let mut web = in_ns("python3")
        .arg(&script)
        .arg(dir.join("srv.pem"))
        .arg(dir.join("srv.key"))
        .arg(format!("{ALLOWED}=allowed"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(web.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "ready");
    let dns = in_ns("dnsmasq")
        .args([
            "--no-daemon",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            &format!("--listen-address={DNS}"),
            &format!("--address=/allowed.test/{ALLOWED}"),
            &format!("--pid-file={}", dir.join("dnsmasq.pid").display()),
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Outside {
        ns,
        servers: vec![web, dns],
    }
}

/// curl's `time_total` of each line of `script`'s output, in a guest.
fn timings(b: &Bench, vm: &str, script: &str) -> Vec<Duration> {
    let out = b.banger(&["vm", "exec", vm, "--", "sh", "-c", script]);
    out.lines()
        .filter_map(|l| l.trim().parse::<f64>().ok())
        .map(Duration::from_secs_f64)
        .collect()
}

fn report(what: &str, v: &mut [Duration]) {
    assert!(!v.is_empty(), "{what}: no samples");
    println!(
        "{what:<52} p50 {:>9.2} ms  p90 {:>9.2} ms  (n={})",
        median(v).as_secs_f64() * 1e3,
        percentile(v, 90).as_secs_f64() * 1e3,
        v.len()
    );
}

fn main() {
    let n = runs(30);
    let b = Bench::new("egress", 2);
    let out = outside(&b);
    let ca = b.root().join("outside/ca.pem");
    std::fs::write(
        b.root().join("config/banger/config.toml"),
        format!(
            "warm_start = false\n[vm_defaults]\nvcpu = 2\nmemory_mib = 1024\ndisk_size = \"2G\"\n[egress]\nresolvers = [\"{DNS}\"]\nca_files = [\"{}\"]\n",
            ca.display()
        ),
    )
    .unwrap();
    let token = b.root().join("token");
    std::fs::write(&token, "bench-secret").unwrap();
    let secret = format!("TOKEN@allowed.test=file:{}", token.display());
    let creates: Vec<Vec<String>> = vec![
        vec!["--name".into(), "nat".into(), "--nat".into()],
        vec![
            "--name".into(),
            "policed".into(),
            "--egress".into(),
            "deny".into(),
            "--allow-host".into(),
            "allowed.test".into(),
        ],
        vec!["--name".into(), "secret".into(), "--secret".into(), secret],
    ];
    for args in &creates {
        let mut a = vec!["vm", "create"];
        a.extend(args.iter().map(String::as_str));
        b.banger(&a);
    }
    let pem = std::fs::read_to_string(&ca).unwrap();
    for vm in ["nat", "policed", "secret"] {
        b.banger(&[
            "vm",
            "exec",
            vm,
            "--",
            "sh",
            "-c",
            &format!("printf '%s' '{pem}' > /root/ca.pem"),
        ]);
    }
    let resolve = format!("--resolve allowed.test:443:{ALLOWED}");
    // The policed VMs resolve the name once (their proxy admits the address
    // from then on).
    for vm in ["policed", "secret"] {
        b.banger(&[
            "vm",
            "exec",
            vm,
            "--",
            "sh",
            "-c",
            "getent hosts allowed.test >/dev/null",
        ]);
    }
    let loop_of = |extra: &str, ca: &str| {
        format!(
            "for i in $(seq {n}); do curl -s -o /dev/null -w '%{{time_total}}\\n' {ca} {extra} https://allowed.test/; done"
        )
    };
    let big = |extra: &str, ca: &str| {
        format!(
            "for i in 1 2 3; do curl -s -o /dev/null -w '%{{time_total}}\\n' {ca} {extra} https://allowed.test/big/104857600; done"
        )
    };
    let test_ca = "--cacert /root/ca.pem";
    println!("HTTPS request, new connection each (curl time_total in the guest):");
    report(
        "  NAT, no policy (by address)",
        &mut timings(&b, "nat", &loop_of(&resolve, test_ca)),
    );
    report(
        "  policy proxy (by address)",
        &mut timings(&b, "policed", &loop_of(&resolve, test_ca)),
    );
    report(
        "  policy proxy (by name: DNS through banger)",
        &mut timings(&b, "policed", &loop_of("", test_ca)),
    );
    report(
        "  secret host (TLS terminated and re-made)",
        &mut timings(
            &b,
            "secret",
            &loop_of("-H \"Authorization: Bearer $TOKEN\"", VM_CA),
        ),
    );
    println!("100 MB over HTTPS:");
    report(
        "  NAT, no policy",
        &mut timings(&b, "nat", &big(&resolve, test_ca)),
    );
    report(
        "  policy proxy",
        &mut timings(&b, "policed", &big("", test_ca)),
    );
    report("  secret host", &mut timings(&b, "secret", &big("", VM_CA)));
    drop(out);
}
