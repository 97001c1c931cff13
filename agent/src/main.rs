//! banger-agent: see the library docs.

use std::path::Path;

use banger_agent::cmdline::GuestParams;
use banger_agent::{netlink, server, setup};

fn main() {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let (params, mut errors) = GuestParams::parse(&cmdline);
    let mut step = |what: &str, r: Result<(), String>| {
        if let Err(e) = r {
            eprintln!("banger-agent: {what}: {e}");
            errors.push(format!("{what}: {e}"));
        }
    };
    let root = Path::new("/");
    if let Some(name) = &params.name {
        step("hostname", setup::set_kernel_hostname(name));
    }
    step("identity files", setup::write_identity(root, &params));
    step("resolv.conf", setup::write_resolv(root, &params));
    // /root is the work disk, mounted by systemd a little later: write the
    // key once it is there, without holding up the rest.
    let key_params = params.clone();
    std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !setup::is_mountpoint("/root") && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        if let Err(e) = setup::write_authorized_key(Path::new("/"), &key_params) {
            eprintln!("banger-agent: authorized key: {e}");
        }
    });
    step(
        "loopback",
        netlink::ifindex("lo")
            .and_then(netlink::link_up)
            .map_err(|e| e.to_string()),
    );
    if let Some((ip, len)) = params.ip {
        let net = (|| {
            let ifname = netlink::first_ethernet()?;
            let idx = netlink::ifindex(&ifname)?;
            netlink::set_address(idx, ip, len)?;
            netlink::link_up(idx)?;
            if let Some(gw) = params.gw {
                netlink::set_default_route(idx, gw)?;
            }
            Ok::<(), std::io::Error>(())
        })();
        step("network", net.map_err(|e| e.to_string()));
    }
    eprintln!(
        "banger-agent: setup done ({} problems); serving on vsock port {}",
        errors.len(),
        banger_agent::api::AGENT_PORT
    );
    std::thread::spawn(|| {
        if let Err(e) = server::serve_exec() {
            eprintln!("banger-agent: exec service: {e}");
        }
    });
    if let Err(e) = server::serve(server::AgentState {
        setup_errors: errors,
    }) {
        eprintln!("banger-agent: serving: {e}");
        std::process::exit(1);
    }
}
