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
        // UDP: the name server; TCP: the egress proxy (policed guests).
        assert_eq!(inp.matches("--dport 42069").count(), 2, "{inp}");
        for proto in ["udp", "tcp"] {
            assert!(
                inp.contains(&format!("-d 172.16.0.1/32 -p {proto} -m {proto} --dport 42069")),
                "{inp}"
            );
        }
        // DNS only at the bridge's own address: no blanket port 53 that
        // reaches resolvers on other host addresses.
        assert!(
            !inp.lines().any(|l| l.contains("--dport 53") && !l.contains("-d 172.16.0.1/32")),
            "{inp}"
        );
        // The daemon's port is reached only from the bridge and the host.
        let (input, _) = ns.exec(&[ipt, "-w", "10", "-S", "INPUT"]);
        assert!(
            input.contains("-d 172.16.0.1/32 ! -i banger0 -p udp -m udp --dport 42069 -m addrtype ! --src-type LOCAL"),
            "{input}"
        );
        assert!(
            input.contains("-d 172.16.0.1/32 ! -i banger0 -p tcp -m tcp --dport 42069 -m addrtype ! --src-type LOCAL"),
            "{input}"
        );
        let (fwd, _) = ns.exec(&[ipt, "-w", "10", "-S", "banger0-fwd"]);
        assert!(
            !fwd.contains("-o banger0 -j ACCEPT"),
            "routed VM-to-VM traffic is not accepted: {fwd}"
        );
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
                None => {
                    assert!(!nat.contains("banger-dns") && !inp.contains("banger-dns"));
                    let (input, _) = ns.exec(&[ipt, "-w", "10", "-S", "INPUT"]);
                    assert!(!input.contains("banger-dns"), "{input}");
                }
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
        assert_eq!(
            t["linkinfo"]["info_slave_data"]["isolated"], true,
            "guests do not reach each other on the bridge: {t}"
        );
        // A tap is bound only to a guest address of its bridge.
        for ip in [
            Ipv4Addr::new(10, 99, 0, 53),
            Ipv4Addr::new(172, 16, 0, 1),
            Ipv4Addr::new(172, 16, 0, 255),
        ] {
            let e = call(
                &mut c,
                PrivRequest::GuardTap {
                    name: "bgttest1".into(),
                    ip,
                    mac: "02:42:ac:10:00:07".into(),
                },
            )
            .await
            .expect_err("outside the bridge's guest addresses");
            assert_eq!(e.code, ErrorCode::BadRequest, "{ip}: {e:?}");
        }
        assert_eq!(
            call(
                &mut c,
                PrivRequest::GuardTap {
                    name: "bgttest1".into(),
                    ip: Ipv4Addr::new(172, 16, 0, 7),
                    mac: "02:42:ac:10:00:07".into(),
                },
            )
            .await
            .unwrap(),
            PrivReply::Done
        );
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

#[test]
fn a_bridge_that_overlaps_another_interfaces_subnet_or_route_is_refused() {
    let env = TestEnv::new();
    env.start();
    let ns = &env.netns;
    // Another interface on 10.99.0.1/24, and a route to 192.168.77.0/24.
    run_ok(
        std::process::Command::new("ip")
            .args(["-n", &ns.name, "link", "add", "lan0", "type", "bridge"]),
    );
    run_ok(std::process::Command::new("ip").args([
        "-n",
        &ns.name,
        "addr",
        "add",
        "10.99.0.1/24",
        "dev",
        "lan0",
    ]));
    run_ok(std::process::Command::new("ip").args(["-n", &ns.name, "link", "set", "lan0", "up"]));
    run_ok(std::process::Command::new("ip").args([
        "-n",
        &ns.name,
        "route",
        "add",
        "192.168.77.0/24",
        "via",
        "10.99.0.254",
    ]));
    rt().block_on(async {
        let mut c = HelperClient::connect(&env.helper_socket()).await.unwrap();
        for (address, prefix_len) in [
            (Ipv4Addr::new(10, 99, 0, 50), 26),
            (Ipv4Addr::new(10, 0, 0, 1), 8),
            (Ipv4Addr::new(192, 168, 77, 1), 28),
        ] {
            let e = call(
                &mut c,
                PrivRequest::EnsureBridge {
                    name: "banger7".into(),
                    address,
                    prefix_len,
                    dns_port: 0,
                },
            )
            .await
            .expect_err("overlapping subnet");
            assert_eq!(
                e.code,
                ErrorCode::BadRequest,
                "{address}/{prefix_len}: {e:?}"
            );
            assert!(
                e.message.contains("bridge_address"),
                "says what to change: {}",
                e.message
            );
        }
        assert!(
            link(&ns.links_json(), "banger7").is_none(),
            "nothing was created"
        );
        let route = ns.ip(&["route", "get", "10.99.0.53"]);
        assert!(route.contains("dev lan0"), "{route}");
        // A subnet of its own is fine, and again (its own routes are not
        // an overlap).
        for _ in 0..2 {
            let ok = PrivRequest::EnsureBridge {
                name: "banger7".into(),
                address: Ipv4Addr::new(10, 99, 1, 1),
                prefix_len: 24,
                dns_port: 0,
            };
            assert_eq!(call(&mut c, ok).await.unwrap(), PrivReply::Done);
        }
    });
}

