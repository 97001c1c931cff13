//! Hostile bytes on both sockets: each bad connection gets an error or is
//! closed, alone; the server keeps answering normal requests.

use std::path::Path;
use std::time::Duration;

use banger::protocol::cli::{Reply, Request};
use banger::protocol::conn::{Client, ClientError};
use banger::protocol::frame::{self, read_frame, write_raw};
use banger::protocol::helper::{PrivReply, PrivRequest};
use banger::protocol::{Call, ErrorCode, Hello, HelloReply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::support::*;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Reads whatever the server says until it closes (bounded by a deadline),
/// proving it does not hang on us.
async fn drain(mut s: UnixStream) {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("server neither answered nor closed within 10s");
}

async fn hello(s: &mut UnixStream, version: u32) -> HelloReply {
    let payload = frame::encode(&Hello {
        protocol_version: version,
        client_version: "garbage-test".into(),
    })
    .unwrap();
    write_raw(s, &payload).await.unwrap();
    read_frame(s).await.unwrap()
}

/// Sends `rounds` connections' worth of garbage of every kind to `path`.
async fn assault(path: &Path, rounds: usize, method_count: u32) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for i in 0..rounds {
        let mut s = UnixStream::connect(path).await.unwrap();
        match i % 7 {
            // Random bytes, then close.
            0 => {
                let n = (rng.next() % 64) as usize;
                let _ = s.write_all(&rng.bytes(n)).await;
                let _ = s.shutdown().await;
                drain(s).await;
            }
            // A truncated frame.
            1 => {
                let _ = s.write_all(&100u32.to_be_bytes()).await;
                let _ = s.write_all(&rng.bytes(10)).await;
                let _ = s.shutdown().await;
                drain(s).await;
            }
            // A 1 GiB length prefix: refused without allocating.
            2 => {
                let _ = s.write_all(&(1u32 << 30).to_be_bytes()).await;
                drain(s).await;
            }
            // A wrong protocol version: a bad_version answer.
            3 => match hello(&mut s, 9999).await {
                HelloReply::Error(e) => assert_eq!(e.code, ErrorCode::BadVersion),
                other => panic!("{other:?}"),
            },
            // A good hello, then a garbage call frame: bad_request, closed.
            4 => {
                assert!(matches!(
                    hello(&mut s, banger::protocol::PROTOCOL_VERSION).await,
                    HelloReply::Welcome { .. }
                ));
                let n = 1 + (rng.next() % 200) as usize;
                let _ = write_raw(&mut s, &rng.bytes(n)).await;
                // Random bytes may happen to read as an unknown method, which
                // is answered and keeps the connection: hang up ourselves.
                let _ = s.shutdown().await;
                drain(s).await;
            }
            // A good hello, an unknown method (answered), then garbage.
            5 => {
                assert!(matches!(
                    hello(&mut s, banger::protocol::PROTOCOL_VERSION).await,
                    HelloReply::Welcome { .. }
                ));
                // Frame type 0 (a call), its request id, then the method tag.
                let mut payload = vec![0u8];
                payload.extend(frame::encode(&"op-x".to_string()).unwrap());
                payload.push((method_count + 5) as u8);
                write_raw(&mut s, &payload).await.unwrap();
                let env: banger::protocol::Envelope<(), ()> = match read_frame(&mut s).await {
                    Ok(e) => e,
                    Err(e) => panic!("no answer to an unknown method: {e}"),
                };
                match env.body {
                    banger::protocol::Response::Final(Err(e)) => {
                        assert_eq!(e.code, ErrorCode::UnknownMethod)
                    }
                    _ => panic!("unexpected answer to an unknown method"),
                }
                let _ = s.write_all(&rng.bytes(7)).await;
                let _ = s.shutdown().await;
                drain(s).await;
            }
            // Silence, then hang up.
            _ => drop(s),
        }
    }
}

