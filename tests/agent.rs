//! Commands through the guest agent, end to end on one real VM (QEMU TCG
//! here): argv as given, stdin, large output, exit codes 126/127/128+N,
//! signals, a terminal, and `vm ping`.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use crate::support::*;

fn exec_out(env: &TestEnv, args: &[&str]) -> std::process::Output {
    let mut a = vec!["vm", "exec", "box", "--"];
    a.extend_from_slice(args);
    env.banger(&a)
}

#[test]
fn commands_run_through_the_agent_with_their_argv_input_output_and_codes() {
    let _heavy = heavy();
    let env = crate::vms::vm_env();
    env.banger_ok(&["vm", "create", "--name", "box"]);

    // The argv arrives exactly as given: no shell re-quoting.
    let out = exec_out(&env, &["printf", "%s|", "a b", "c'd", "$HOME"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "a b|c'd|$HOME|");

    // Piped stdin reaches the command, with its EOF.
    let mut child = env
        .banger_cmd(&["vm", "exec", "box", "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"piped\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "piped\n");
    assert_eq!(out.status.code(), Some(0));

    // 100 MB of stdin arrive whole, from a file and from a pipe that
    // writes faster than the guest reads.
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big");
    let data: Vec<u8> = (0..100_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    std::fs::write(&big, &data).unwrap();
    let want = banger::digest::sha256_hex(&data);
    let out = env.banger_within(
        &["vm", "exec", "box", "--", "sha256sum"],
        std::fs::File::open(&big).unwrap().into(),
        Duration::from_secs(300),
    );
    // The guest's sha256sum of what it got.
    let summed = |out: &std::process::Output| {
        assert_eq!(
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .next(),
            Some(want.as_str()),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        )
    };
    summed(&out);
    let mut child = env
        .banger_cmd(&[
            "vm",
            "exec",
            "box",
            "--",
            "sh",
            "-c",
            "cat > /root/big && sha256sum /root/big",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = output_within(
        child,
        "100 MB through a pipe into a file",
        Duration::from_secs(300),
    );
    writer.join().unwrap().unwrap();
    summed(&out);

    // 20 MB of output arrive whole.
    let out = exec_out(
        &env,
        &["sh", "-c", "head -c 20000000 /dev/zero | tr '\\0' x"],
    );
    assert_eq!(out.stdout.len(), 20_000_000);
    assert!(out.stdout.iter().all(|&b| b == b'x'));

    // Exit codes: the command's own, 127 not found, 126 cannot run,
    // 128+N for a signal; the cause on stderr.
    assert_eq!(
        exec_out(&env, &["sh", "-c", "exit 42"]).status.code(),
        Some(42)
    );
    let out = exec_out(&env, &["no-such-command"]);
    assert_eq!(out.status.code(), Some(127));
    assert!(String::from_utf8_lossy(&out.stderr).contains("command not found"));
    let out = exec_out(&env, &["/etc/hostname"]);
    assert_eq!(out.status.code(), Some(126));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot run"));
    assert_eq!(
        exec_out(&env, &["sh", "-c", "kill -KILL $$"]).status.code(),
        Some(137)
    );
    let out = env.banger(&["vm", "exec", "box", "-w", "/nowhere", "--", "true"]);
    assert_eq!(out.status.code(), Some(126));

    // Environment and working directory.
    let out = env.banger(&[
        "vm",
        "exec",
        "box",
        "-e",
        "GREETING=hi there",
        "-w",
        "/tmp",
        "--",
        "sh",
        "-c",
        "echo \"$GREETING\" $(pwd)",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi there /tmp\n");

    // Ctrl-C on the CLI reaches the guest process: INT, then KILL.
    let child = env
        .banger_cmd(&[
            "vm",
            "exec",
            "box",
            "--",
            "sh",
            "-c",
            "echo started; exec sleep 600",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the command to start", Duration::from_secs(60), || {
        let ps = exec_out(&env, &["pgrep", "-x", "sleep"]);
        (!ps.stdout.is_empty()).then_some(())
    });
    interrupt_expecting_130(child);
    assert!(
        exec_out(&env, &["pgrep", "-x", "sleep"]).stdout.is_empty(),
        "the guest process is gone"
    );

    // A background process does not hold the answer back.
    let out = exec_out(&env, &["sh", "-c", "sleep 300 & echo bg"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "bg\n");

    // A terminal: -t under a pty, its size, Ctrl-C as a byte, the exit code.
    let (seen, code) = pty_session(
        &env,
        &["vm", "exec", "-t", "box", "--", "sh"],
        &[
            ("# ", b"stty size; tty\r".as_slice()),
            ("/dev/pts/", b"sleep 100\r"),
            ("sleep 100", b"\x03"),
            ("^C", b"echo after-$((1+1))\r"),
            ("after-2", b"exit 7\r"),
        ],
    );
    assert!(seen.contains("30 100"), "{seen}");
    assert_eq!(code, 7, "{seen}");

    // The agent's round trip.
    let ping = env.banger_ok(&["vm", "ping", "box", "-c", "3"]);
    assert_eq!(ping.matches("agent round trip").count(), 3, "{ping}");

    env.banger_ok(&["vm", "delete", "box"]);
}

/// Runs `args` on a pty of 30x100; for each (expect, send) waits (with a
/// deadline) until the terminal has shown `expect`, then types `send`.
/// Returns what the terminal showed and the exit code.
fn pty_session(env: &TestEnv, args: &[&str], steps: &[(&str, &[u8])]) -> (String, i32) {
    use std::sync::{Arc, Mutex};
    let ws = nix::pty::Winsize {
        ws_row: 30,
        ws_col: 100,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&ws), None).unwrap();
    let slave = std::fs::File::from(pty.slave);
    let mut child = env
        .banger_cmd(args)
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave)
        .spawn()
        .unwrap();
    let mut master = std::fs::File::from(pty.master);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let mut m = master.try_clone().unwrap();
        let seen = seen.clone();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 4096];
            while let Ok(n) = m.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    let mut from = 0;
    for (expect, send) in steps {
        let at = wait_for(
            &format!("{expect:?} on the terminal"),
            Duration::from_secs(60),
            || {
                let s = seen.lock().unwrap();
                s.get(from..)?
                    .windows(expect.len())
                    .position(|w| w == expect.as_bytes())
                    .map(|i| from + i + expect.len())
            },
        );
        from = at;
        master.write_all(send).unwrap();
    }
    let st = child.wait().unwrap();
    drop(master);
    let _ = reader.join();
    let all = String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    (all, st.code().unwrap_or(-1))
}
