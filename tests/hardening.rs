//! The threat model, tried as an attacker would: another uid on the host,
//! a second owner, a hostile guest on the bridge, concurrent shells. (The
//! hostile agent and the owner's module tree are driven in the library's
//! unit tests: `ops::lifecycle`, `image::build`.)

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;
use crate::vms::{nat_rules, show, vm_env, vmm_pids};

const OTHER_UID: u32 = 4242;
const SECOND_OWNER: u32 = 4343;

/// Runs a Python snippet as `uid` (the host has python3: the test script
/// installs through pip) and returns the child.
fn python_as(uid: u32, netns: Option<&str>, code: &str) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    let mut c = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "python3", "-c", code]);
            c
        }
        None => {
            let mut c = Command::new("python3");
            c.args(["-c", code]);
            c
        }
    };
    c.uid(uid)
        .gid(uid)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c.spawn().unwrap()
}

#[test]
fn a_socket_served_by_another_uid_is_refused_before_a_byte_is_sent() {
    let env = TestEnv::new();
    let run = env.runtime_dir();
    std::fs::create_dir_all(&run).unwrap();
    // Another user gets to plant a listener where our daemon's socket goes
    // (a runtime directory it could write: the /tmp fallback, say).
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::set_permissions(
        run.parent().unwrap(),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::set_permissions(env.root(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = env.daemon_socket();
    let code = format!(
        "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.bind({:?})\ns.listen()\nprint('ready',flush=True)\nc,_=s.accept()\nd=c.recv(100)\nprint('got',len(d),flush=True)",
        sock.display().to_string()
    );
    let mut planted = python_as(OTHER_UID, None, &code);
    wait_for("the planted socket", Duration::from_secs(10), || {
        sock.exists().then_some(())
    });
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = env.banger(&["vm", "list"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("served by uid {OTHER_UID}")) && err.contains("remove it"),
        "{err}"
    );
    let _ = planted.kill();
    let got = planted.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&got.stdout);
    assert!(
        !said.lines().any(|l| l.starts_with("got ") && l != "got 0"),
        "the client sent bytes to a stranger: {said}"
    );
}

/// A runtime directory owned by `uid`, as its bangerd would make it.
fn owner_runtime_dir(base: &std::path::Path, name: &str, uid: u32) -> std::path::PathBuf {
    let d = base.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::os::unix::fs::lchown(&d, Some(uid), Some(uid)).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
    d
}

fn helper(netns: &Netns, owner: u32, dir: &std::path::Path) -> Command {
    let mut c = netns.command(bin("bangerd-root"));
    c.arg("--owner-uid")
        .arg(owner.to_string())
        .arg("--runtime-dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

#[test]
fn the_helper_serves_one_owner_per_network_and_only_a_real_runtime_dir() {
    let base = tempfile::tempdir().unwrap();
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (a, b) = (Netns::new(), Netns::new());
    let first = owner_runtime_dir(base.path(), "first", OTHER_UID);
    let mut running = helper(&a, OTHER_UID, &first).spawn().unwrap();
    wait_for("the first owner's helper", Duration::from_secs(20), || {
        first.join("bangerd-root.sock").exists().then_some(())
    });
    // A second owner in the same network: refused, saying who holds it.
    let second = owner_runtime_dir(base.path(), "second", SECOND_OWNER);
    let out = helper(&a, SECOND_OWNER, &second).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("already used by banger for uid {OTHER_UID}")),
        "{err}"
    );
    assert!(!second.join("bangerd-root.sock").exists());
    // In its own network namespace the second owner is served.
    let mut other = helper(&b, SECOND_OWNER, &second).spawn().unwrap();
    wait_for("the second owner's helper", Duration::from_secs(20), || {
        second.join("bangerd-root.sock").exists().then_some(())
    });
    // A runtime directory that is a symlink, or someone else's, is refused.
    let link = base.path().join("link");
    std::os::unix::fs::symlink(&first, &link).unwrap();
    let c = Netns::new();
    for (dir, why) in [(&link, "symlink"), (&first, "owned by uid")] {
        let out = helper(&c, SECOND_OWNER, dir).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(why), "{why}: {err}");
    }
    for h in [&mut running, &mut other] {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(h.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let _ = running.wait();
    let _ = other.wait();
    // The first owner's helper has stopped, but its taps (its VMs) are
    // still there: the second owner is still refused, naming them.
    run_ok(Command::new("ip").args([
        "-n",
        &a.name,
        "tuntap",
        "add",
        "dev",
        "bgtleft01",
        "mode",
        "tap",
        "user",
        &OTHER_UID.to_string(),
    ]));
    let out = helper(&a, SECOND_OWNER, &second).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("still has banger taps of uid {OTHER_UID}"))
            && err.contains("bgtleft01"),
        "{err}"
    );
}

fn netns_exec(env: &TestEnv, args: &[&str]) -> String {
    let (out, err) = env.netns.exec(args);
    out + &err
}

#[test]
fn a_guest_sends_only_as_itself_and_reaches_only_dns_on_the_host() {
    let _heavy = heavy();
    let env = vm_env();
    env.banger_ok(&["vm", "create", "--name", "edge", "--nat"]);
    let vm = show(&env, "edge");
    let ip = vm["ip"].as_str().unwrap().to_string();
    let gw = "172.16.0.1";
    // The VM's tap is the one with a guard chain (warm pool taps have none).
    let tap = netns_exec(&env, &["ebtables", "-L", "INPUT"])
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("-i ")
                .and_then(|r| r.split_whitespace().next())
                .map(str::to_string)
        })
        .expect("a guarded tap");

    // Anti-spoofing: an echo request from a borrowed address never
    // arrives; the guest's own (sent after it, on the same path) does. A
    // raw ICMP socket on the host sees every echo request that gets in.
    let listener = "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_RAW,socket.IPPROTO_ICMP)\nprint('ready',flush=True)\nwhile True:\n  d,a=s.recvfrom(2000)\n  h=(d[0]&15)*4\n  if d[h]!=8: continue\n  p=d[h+8:]\n  if p in (b'spoofed',b'honest'):\n    print(a[0],p.decode(),flush=True)\n  if p==b'honest': break";
    let mut l = python_as(0, Some(&env.netns.name), listener);
    // A deadline: a packet that never comes fails the test, not hangs it.
    let lpid = l.id();
    let (heard_tx, heard_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if heard_rx.recv_timeout(Duration::from_secs(120)).is_err() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(lpid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    });
    let mut lout = std::io::BufReader::new(l.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut lout, &mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    env.banger_ok(&[
        "vm",
        "exec",
        "edge",
        "--",
        "ip",
        "addr",
        "add",
        "172.16.0.99/24",
        "dev",
        "eth0",
    ]);
    let send = format!(
        "import socket,struct\ndef ck(b):\n  t=sum(struct.unpack('!%dH'%(len(b)//2),b))\n  t=(t>>16)+(t&0xffff); t+=t>>16\n  return ~t&0xffff\nfor src,msg in [('172.16.0.99',b'spoofed'),('{ip}',b'honest')]:\n  s=socket.socket(socket.AF_INET,socket.SOCK_RAW,socket.IPPROTO_ICMP); s.bind((src,0))\n  p=struct.pack('!BBHHH',8,0,0,7,1)+msg+b'\\0'*(len(msg)%2)\n  p=struct.pack('!BBHHH',8,0,ck(p),7,1)+msg\n  s.sendto(p,('{gw}',0))\n"
    );
    env.banger_ok(&["vm", "exec", "edge", "--", "python3", "-c", &send]);
    let mut heard = String::new();
    std::io::Read::read_to_string(&mut lout, &mut heard).unwrap();
    let _ = l.wait();
    let _ = heard_tx.send(());
    assert_eq!(heard.trim(), format!("{ip} honest"), "{heard}");

    // DNS is reached only at the bridge's own address (where the daemon
    // answers): a resolver on another host address is out of reach.
    run_ok(Command::new("ip").args([
        "-n",
        &env.netns.name,
        "link",
        "add",
        "res0",
        "type",
        "bridge",
    ]));
    run_ok(Command::new("ip").args([
        "-n",
        &env.netns.name,
        "addr",
        "add",
        "10.53.0.1/24",
        "dev",
        "res0",
    ]));
    run_ok(Command::new("ip").args(["-n", &env.netns.name, "link", "set", "res0", "up"]));
    let mut dns = python_as(
        0,
        Some(&env.netns.name),
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('10.53.0.1',53))\ns.settimeout(8)\nprint('ready',flush=True)\ntry:\n  d,a=s.recvfrom(100)\n  print('heard',a[0],flush=True)\nexcept socket.timeout:\n  print('nothing',flush=True)",
    );
    let mut dout = std::io::BufReader::new(dns.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut dout, &mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    env.banger_ok(&[
        "vm",
        "exec",
        "edge",
        "--",
        "python3",
        "-c",
        "import socket\nfor i in range(5):\n  socket.socket(socket.AF_INET,socket.SOCK_DGRAM).sendto(b'q',('10.53.0.1',53))",
    ]);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut dout, &mut rest).unwrap();
    let _ = dns.wait();
    assert_eq!(
        rest.trim(),
        "nothing",
        "a guest reached port 53 of another host address"
    );

    // The host's other services are out of reach: a listener that would
    // accept (a refusal would mean the packet got there) sees nothing.
    let mut web = python_as(
        0,
        Some(&env.netns.name),
        "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('0.0.0.0',8080))\ns.listen()\nprint('ready',flush=True)\nc,a=s.accept()\nprint('accepted',a[0],flush=True)",
    );
    let mut wout = std::io::BufReader::new(web.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut wout, &mut line).unwrap();
    let out = env.banger(&[
        "vm",
        "exec",
        "edge",
        "--",
        "curl",
        "-sS",
        "-m",
        "3",
        &format!("http://{gw}:8080/"),
    ]);
    assert_eq!(
        out.status.code(),
        Some(28),
        "curl timed out: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = web.kill();
    let _ = web.wait();
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut wout, &mut rest);
    assert!(!rest.contains("accepted"), "{rest}");

    // By its rules: routed traffic never reaches link-local addresses, only
    // this NAT'd VM may leave the host, and only out of the bridge.
    let rules = nat_rules(&env);
    assert!(
        rules.contains("-A banger0-fwd -d 169.254.0.0/16 -j DROP"),
        "{rules}"
    );
    assert!(
        rules.contains("-A INPUT -i banger0 -j banger0-in"),
        "{rules}"
    );
    assert!(rules.contains("-A banger0-in -j DROP"), "{rules}");
    let fwd: Vec<&str> = rules
        .lines()
        .filter(|l| l.starts_with("-A banger0-fwd"))
        .collect();
    assert_eq!(
        fwd.last().copied(),
        Some("-A banger0-fwd -j DROP"),
        "{rules}"
    );
    let accepts: Vec<&&str> = fwd.iter().filter(|l| l.contains("banger:")).collect();
    assert_eq!(accepts.len(), 1, "{rules}");
    assert!(
        accepts[0].contains(&format!("-s {ip}/32 ! -o banger0")),
        "{rules}"
    );
    let chain = netns_exec(&env, &["ebtables", "-L", &tap]);
    assert!(chain.contains(&format!("--ip-src {ip}")), "{chain}");

    env.banger_ok(&["vm", "delete", "edge"]);
    assert!(!nat_rules(&env).contains("banger:"));
    // Delete returns once the tap pool confirmed the tap (and its guard)
    // gone.
    let chains = netns_exec(&env, &["ebtables", "-L"]);
    assert!(
        !chains.contains(&tap),
        "the guard of {tap} outlived the delete\n{chains}\ndaemon log:\n{}\nhelper log:\n{}",
        env.daemon_log(),
        env.helper_log()
    );
}

