//! Network and guest services: NAT rules, `vm ports`, `vm stats`,
//! `<name>.vm` DNS, `ssh-config`.

use std::net::SocketAddrV4;
use std::time::Duration;

use serde_json::Value;

use crate::ctx::{self, Ctx, Res, BOOT_TIMEOUT, BRIDGE_IP, DNS_PORT};

/// The namespace's iptables rules (filter and nat) tagged with this VM.
fn vm_rules(c: &mut Ctx, id: &str) -> Result<Vec<String>, String> {
    let ipt = ctx::iptables();
    let tag = format!("banger:{id}");
    let mut rules = Vec::new();
    for table in ["filter", "nat"] {
        let o = c.netns_exec(&[ipt, "-w", "10", "-t", table, "-S"])?;
        if !o.ok() {
            return Err(format!("{ipt} -t {table} -S: {}", o.err_line()));
        }
        rules.extend(
            o.out()
                .lines()
                .filter(|l| l.contains(&tag))
                .map(|l| format!("{table}: {l}")),
        );
    }
    rules.sort();
    Ok(rules)
}

/// Rules tagged `banger:<id>` whose VM no longer exists.
pub fn orphan_rules(c: &mut Ctx) -> Result<Vec<String>, String> {
    let ipt = ctx::iptables();
    let mut rules = Vec::new();
    for table in ["filter", "nat"] {
        let o = c.netns_exec(&[ipt, "-w", "10", "-t", table, "-S"])?;
        if !o.ok() {
            return Err(format!("{ipt} -t {table} -S: {}", o.err_line()));
        }
        rules.extend(o.out().lines().map(str::to_string));
    }
    // Listed after the rules: a VM made meanwhile is in the list.
    let list: Value = serde_json::from_str(&c.banger_ok(&["vm", "list", "--json"])?)
        .map_err(|e| format!("vm list --json: {e}"))?;
    let ids: Vec<String> = list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["id"].as_str().map(str::to_string))
        .collect();
    Ok(rules
        .into_iter()
        .filter(|r| match r.split_once("banger:") {
            Some((_, rest)) => {
                let id: String = rest
                    .chars()
                    .take_while(|ch| ch.is_ascii_alphanumeric() || *ch == '-')
                    .collect();
                !ids.contains(&id)
            }
            None => false,
        })
        .collect())
}

pub fn nat_rules(c: &mut Ctx) -> Res {
    let n = c.vm_name("vm");
    let v = c.create(&n, &["--nat"])?;
    let id = v["id"].as_str().ok_or("the record has an id")?.to_string();
    c.check(
        v["nat"] == true,
        format!("the record says nat: {}", v["nat"]),
    )?;
    let first = vm_rules(c, &id)?;
    c.check(
        first.iter().any(|r| r.contains("MASQUERADE")) && first.len() >= 2,
        format!("a MASQUERADE and forward rules are installed: {first:?}"),
    )?;
    c.banger_ok_within(&["vm", "stop", &n], BOOT_TIMEOUT)?;
    let stopped = vm_rules(c, &id)?;
    c.check(stopped.is_empty(), format!("removed on stop: {stopped:?}"))?;
    c.banger_ok_within(&["vm", "start", &n], BOOT_TIMEOUT)?;
    let again = vm_rules(c, &id)?;
    c.check(
        again == first,
        format!("the same rule set after stop/start: {first:?} then {again:?}"),
    )?;
    c.banger_ok_within(&["vm", "delete", &n], BOOT_TIMEOUT)?;
    let after = vm_rules(c, &id)?;
    c.check(after.is_empty(), format!("removed on delete: {after:?}"))?;
    // Without --nat: none at all.
    let m = c.vm_name("plain");
    let v = c.create(&m, &[])?;
    let id = v["id"].as_str().unwrap_or("?").to_string();
    let none = vm_rules(c, &id)?;
    c.check(none.is_empty(), format!("no rules without --nat: {none:?}"))?;
    // Switched on and off while it runs: the rules, and the guest's name
    // servers (the host's, when it has any a guest can reach).
    let host_dns: Vec<String> = std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("nameserver"))
        .map(|a| a.trim().to_string())
        .filter(|a| {
            a.parse::<std::net::Ipv4Addr>()
                .is_ok_and(|a| !a.is_loopback())
        })
        .collect();
    let guest_dns = |c: &mut Ctx| c.sh_ok(&m, "grep ^nameserver /etc/resolv.conf || true");
    let was = guest_dns(c)?;
    let o = c.banger_ok(&["vm", "set", &m, "--nat"])?;
    c.check(o.contains("NAT on"), format!("vm set --nat: {o}"))?;
    let on = vm_rules(c, &id)?;
    c.check(
        on.iter().any(|r| r.contains("MASQUERADE")),
        format!("NAT rules on a running VM: {on:?}"),
    )?;
    let dns = guest_dns(c)?;
    c.check(
        host_dns.iter().all(|a| dns.contains(a.as_str())),
        format!("the guest has the host's name servers {host_dns:?}: {dns}"),
    )?;
    c.banger_ok(&["vm", "set", &m, "--no-nat"])?;
    let off = vm_rules(c, &id)?;
    c.check(off.is_empty(), format!("NAT rules gone at once: {off:?}"))?;
    let dns = guest_dns(c)?;
    c.check(
        dns == was,
        format!("the guest's name servers as before: {was} then {dns}"),
    )?;
    Ok(())
}

