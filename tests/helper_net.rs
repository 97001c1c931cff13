//! bangerd-root's network operations, for real, inside the test's namespace.

use std::net::Ipv4Addr;

use banger::protocol::conn::{Client, ClientError};
use banger::protocol::helper::{NoEvent, PrivReply, PrivRequest};
use banger::protocol::ErrorCode;

use crate::support::*;

type HelperClient = Client<PrivRequest, NoEvent, PrivReply>;

fn link<'a>(links: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    links
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["ifname"] == name)
}

async fn call(
    c: &mut HelperClient,
    req: PrivRequest,
) -> Result<PrivReply, banger::protocol::RpcError> {
    match c.call(req, |_| {}).await {
        Ok(r) => Ok(r),
        Err(ClientError::Rpc(e)) => Err(e),
        Err(e) => panic!("transport failure: {e}"),
    }
}

#[test]
fn bridge_and_taps_are_created_idempotently_and_foreign_interfaces_refused() {
    let env = TestEnv::new();
    env.start();
    let ns = &env.netns;
    // A foreign interface (a bridge) that happens to have a tap-like name.
    run_ok(
        std::process::Command::new("ip")
            .args(["-n", &ns.name, "link", "add", "bgtdummy", "type", "bridge"]),
    );
    rt().block_on(async {
        let mut c = HelperClient::connect(&env.helper_socket()).await.unwrap();
        let bridge = PrivRequest::EnsureBridge {
            name: "banger0".into(),
            address: Ipv4Addr::new(172, 16, 0, 1),
            prefix_len: 24,
            dns_port: 42069,
        };
        for _ in 0..2 {
            assert_eq!(call(&mut c, bridge.clone()).await.unwrap(), PrivReply::Done);
        }
        // Guests' DNS on 53 goes to the daemon's port, once; another port
        // replaces it; 0 removes it.
        let ipt = banger::host::nat::iptables().unwrap();
        let dns_rules = || {
            let (nat, _) = ns.exec(&[ipt, "-w", "10", "-t", "nat", "-S", "PREROUTING"]);
            let (inp, _) = ns.exec(&[ipt, "-w", "10", "-S", "banger0-in"]);
            (nat, inp)
        };
        let (nat, inp) = dns_rules();
        assert_eq!(nat.matches("--to-ports 42069").count(), 1, "{nat}");
        assert!(
            nat.contains("-i banger0") && nat.contains("--dport 53"),
            "{nat}"
        );
        assert_eq!(inp.matches("--dport 42069").count(), 1, "{inp}");
        assert!(
            inp.find("--dport 42069").unwrap() < inp.find("-j DROP").unwrap(),
            "accepted before the drop: {inp}"
        );
        for (port, want) in [(5353u16, Some("5353")), (0, None)] {
            let mut b = bridge.clone();
            if let PrivRequest::EnsureBridge { dns_port, .. } = &mut b {
                *dns_port = port;
            }
            assert_eq!(call(&mut c, b).await.unwrap(), PrivReply::Done);
            let (nat, inp) = dns_rules();
            assert!(
                !nat.contains("42069") && !inp.contains("42069"),
                "{nat}{inp}"
            );
            match want {
                Some(p) => assert!(nat.contains(&format!("--to-ports {p}")), "{nat}"),
                None => assert!(!nat.contains("banger-dns") && !inp.contains("banger-dns")),
            }
        }
        assert_eq!(call(&mut c, bridge.clone()).await.unwrap(), PrivReply::Done);
        let links = ns.links_json();
        let br = link(&links, "banger0").expect("bridge exists");
        assert_eq!(br["linkinfo"]["info_kind"], "bridge");
        assert!(br["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
        let addrs = ns.ip(&["-j", "addr", "show", "dev", "banger0"]);
        assert_eq!(addrs.matches("172.16.0.1").count(), 1, "{addrs}");

        let tap = PrivRequest::CreateTap {
            name: "bgttest1".into(),
            bridge: "banger0".into(),
        };
        for _ in 0..2 {
            assert_eq!(call(&mut c, tap.clone()).await.unwrap(), PrivReply::Done);
        }
        let links = ns.links_json();
        let t = link(&links, "bgttest1").expect("tap exists");
        assert_eq!(t["linkinfo"]["info_data"]["type"], "tap");
        assert_eq!(t["master"], "banger0");
        match call(&mut c, PrivRequest::ListTaps).await.unwrap() {
            PrivReply::Taps(taps) => {
                assert_eq!(taps.len(), 1, "{taps:?}");
                assert_eq!(taps[0].name, "bgttest1");
                assert_eq!(taps[0].master.as_deref(), Some("banger0"));
            }
            other => panic!("{other:?}"),
        }

        let del = PrivRequest::DeleteTap {
            name: "bgttest1".into(),
        };
        for _ in 0..2 {
            assert_eq!(call(&mut c, del.clone()).await.unwrap(), PrivReply::Done);
        }
        assert!(link(&ns.links_json(), "bgttest1").is_none());

        for name in ["lo", "eth0", "banger0", "bgtdummy", "bgt;reboot", "../../x"] {
            let e = call(&mut c, PrivRequest::DeleteTap { name: name.into() })
                .await
                .expect_err(name);
            assert_eq!(e.code, ErrorCode::BadRequest, "{name}: {e:?}");
        }
        let e = call(
            &mut c,
            PrivRequest::EnsureBridge {
                name: "lo".into(),
                address: Ipv4Addr::new(172, 16, 0, 1),
                prefix_len: 24,
                dns_port: 0,
            },
        )
        .await
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        let e = call(
            &mut c,
            PrivRequest::CreateTap {
                name: "eth0".into(),
                bridge: "banger0".into(),
            },
        )
        .await
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
    });
    assert!(link(&ns.links_json(), "lo").is_some());
    assert!(
        link(&ns.links_json(), "bgtdummy").is_some(),
        "the foreign interface is untouched"
    );
}