#[test]
fn nat_forwards_for_the_bridge_and_uplink_only_and_restores_when_the_last_vm_goes() {
    let env = TestEnv::new();
    env.start();
    let ns = &env.netns;
    for args in [
        &["link", "add", "up0", "type", "bridge"][..],
        &["addr", "add", "10.77.0.2/24", "dev", "up0"],
        &["link", "set", "up0", "up"],
        &["route", "add", "default", "via", "10.77.0.1"],
    ] {
        run_ok(
            std::process::Command::new("ip")
                .args(["-n", &ns.name])
                .args(args),
        );
    }
    let fwd = |what: &str| {
        let (out, _) = ns.exec(&["cat", &format!("/proc/sys/net/ipv4/{what}")]);
        out.trim().to_string()
    };
    assert_eq!(fwd("ip_forward"), "0");
    rt().block_on(async {
        let mut c = HelperClient::connect(&env.helper_socket()).await.unwrap();
        let bridge = PrivRequest::EnsureBridge {
            name: "banger0".into(),
            address: Ipv4Addr::new(172, 16, 0, 1),
            prefix_len: 24,
            dns_port: 0,
        };
        assert_eq!(call(&mut c, bridge).await.unwrap(), PrivReply::Done);
        let vms = [("0123456789abcdef", 7u8), ("fedcba9876543210", 8)];
        for (id, last) in vms {
            let on = PrivRequest::EnableNat {
                vm_id: id.into(),
                ip: Ipv4Addr::new(172, 16, 0, last),
                bridge: "banger0".into(),
            };
            assert_eq!(call(&mut c, on).await.unwrap(), PrivReply::Done);
        }
        assert_eq!(fwd("ip_forward"), "0", "the host-wide switch is left alone");
        assert_eq!(fwd("conf/banger0/forwarding"), "1");
        assert_eq!(fwd("conf/up0/forwarding"), "1");
        assert_eq!(fwd("conf/lo/forwarding"), "0");
        for (n, (id, last)) in vms.into_iter().enumerate() {
            let off = PrivRequest::DisableNat {
                vm_id: id.into(),
                ip: Ipv4Addr::new(172, 16, 0, last),
                bridge: "banger0".into(),
            };
            assert_eq!(call(&mut c, off).await.unwrap(), PrivReply::Done);
            // On while a NAT VM remains; back off with the last one.
            let want = if n == 0 { "1" } else { "0" };
            assert_eq!(fwd("conf/banger0/forwarding"), want, "after {} gone", n + 1);
            assert_eq!(fwd("conf/up0/forwarding"), want, "after {} gone", n + 1);
        }
        // Forwarding that was on before banger stays on.
        ns.exec(&[
            "sh",
            "-c",
            "echo 1 > /proc/sys/net/ipv4/conf/up0/forwarding",
        ]);
        let (id, last) = vms[0];
        for on in [true, false] {
            let req = if on {
                PrivRequest::EnableNat {
                    vm_id: id.into(),
                    ip: Ipv4Addr::new(172, 16, 0, last),
                    bridge: "banger0".into(),
                }
            } else {
                PrivRequest::DisableNat {
                    vm_id: id.into(),
                    ip: Ipv4Addr::new(172, 16, 0, last),
                    bridge: "banger0".into(),
                }
            };
            assert_eq!(call(&mut c, req).await.unwrap(), PrivReply::Done);
        }
        assert_eq!(fwd("conf/up0/forwarding"), "1");
        assert_eq!(fwd("conf/banger0/forwarding"), "0");
    });
}