fn list_ports(c: &mut Ctx, vm: &str) -> Result<Vec<Value>, String> {
    let t = c.banger_ok(&["vm", "ports", vm, "--json"])?;
    Ok(c.json(&t)?.as_array().cloned().unwrap_or_default())
}

pub fn ports(c: &mut Ctx) -> Res {
    let n = c.vm_name("vm");
    c.create(&n, &[])?;
    let endpoint = format!("{n}.vm:22");
    let mut ssh: Option<Value> = None;
    // Ready means sshd listens too (the readiness unit is ordered after
    // it); the wait only covers a slow `vm ports`.
    c.wait_for("sshd in vm ports", Duration::from_secs(120), |c| {
        ssh = list_ports(c, &n)?
            .into_iter()
            .find(|x| x["port"] == 22 && x["proto"].as_str().unwrap_or("").starts_with("tcp"));
        Ok(ssh.is_some())
    })?;
    let ssh = ssh.unwrap_or(Value::Null);
    c.check(
        ssh["endpoint"] == endpoint.as_str(),
        format!("sshd's endpoint is {endpoint}: {ssh}"),
    )?;
    c.check(
        ssh["process"].as_str().unwrap_or("").contains("sshd"),
        format!("with its process: {ssh}"),
    )?;
    c.sh_ok(
        &n,
        "setsid python3 -m http.server 8000 >/dev/null 2>&1 < /dev/null &",
    )?;
    let want = format!("{n}.vm:8000");
    c.wait_for(
        "the guest's server in vm ports",
        Duration::from_secs(60),
        |c| {
            Ok(list_ports(c, &n)?
                .iter()
                .any(|x| x["port"] == 8000 && x["endpoint"] == want.as_str()))
        },
    )?;
    let table = c.banger_ok(&["vm", "ports", &n])?;
    c.check(table.contains(&want), format!("the table shows {want}"))?;
    Ok(())
}

pub fn stats(c: &mut Ctx) -> Res {
    let n = c.vm_name("vm");
    c.create(&n, &[])?;
    let t = c.banger_ok(&["vm", "stats", &n, "--json"])?;
    let s = c.json(&t)?;
    let h = &s["host"];
    c.check(
        h["rss_bytes"].as_u64().unwrap_or(0) > 50 << 20,
        format!("the VMM's RSS is over 50 MiB: {}", h["rss_bytes"]),
    )?;
    c.check(
        h["disk_bytes"].as_u64().unwrap_or(0) > 0,
        format!("disk bytes: {}", h["disk_bytes"]),
    )?;
    c.check(
        h["cpu_percent"].as_f64().is_some(),
        format!("cpu %: {}", h["cpu_percent"]),
    )?;
    let g = &s["guest"];
    let total = g["mem_total_bytes"].as_u64().unwrap_or(0);
    c.check(
        total > 256 << 20 && total <= 512 << 20,
        format!("the guest's memory is its 512 MiB (less the kernel's): {total}"),
    )?;
    c.check(
        g["processes"].as_u64().unwrap_or(0) > 5,
        format!("processes: {}", g["processes"]),
    )?;
    c.check(
        g["disks"]
            .as_array()
            .is_some_and(|d| d.iter().any(|x| x["mount"] == "/")),
        format!("the root disk: {}", g["disks"]),
    )?;
    let table = c.banger_ok(&["vm", "stats", &n])?;
    c.check(
        table.contains("host") && table.contains("guest"),
        "the table has both sides",
    )?;
    Ok(())
}

