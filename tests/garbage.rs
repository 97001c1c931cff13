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
                // Frame type 0 (a call), its op id, then the method tag.
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
            op_id: "op-y".to_string(),
            request: Request::Ping,
        }))
        .unwrap();
        payload.extend_from_slice(b"junk");
        write_raw(&mut s, &payload).await.unwrap();
        let env: banger::protocol::Envelope<(), ()> = read_frame(&mut s).await.unwrap();
        match env.body {
            banger::protocol::Response::Final(Err(e)) => {
                assert_eq!(e.code, ErrorCode::BadRequest);
                assert_eq!(e.op_id, "op-y");
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