#[test]
fn garbage_on_the_daemon_socket_hurts_only_its_sender() {
    let env = TestEnv::new();
    env.start();
    let sock = env.daemon_socket();
    rt().block_on(async {
        // Thousands of bad connections, some of them at once.
        let mut tasks = Vec::new();
        for k in 0..4 {
            let p = sock.clone();
            tasks.push(tokio::spawn(async move {
                let _ = k;
                assault(&p, 1000, <Request as banger::protocol::Methods>::COUNT).await
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let mut c: Client<Request, banger::protocol::cli::Event, Reply> =
            Client::connect(&sock).await.unwrap();
        assert_eq!(c.call(Request::Ping, |_| {}).await.unwrap(), Reply::Pong);
    });
    assert_eq!(env.banger_ok(&["vm", "list", "--json"]).trim(), "[]");
}

#[test]
fn garbage_on_the_helper_socket_hurts_only_its_sender() {
    let env = TestEnv::new();
    env.start();
    let sock = env.helper_socket();
    rt().block_on(async {
        assault(
            &sock,
            3000,
            <PrivRequest as banger::protocol::Methods>::COUNT,
        )
        .await;
        let mut c: Client<PrivRequest, banger::protocol::helper::NoEvent, PrivReply> =
            Client::connect(&sock).await.unwrap();
        match c.call(PrivRequest::Ping, |_| {}).await.unwrap() {
            PrivReply::Pong { owner_uid, .. } => assert_eq!(owner_uid, 0),
            other => panic!("{other:?}"),
        }
    });
    // The daemon's own link to the helper survived too.
    let status = env.banger_ok(&["daemon", "status"]);
    assert!(status.contains("helper    connected"), "{status}");
}

#[test]
fn a_well_formed_call_with_trailing_garbage_is_a_bad_request() {
    let env = TestEnv::new();
    env.start();
    rt().block_on(async {
        let mut s = UnixStream::connect(env.daemon_socket()).await.unwrap();
        assert!(matches!(
            hello(&mut s, banger::protocol::PROTOCOL_VERSION).await,
            HelloReply::Welcome { .. }
        ));
        let mut payload = frame::encode(&banger::protocol::ClientFrame::Call(Call {
            request_id: "op-y".to_string(),
            request: Request::Ping,
        }))
        .unwrap();
        payload.extend_from_slice(b"junk");
        write_raw(&mut s, &payload).await.unwrap();
        let env: banger::protocol::Envelope<(), ()> = read_frame(&mut s).await.unwrap();
        match env.body {
            banger::protocol::Response::Final(Err(e)) => {
                assert_eq!(e.code, ErrorCode::BadRequest);
                assert_eq!(e.request_id, "op-y");
            }
            _ => panic!("expected bad_request"),
        }
    });
    // And the refused client is told so in plain words.
    let err = rt().block_on(async {
        let path = env.root().join("nothing-here.sock");
        Client::<Request, banger::protocol::cli::Event, Reply>::connect(&path)
            .await
            .err()
            .unwrap()
    });
    assert!(matches!(err, ClientError::NotRunning { .. }));
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Requests the helper must refuse, each hostile in one field and otherwise
/// well formed (none of them may do anything).
fn hostile_priv(rng: &mut Rng) -> PrivRequest {
    use banger::domain::{Signal, VmmKind};
    use banger::protocol::helper::{LaunchSpec, QemuMachine, RootfsSpec};
    let names = [
        "eth0",
        "lo",
        "docker0",
        "bgt;rm -rf /",
        "../../x",
        "bgt",
        "BGT1",
        "bgt\n1",
        "bgtverylongname0",
        "bgt\u{e9}\u{e9}",
        "",
        "bgt 1",
    ];
    let name = |rng: &mut Rng| -> String {
        if rng.next().is_multiple_of(4) {
            // Random text, multi-byte characters included.
            (0..rng.next() % 24)
                .map(|_| char::from_u32((rng.next() % 0x3000) as u32).unwrap_or('\u{fffd}'))
                .collect()
        } else {
            names[(rng.next() % names.len() as u64) as usize].to_string()
        }
    };
    let public = std::net::Ipv4Addr::new(8, 8, 8, (rng.next() % 250) as u8);
    match rng.next() % 10 {
        0 => PrivRequest::CreateTap {
            name: name(rng),
            bridge: "banger0".into(),
        },
        1 => PrivRequest::DeleteTap { name: name(rng) },
        2 => PrivRequest::EnsureBridge {
            name: "banger0".into(),
            address: public,
            prefix_len: 24,
            dns_port: 0,
        },
        3 => PrivRequest::EnableNat {
            vm_id: name(rng),
            ip: public,
            bridge: "banger0".into(),
        },
        4 => PrivRequest::DisableNat {
            vm_id: "../0123456789ab".into(),
            ip: public,
            bridge: name(rng),
        },
        5 => PrivRequest::SignalVmm {
            pid: [0, 1, std::process::id(), u32::MAX][(rng.next() % 4) as usize],
            signal: Signal::Kill,
        },
        6 => PrivRequest::LaunchVmm(Box::new(LaunchSpec {
            vm_id: name(rng),
            kind: VmmKind::Qemu,
            qemu: Some(QemuMachine {
                kvm: false,
                vcpu: 1,
                memory_mib: 256,
                kernel: "/etc/shadow".into(),
                initrd: None,
                cmdline: "init=/bin/sh".into(),
                disks: vec![("/dev/sda".into(), "raw".into())],
                tap: Some(name(rng)),
                mac: None,
                agent_socket: None,
                serial_log: "/etc/passwd".into(),
                incoming: false,
                tcg_tb_mib: u32::MAX,
            }),
            control_socket: "/etc/qmp.sock".into(),
            log: "/etc/banger.log".into(),
            binary: Some("/etc/passwd".into()),
            reads: vec!["/root/../etc".into(); (rng.next() % 40) as usize],
        })),
        7 => PrivRequest::BuildRootfs(RootfsSpec {
            build_id: format!("../{}", name(rng)),
            recipe: "debian-bookworm".into(),
            kernel_modules: Some("/root".into()),
            kernel_version: Some("6.1.0-1".into()),
            out_dir: "/etc".into(),
            package_cache: true,
        }),
        8 => PrivRequest::GuardTap {
            name: name(rng),
            ip: public,
            mac: "02:42:ac:10:00:02 -j ACCEPT".into(),
        },
        _ => PrivRequest::GuardTap {
            name: "bgtnotthere1".into(),
            ip: std::net::Ipv4Addr::new(172, 16, 0, 9),
            mac: name(rng),
        },
    }
}

/// Frames a client sends after its hello: a call.
fn call_frame<R: serde::Serialize>(op: &str, request: R) -> Vec<u8> {
    frame::encode(&banger::protocol::ClientFrame::Call(Call {
        request_id: op.to_string(),
        request,
    }))
    .unwrap()
}

#[test]
fn a_hundred_thousand_fuzzed_frames_and_a_dripping_client_leave_both_servers_serving() {
    use banger::protocol::{decode_client_frame, Incoming, Methods};
    let env = TestEnv::new();
    env.start();
    let (dpid, hpid) = (
        env.pid_of("bangerd").unwrap(),
        env.pid_of("bangerd-root").unwrap(),
    );
    let (d0, h0) = (rss_kib(dpid), rss_kib(hpid));
    let (dsock, hsock) = (env.daemon_socket(), env.helper_socket());
    let mut frames = 0usize;
    rt().block_on(async {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        // A client that drips its hello a byte at a time is cut off at the
        // hello deadline; meanwhile others are served at once.
        let drip_path = dsock.clone();
        let drip = tokio::spawn(async move {
            let mut s = UnixStream::connect(&drip_path).await.unwrap();
            let hello = frame::encode(&Hello {
                protocol_version: banger::protocol::PROTOCOL_VERSION,
                client_version: "a very slow client indeed".into(),
            })
            .unwrap();
            let mut wire = (hello.len() as u32).to_be_bytes().to_vec();
            wire.extend(hello);
            let t = std::time::Instant::now();
            for b in wire {
                if s.write_all(&[b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            let mut buf = [0u8; 64];
            let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf)).await;
            (t.elapsed(), matches!(n, Ok(Ok(0)) | Ok(Err(_))))
        });

        // The helper: 50,000 well-formed requests, each hostile in a field,
        // pipelined 500 to a connection; every one is refused.
        for _ in 0..100 {
            let mut s = UnixStream::connect(&hsock).await.unwrap();
            assert!(matches!(
                hello(&mut s, banger::protocol::PROTOCOL_VERSION).await,
                HelloReply::Welcome { .. }
            ));
            let (mut rd, mut wr) = s.into_split();
            let reqs: Vec<PrivRequest> = (0..500).map(|_| hostile_priv(&mut rng)).collect();
            let writer = tokio::spawn(async move {
                for (i, r) in reqs.into_iter().enumerate() {
                    write_raw(&mut wr, &call_frame(&format!("f{i}"), r))
                        .await
                        .unwrap();
                }
                wr
            });
            for _ in 0..500 {
                let env: banger::protocol::Envelope<(), PrivReply> =
                    tokio::time::timeout(Duration::from_secs(30), read_frame(&mut rd))
                        .await
                        .expect("the helper answers every request")
                        .unwrap();
                match env.body {
                    banger::protocol::Response::Final(Err(_)) => {}
                    banger::protocol::Response::Final(Ok(r)) => {
                        panic!("a hostile request was not refused: {r:?}")
                    }
                    banger::protocol::Response::Event(()) => panic!("an event from the helper"),
                }
                frames += 1;
            }
            drop(writer.await.unwrap());
        }

        // The daemon: 50,000 mutations of valid calls. What would decode as
        // a request that changes something is not sent (the fuzzer must not
        // create VMs); everything else is, and is answered or refused.
        let seeds: Vec<Vec<u8>> = vec![
            call_frame("s1", Request::Ping),
            call_frame("s2", Request::VmList),
            call_frame("s3", Request::Status),
        ];
        let harmless = [
            "ping",
            "status",
            "vm.list",
            "image.list",
            "kernel.list",
            "vm.show",
        ];
        let mut keep = UnixStream::connect(&dsock).await.unwrap();
        hello(&mut keep, banger::protocol::PROTOCOL_VERSION).await;
        // Its answers are read (and dropped) as they come.
        let (mut keep_rd, mut keep) = keep.into_split();
        let answers = tokio::spawn(async move {
            let mut buf = vec![0u8; 64 << 10];
            while let Ok(n @ 1..) = keep_rd.read(&mut buf).await {
                let _ = n;
            }
        });
        while frames < 100_000 {
            let mut f = seeds[(rng.next() % 3) as usize].clone();
            for _ in 0..1 + rng.next() % 4 {
                let i = (rng.next() as usize) % f.len();
                f[i] ^= 1 << (rng.next() % 8);
            }
            if rng.next().is_multiple_of(8) {
                let n = (rng.next() % 16) as usize;
                f.extend(rng.bytes(n));
            }
            match decode_client_frame::<Request>(&f) {
                Ok(Incoming::Call(c)) if !harmless.contains(&c.request.method()) => continue,
                Ok(_) | Err(banger::protocol::CallDecodeError::UnknownMethod { .. }) => {
                    // Answered (or an input for nobody): the connection stays.
                    write_raw(&mut keep, &f).await.unwrap();
                }
                Err(_) => {
                    // Refused, and that connection is closed: a new one.
                    let mut s = UnixStream::connect(&dsock).await.unwrap();
                    hello(&mut s, banger::protocol::PROTOCOL_VERSION).await;
                    let _ = write_raw(&mut s, &f).await;
                    drain(s).await;
                }
            }
            frames += 1;
        }
        drop(keep);
        let _ = tokio::time::timeout(Duration::from_secs(30), answers).await;
        for _ in 0..20 {
            let t = std::time::Instant::now();
            let mut c: Client<Request, banger::protocol::cli::Event, Reply> =
                Client::connect(&dsock).await.unwrap();
            assert_eq!(c.call(Request::Ping, |_| {}).await.unwrap(), Reply::Pong);
            assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        }
        let (took, closed) = drip.await.unwrap();
        assert!(closed, "the dripping client was not cut off ({took:?})");
        let _ = <Request as Methods>::COUNT;
    });
    let (d1, h1) = (rss_kib(dpid), rss_kib(hpid));
    println!("{frames} frames; RSS bangerd {d0} -> {d1} KiB, bangerd-root {h0} -> {h1} KiB");
    assert!(
        d1 < d0 + 64 * 1024 && h1 < h0 + 64 * 1024,
        "memory grew: {d0}->{d1}, {h0}->{h1}"
    );
    assert_eq!(env.pid_of("bangerd"), Some(dpid), "the daemon survived");
    assert_eq!(
        env.pid_of("bangerd-root"),
        Some(hpid),
        "the helper survived"
    );
    assert_eq!(env.banger_ok(&["vm", "list", "--json"]).trim(), "[]");
    let status = env.banger_ok(&["daemon", "status"]);
    assert!(status.contains("helper    connected"), "{status}");
}