pub fn dns(c: &mut Ctx) -> Res {
    let n = c.vm_name("vm");
    let v = c.create(&n, &[])?;
    let ip = v["ip"].as_str().ok_or("the VM has an address")?.to_string();
    let server = SocketAddrV4::new(BRIDGE_IP, DNS_PORT);
    let ns = c.env.netns.clone();
    let a = ctx::dns_query(&ns, server, &format!("{n}.vm"))?;
    c.note(&format!("{n}.vm: {a:?}"));
    c.check(
        a.rcode == 0 && a.addrs.iter().any(|x| x.to_string() == ip),
        format!("{n}.vm is {ip}: {} {:?}", a.rcode_name(), a.addrs),
    )?;
    let a = ctx::dns_query(&ns, server, "nosuch-smoke.vm")?;
    c.check(
        a.rcode == 3,
        format!("another .vm name is NXDOMAIN: {}", a.rcode_name()),
    )?;
    let a = ctx::dns_query(&ns, server, "example.com")?;
    c.check(
        a.rcode == 5,
        format!("other zones are REFUSED: {}", a.rcode_name()),
    )?;
    // From the guest, through its resolver (port 53, redirected).
    let got = c.exec(&n, &["getent", "hosts", &format!("{n}.vm")])?.out();
    c.check(
        got.starts_with(&ip),
        format!("the guest resolves it: {got:?}"),
    )?;
    let t = c.banger_ok(&["dns", "--json"])?;
    let d = c.json(&t)?;
    c.check(
        d["serving"] == true
            && d["records"]
                .as_array()
                .is_some_and(|r| r.iter().any(|x| x[0] == format!("{n}.vm").as_str())),
        format!("banger dns lists it: {}", d["records"]),
    )?;
    c.banger_ok_within(&["vm", "stop", &n], BOOT_TIMEOUT)?;
    let name = format!("{n}.vm");
    c.wait_for("a stopped VM's name to go", Duration::from_secs(10), |c| {
        let a = ctx::dns_query(&c.env.netns, server, &name)?;
        Ok(a.rcode == 3)
    })?;
    Ok(())
}

pub fn ssh_config(c: &mut Ctx) -> Res {
    let n = c.vm_name("vm");
    let v = c.create(&n, &[])?;
    let ip = v["ip"].as_str().unwrap_or("?").to_string();
    let home = c.env.home();
    let file = home.join(".ssh/config");
    std::fs::create_dir_all(home.join(".ssh")).map_err(|e| e.to_string())?;
    let mine = "Host work\n  User me\n  # mine\n";
    std::fs::write(&file, mine).map_err(|e| e.to_string())?;
    c.banger_ok(&["ssh-config", "--install"])?;
    c.banger_ok(&["ssh-config", "--install"])?;
    let installed = std::fs::read_to_string(&file).unwrap_or_default();
    c.check(
        installed.matches("Include ").count() == 1 && installed.contains("Host work"),
        format!("one Include however often installed, the user's lines kept: {installed:?}"),
    )?;
    // (ssh takes ~ from the password database, so the file is named.)
    let fs = file.display().to_string();
    let host = format!("{n}.vm");
    let g = c.run_ok("ssh", &["-G", "-F", &fs, &host])?;
    let key = c
        .env
        .state_dir()
        .join("ssh/id_ed25519")
        .display()
        .to_string();
    c.check(
        g.lines().any(|l| l == format!("hostname {ip}")),
        format!("ssh -G resolves {host} to {ip}"),
    )?;
    c.check(
        g.lines().any(|l| l == format!("identityfile {key}")),
        format!("with banger's key {key}"),
    )?;
    c.banger_ok(&["ssh-config", "--uninstall"])?;
    let back = std::fs::read_to_string(&file).unwrap_or_default();
    c.check(
        back == mine,
        format!("the file is back byte for byte: {back:?}"),
    )?;
    Ok(())
}
