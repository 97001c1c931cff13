//! Egress policy (`--egress deny --allow-host NAME`), with real guests and
//! an "outside" that is a second network namespace of the test's: a veth
//! from the banger namespace, web servers (HTTP and HTTPS with a test CA)
//! on two addresses and a name server (dnsmasq) answering `allowed.test`
//! and `denied.test`. Nothing leaves the test's namespaces.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::support::*;
use crate::vms::{show, vm_env_from};

pub const ALLOWED_IP: &str = "10.77.0.2";
pub const DENIED_IP: &str = "10.77.0.3";
pub const DNS_IP: &str = "10.77.0.53";

/// The outside: its namespace (its processes die with it) and the test
/// CA's certificate.
pub struct Outside {
    /// Held for its lifetime: the servers and the veth go with it.
    _ns: Netns,
    pub ca: PathBuf,
    _servers: Vec<Child>,
}

impl Drop for Outside {
    fn drop(&mut self) {
        for c in &mut self._servers {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    run_ok(Command::new("openssl").current_dir(dir).args(args));
}

/// A CA and a certificate for both names and addresses, signed by it.
fn test_ca(dir: &Path) {
    openssl(
        dir,
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
            "/CN=banger egress test CA",
        ],
    );
    openssl(
        dir,
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
    std::fs::write(
        dir.join("ext"),
        format!("subjectAltName=DNS:allowed.test,DNS:denied.test,IP:{ALLOWED_IP},IP:{DENIED_IP}\n"),
    )
    .unwrap();
    openssl(
        dir,
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
}

/// Waits for a line containing `word` on a child's output; the child is
/// killed if it has not said it within 30 s (the read then ends).
fn await_line(child: &mut Child, stderr: bool, word: &str) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (said, heard) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if heard.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    });
    let mut r: Box<dyn BufRead + Send> = if stderr {
        Box::new(std::io::BufReader::new(child.stderr.take().unwrap()))
    } else {
        Box::new(std::io::BufReader::new(child.stdout.take().unwrap()))
    };
    let mut line = String::new();
    loop {
        line.clear();
        let n = r.read_line(&mut line).unwrap();
        assert!(
            n > 0,
            "pid {pid} ended (or was killed after 30 s) before saying {word:?}"
        );
        if line.contains(word) {
            break;
        }
    }
    let _ = said.send(());
    // The rest of its output is drained so it never blocks on a pipe.
    std::thread::spawn(move || std::io::copy(&mut r, &mut std::io::sink()));
}