#[test]
fn run_rm_never_deletes_a_vm_it_did_not_create() {
    let _heavy = heavy();
    let env = vm_env();
    env.banger_ok(&["vm", "create", "--name", "dev"]);
    let before = show(&env, "dev");
    let out = env.banger(&["vm", "run", "--rm", "--name", "dev", "--", "true"]);
    assert_eq!(
        out.status.code(),
        Some(125),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("already"));
    let after = show(&env, "dev");
    assert_eq!(after["id"], before["id"]);
    assert_eq!(after["state"], "running");
    env.banger_ok(&["vm", "delete", "dev"]);
}

#[test]
fn eight_parallel_runs_get_their_own_addresses_and_leave_only_live_vms_behind() {
    let _heavy = heavy();
    let env = vm_env();
    // A long-lived VM, pinned, that must survive the crowd.
    env.banger_ok(&[
        "vm", "create", "--name", "keep", "--vcpu", "1", "--memory", "512M",
    ]);
    env.banger_ok(&["vm", "ssh", "keep", "--", "true"]);
    let children: Vec<_> = (0..8)
        .map(|_| {
            env.banger_cmd(&[
                "vm",
                "run",
                "--rm",
                "--vcpu",
                "1",
                "--memory",
                "512M",
                "--",
                "cat",
                "/sys/class/net/eth0/address",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    let (mut ips, mut macs, mut taps) = (HashSet::new(), HashSet::new(), HashSet::new());
    for c in children {
        let out = c.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}\n{}", env.daemon_log());
        macs.insert(String::from_utf8_lossy(&out.stdout).trim().to_string());
        // "network: bgtXXXXXXXX on banger0 (172.16.0.N)"
        let net = err.lines().find(|l| l.contains("network: bgt")).unwrap();
        let mut w = net
            .split_whitespace()
            .skip_while(|w| *w != "network:")
            .skip(1);
        taps.insert(w.next().unwrap().to_string());
        ips.insert(
            net.split('(')
                .nth(1)
                .unwrap()
                .split([',', ')'])
                .next()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(
        (ips.len(), macs.len(), taps.len()),
        (8, 8, 8),
        "{ips:?} {macs:?} {taps:?}"
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&env.banger_ok(&["vm", "list", "--json"]))
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let ssh = env.root().join("state/banger/ssh");
    let known = std::fs::read_to_string(ssh.join("known_hosts")).unwrap();
    let config = std::fs::read_to_string(ssh.join("ssh_config")).unwrap();
    assert_eq!(known.lines().count(), 1, "{known}");
    assert!(known.starts_with("keep.vm,"), "{known}");
    let hosts: Vec<&str> = config
        .lines()
        .filter(|l| l.trim_start().starts_with("Host ") && *l != "Host *.vm")
        .collect();
    assert_eq!(hosts.len(), 1, "{config}");
    assert!(hosts[0].contains("keep.vm"), "{config}");
    // The SSH fallback (stop, when the agent is gone) drains what a command
    // prints while it runs: far more than its channel holds, and it ends.
    let (ip, host_key) = {
        let mut w = known.split_whitespace();
        let names = w.next().unwrap();
        let ip = names.split(',').nth(1).unwrap().to_string();
        (ip, w.collect::<Vec<_>>().join(" "))
    };
    let key = ssh.join("id_ed25519");
    let ns = std::fs::File::open(format!("/var/run/netns/{}", env.netns.name)).unwrap();
    let tail = std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        // SAFETY: setns on this thread only, with a namespace fd we hold.
        assert_eq!(
            unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        rt().block_on(async {
            // (A deadline, not a wait: the guest shared two cores with eight
            // others a moment ago.)
            let s = banger::guest::ssh::connect(&ip, &key, &host_key, Duration::from_secs(30))
                .await
                .unwrap();
            tokio::time::timeout(
                Duration::from_secs(120),
                s.output("head -c 100000000 /dev/zero | tr '\\0' x; echo; echo end"),
            )
            .await
            .expect("the command finished")
            .unwrap()
        })
    })
    .join()
    .unwrap();
    assert!(
        tail.ends_with("\nend\n") && tail.len() <= 64 << 10,
        "{}",
        tail.len()
    );
    env.banger_ok(&["vm", "delete", "keep"]);
    wait_for("VMM processes to go", Duration::from_secs(20), || {
        vmm_pids(&env).is_empty().then_some(())
    });
}

/// A guest that writes to its console without end while no daemon runs
/// fills no disk: the console is a ring in QEMU, drained into the serial
/// log only by a daemon. Here the guest waits for the daemon to go (its
/// DNS stops answering), writes 4 MiB to its console and reboots (QEMU
/// exits); the serial log did not grow meanwhile (with the file chardev of
/// before, it grew by the 4 MiB). While the daemon runs, the console is
/// drained into the log.
#[test]
fn a_console_flood_while_the_daemon_is_down_fills_no_disk() {
    let _heavy = heavy();
    let env = vm_env();
    env.banger_ok(&["vm", "create", "--name", "noisy", "--vcpu", "1"]);
    let log = env
        .state_dir()
        .join("vms")
        .join(show(&env, "noisy")["id"].as_str().unwrap())
        .join("serial.log");
    // Drained while the daemon runs: the guest's own line reaches the log.
    env.banger_ok(&[
        "vm",
        "exec",
        "noisy",
        "--",
        "sh",
        "-c",
        "echo drained-while-up > /dev/ttyS0",
    ]);
    wait_for(
        "the console line in the serial log",
        Duration::from_secs(30),
        || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("drained-while-up")
                .then_some(())
        },
    );
    // The trigger: a DNS question to the daemon (the guest's resolver)
    // gets an answer while the daemon runs.
    let ask = "import socket;ns=[l.split()[1] for l in open('/etc/resolv.conf') if l.startswith('nameserver')][0];s=socket.socket(2,2);s.settimeout(1);s.sendto(bytes.fromhex('123401000001000000000000056e6f69737902766d0000010001'),(ns,53));s.recv(512)";
    env.banger_ok(&["vm", "exec", "noisy", "--", "python3", "-c", ask]);
    // `reboot -f`: QEMU runs with -no-reboot, so it exits.
    let flood = format!(
        "exec >/dev/null 2>&1 </dev/null; while python3 -c \"{ask}\"; do sleep 0.2; done; \
         head -c 4194304 /dev/zero | tr '\\0' x > /dev/ttyS0; reboot -f"
    );
    env.banger_ok(&[
        "vm", "exec", "noisy", "--", "setsid", "-f", "sh", "-c", &flood,
    ]);
    let vmm = vmm_pids(&env);
    assert_eq!(vmm.len(), 1, "{vmm:?}");
    env.banger_ok(&["daemon", "stop"]);
    let before = std::fs::metadata(&log).unwrap().len();
    let t = std::time::Instant::now();
    wait_for(
        "the guest to flood its console and reboot",
        Duration::from_secs(300),
        || (!banger::host::process::pid_alive(vmm[0])).then_some(()),
    );
    eprintln!(
        "flooded and rebooted {:?} after the daemon stopped",
        t.elapsed()
    );
    let after = std::fs::metadata(&log).unwrap().len();
    assert!(
        after < before + (1 << 20),
        "the serial log grew from {before} to {after} bytes with no daemon"
    );
    assert_eq!(show(&env, "noisy")["state"], "stopped");
    env.banger_ok(&["vm", "delete", "noisy"]);
}