/// Builds the outside next to `env`'s namespace.
pub fn outside(env: &TestEnv) -> Outside {
    let ns = Netns::new();
    let tag = std::process::id() % 100_000;
    let (a, b) = (format!("bgo{tag}a"), format!("bgo{tag}b"));
    run_ok(Command::new("ip").args(["link", "add", &a, "type", "veth", "peer", "name", &b]));
    run_ok(Command::new("ip").args(["link", "set", &a, "netns", &env.netns.name]));
    run_ok(Command::new("ip").args(["link", "set", &b, "netns", &ns.name]));
    env.netns.ip(&["addr", "add", "10.77.0.1/24", "dev", &a]);
    env.netns.ip(&["link", "set", &a, "up"]);
    for ip in [ALLOWED_IP, DENIED_IP, DNS_IP] {
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", &b]);
    }
    ns.ip(&["link", "set", &b, "up"]);
    let dir = env.root().join("outside");
    std::fs::create_dir_all(&dir).unwrap();
    test_ca(&dir);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/egress_server.py");
    let mut web = ns
        .command("python3")
        .arg(&script)
        .arg(dir.join("srv.pem"))
        .arg(dir.join("srv.key"))
        .arg(format!("{ALLOWED_IP}=allowed"))
        .arg(format!("{DENIED_IP}=denied"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    await_line(&mut web, false, "ready");
    let mut dns = ns
        .command("dnsmasq")
        .args([
            "--no-daemon",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            &format!("--listen-address={DNS_IP}"),
            &format!("--address=/allowed.test/{ALLOWED_IP}"),
            &format!("--address=/denied.test/{DENIED_IP}"),
            &format!("--pid-file={}", dir.join("dnsmasq.pid").display()),
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    await_line(&mut dns, true, "started");
    Outside {
        _ns: ns,
        ca: dir.join("ca.pem"),
        _servers: vec![web, dns],
    }
}

/// A VM tree whose allowed names are resolved by the outside's server.
pub fn egress_env() -> (TestEnv, Outside) {
    let env = TestEnv::new();
    let out = outside(&env);
    let env = vm_env_from(env, &format!("[egress]\nresolvers = [\"{DNS_IP}\"]\n"));
    (env, out)
}

/// `vm exec NAME -- sh -c SCRIPT` with `stdin`.
pub fn exec_with(env: &TestEnv, name: &str, script: &str, stdin: &[u8]) -> Output {
    let mut c = env
        .banger_cmd(&["vm", "exec", name, "--", "sh", "-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(stdin).unwrap();
    output_within(c, script, Duration::from_secs(120))
}

/// `curl ARGS` in the guest (the test CA trusted), its exit code and
/// output.
pub fn curl(env: &TestEnv, name: &str, args: &str) -> (i32, String) {
    let o = env.banger(&[
        "vm",
        "exec",
        name,
        "--",
        "sh",
        "-c",
        &format!("curl -sS -m 15 --cacert /root/ca.pem {args} 2>&1"),
    ]);
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

fn refusals(env: &TestEnv, name: &str) -> Vec<serde_json::Value> {
    let v: serde_json::Value =
        serde_json::from_str(&env.banger_ok(&["vm", "egress", name, "--json"])).unwrap();
    v["refused"].as_array().unwrap().clone()
}

fn refused(list: &[serde_json::Value], kind: &str, name: Option<&str>, addr: Option<&str>) -> bool {
    list.iter().any(|r| {
        r["kind"] == kind
            && r["name"].as_str() == name
            && r["address"].as_str() == addr
            && r["count"].as_u64().unwrap_or(0) >= 1
    })
}

/// A UDP DNS question from the guest to `server`: "answers N" or "no answer".
const ASK: &str = "import socket,struct,sys\nq=struct.pack('!HHHHHH',0x4242,0x0100,1,0,0,0)+b''.join(bytes([len(l)])+l.encode() for l in sys.argv[2].split('.'))+b'\\0'+struct.pack('!HH',1,1)\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(3);s.sendto(q,(sys.argv[1],53))\ntry:\n  d,a=s.recvfrom(1500);print('answers',struct.unpack('!H',d[6:8])[0])\nexcept socket.timeout:\n  print('no answer')\n";

#[test]
fn a_policed_vm_reaches_only_what_it_allows_and_its_refusals_are_listed() {
    let _heavy = heavy();
    let (env, out) = egress_env();
    let ca = std::fs::read(&out.ca).unwrap();
    // Two VMs with opposite policies, at once.
    let creates: Vec<_> = [("eg1", "allowed.test"), ("eg2", "denied.test")]
        .into_iter()
        .map(|(name, host)| {
            env.banger_cmd(&[
                "vm",
                "create",
                "--name",
                name,
                "--egress",
                "deny",
                "--allow-host",
                host,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    for c in creates {
        let o = output_within(c, "vm create", Duration::from_secs(300));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    for name in ["eg1", "eg2"] {
        let o = exec_with(&env, name, "cat > /root/ca.pem", &ca);
        assert!(o.status.success());
        assert_eq!(
            show(&env, name)["egress"]["hosts"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }

    // What eg1 allows works, by name, over TLS and plain HTTP.
    let (rc, body) = curl(&env, "eg1", "https://allowed.test/");
    assert_eq!(
        (rc, body.as_str()),
        (0, "allowed allowed.test auth-sha256=none\n")
    );
    let (rc, body) = curl(&env, "eg1", "http://allowed.test/");
    assert_eq!(
        (rc, body.as_str()),
        (0, "allowed allowed.test auth-sha256=none\n")
    );
    // A name it does not allow does not resolve.
    let (rc, body) = curl(&env, "eg1", "https://denied.test/");
    assert_eq!(rc, 6, "{body}");
    // The denied address by IP: refused, and plain HTTP is told why.
    let (rc, body) = curl(&env, "eg1", &format!("http://{DENIED_IP}/"));
    assert_eq!(rc, 0, "{body}");
    assert!(body.contains("egress policy refused"), "{body}");
    // An allowed name on an address nobody resolved for it (fronting),
    // and a denied name on an allowed name's address (shared addresses):
    // both refused.
    let (rc, body) = curl(
        &env,
        "eg1",
        &format!("--resolve allowed.test:443:{DENIED_IP} https://allowed.test/"),
    );
    assert_ne!(rc, 0, "{body}");
    let (rc, body) = curl(
        &env,
        "eg1",
        &format!("--resolve denied.test:443:{ALLOWED_IP} https://denied.test/"),
    );
    assert_ne!(rc, 0, "{body}");
    // Another resolver is out of reach; banger's refuses the name.
    let o = exec_with(
        &env,
        "eg1",
        &format!("python3 - {DNS_IP} allowed.test"),
        ASK.as_bytes(),
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "no answer");
    let o = exec_with(
        &env,
        "eg1",
        "python3 - 172.16.0.1 denied.test",
        ASK.as_bytes(),
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "answers 0");

    // eg2's policy is its own: the other way round.
    let (rc, body) = curl(&env, "eg2", "https://denied.test/");
    assert_eq!(
        (rc, body.as_str()),
        (0, "denied denied.test auth-sha256=none\n")
    );
    let (rc, body) = curl(&env, "eg2", "https://allowed.test/");
    assert_eq!(rc, 6, "{body}");

    let r = refusals(&env, "eg1");
    assert!(refused(&r, "dns", Some("denied.test"), None), "{r:#?}");
    assert!(
        refused(&r, "tcp", None, Some(&format!("{DENIED_IP}:80"))),
        "{r:#?}"
    );
    assert!(
        refused(
            &r,
            "tcp",
            Some("allowed.test"),
            Some(&format!("{DENIED_IP}:443"))
        ),
        "{r:#?}"
    );
    assert!(
        refused(
            &r,
            "tcp",
            Some("denied.test"),
            Some(&format!("{ALLOWED_IP}:443"))
        ),
        "{r:#?}"
    );
    assert!(!refused(&r, "dns", Some("allowed.test"), None), "{r:#?}");
    let r2 = refusals(&env, "eg2");
    assert!(refused(&r2, "dns", Some("allowed.test"), None), "{r2:#?}");
    assert!(!refused(&r2, "dns", Some("denied.test"), None), "{r2:#?}");

    // Allowed on the running VM: the next request passes.
    let o = env.banger_ok(&["vm", "set", "eg1", "--allow-host", "denied.test"]);
    assert!(o.contains("allow allowed.test, denied.test"), "{o}");
    let (rc, body) = curl(&env, "eg1", "https://denied.test/");
    assert_eq!(
        (rc, body.as_str()),
        (0, "denied denied.test auth-sha256=none\n")
    );

    // `vm egress --follow` prints what was refused, and goes on.
    let mut follow = env
        .banger_cmd(&["vm", "egress", "eg1", "--follow"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    await_line(&mut follow, false, &format!("refused tcp {DENIED_IP}:80"));
    let _ = follow.kill();
    let _ = follow.wait();

    // A repository's .banger.toml sets the policy of `vm run` (said on
    // stderr); what it refused is summed up after the command.
    let repo = env.root().join("repo");
    git_repo(
        &repo,
        &[(
            ".banger.toml",
            "[egress]\nallow_hosts = [\"allowed.test\"]\n",
        )],
    );
    let o = env.banger(&[
        "vm",
        "run",
        "--rm",
        repo.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        &format!("curl -sS -m 10 http://allowed.test/ && curl -s -m 10 http://{DENIED_IP}/ >/dev/null; true"),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "allowed allowed.test auth-sha256=none\n"
    );
    assert!(
        err.contains(&format!(
            "egress: deny; allow allowed.test (from {}/.banger.toml)",
            repo.display()
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("egress refused 1: tcp {DENIED_IP}:80 x1")),
        "{err}"
    );

    // Deleting the VMs leaves no rule of theirs.
    for name in ["eg1", "eg2"] {
        env.banger_ok(&["vm", "delete", name]);
    }
    let ipt = banger::host::nat::iptables().unwrap();
    let (nat, _) = env.netns.exec(&[ipt, "-t", "nat", "-S"]);
    assert!(!nat.contains("banger:"), "{nat}");
    drop(out);
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Files under `dir` that hold `needle` (grep over their bytes).
fn files_holding(dir: &Path, needle: &str) -> String {
    let o = Command::new("grep")
        .args(["-r", "-l", "-a", "-F", needle])
        .arg(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn a_secret_reaches_only_its_host_and_never_enters_the_guest() {
    let _heavy = heavy();
    let env = TestEnv::new();
    let out = outside(&env);
    let env = vm_env_from(
        env,
        &format!(
            "[egress]\nresolvers = [\"{DNS_IP}\"]\nca_files = [\"{}\"]\n",
            out.ca.display()
        ),
    );
    let ca = std::fs::read(&out.ca).unwrap();
    let value = format!("banger-test-secret-{}", std::process::id());
    let file = env.root().join("token");
    std::fs::write(&file, format!("{value}\n")).unwrap();
    let secret = format!("TOKEN@allowed.test=file:{}", file.display());
    env.banger_ok(&[
        "vm",
        "create",
        "--name",
        "sec",
        "--secret",
        &secret,
        "--allow-host",
        "denied.test",
    ]);
    let v = show(&env, "sec");
    let placeholder = v["secrets"][0]["placeholder"].as_str().unwrap().to_string();
    assert!(placeholder.starts_with("banger-placeholder-"), "{v}");
    assert!(!v.to_string().contains(&value));
    assert!(exec_with(&env, "sec", "cat > /root/ca.pem", &ca)
        .status
        .success());

    // The guest sees the placeholder; its host gets the value, over TLS
    // the guest verified against its VM's own CA (no --cacert).
    let o = env.banger_ok(&[
        "vm",
        "exec",
        "sec",
        "--",
        "sh",
        "-c",
        "printf %s \"$TOKEN\"",
    ]);
    assert_eq!(o, placeholder);
    let auth = "curl -sS -m 15 -H \"Authorization: Bearer $TOKEN\"";
    let sh = |script: &str| env.banger_ok(&["vm", "exec", "sec", "--", "sh", "-c", script]);
    let o = sh(&format!("{auth} https://allowed.test/"));
    assert_eq!(
        o,
        format!(
            "allowed allowed.test auth-sha256={}\n",
            sha256_hex(&format!("Bearer {value}"))
        )
    );
    // To another allowed host it arrives as it was sent.
    let o = sh(&format!(
        "{auth} --cacert /root/ca.pem https://denied.test/"
    ));
    assert_eq!(
        o,
        format!(
            "denied denied.test auth-sha256={}\n",
            sha256_hex(&format!("Bearer {placeholder}"))
        )
    );
    // Sent in the clear, even to its host: not swapped, and logged.
    let o = sh(&format!("{auth} http://allowed.test/"));
    assert_eq!(
        o,
        format!(
            "allowed allowed.test auth-sha256={}\n",
            sha256_hex(&format!("Bearer {placeholder}"))
        )
    );
    let v: serde_json::Value =
        serde_json::from_str(&env.banger_ok(&["vm", "egress", "sec", "--json"])).unwrap();
    assert!(
        v["refused"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["kind"] == "secret"),
        "{v}"
    );

    // Nowhere in the guest: its processes' environments (every TOKEN in
    // them is the placeholder), its disks, a snapshot of it. The value is
    // never given to the guest, not even to search for it.
    let o = env.banger_ok(&[
        "vm",
        "exec",
        "sec",
        "--",
        "sh",
        "-c",
        "for f in /proc/[0-9]*/environ; do tr '\\0' '\\n' < $f; done 2>/dev/null | grep '^TOKEN=' | sort -u",
    ]);
    assert_eq!(o, format!("TOKEN={placeholder}\n"));
    env.banger_ok(&["vm", "snapshot", "sec", "--name", "secsnap"]);
    let state = env.state_dir();
    for d in ["vms", "snapshots"] {
        assert_eq!(files_holding(&state.join(d), &value), "", "{d}");
    }

    // A clone has its own CA and placeholder, and its secret works.
    let o = env.banger(&[
        "vm",
        "run",
        "--rm",
        "--from",
        "secsnap",
        "--secret",
        &secret,
        "--",
        "sh",
        "-c",
        &format!("printf '%s\\n' \"$TOKEN\"; {auth} https://allowed.test/"),
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let (clone_ph, answer) = stdout.split_once('\n').unwrap();
    assert!(
        clone_ph.starts_with("banger-placeholder-") && clone_ph != placeholder,
        "{stdout}"
    );
    assert_eq!(
        answer,
        format!(
            "allowed allowed.test auth-sha256={}\n",
            sha256_hex(&format!("Bearer {value}"))
        )
    );

    // Gone with the VM.
    env.banger_ok(&["vm", "delete", "sec"]);
    assert_eq!(files_holding(&state, &value), "");
    drop(out);
}
