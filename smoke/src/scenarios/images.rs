//! Snapshots, warm starts and images: restore and clone identity, the
//! automatic warm snapshot, an OCI pull from a local registry, a catalog
//! entry pulled over HTTP.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::ctx::{self, skip, Ctx, Res, BOOT_TIMEOUT, GUEST_TIMEOUT};
use crate::runner::{self, CONFIG};
use crate::scenarios::vm::run_rm;

/// What must differ between clones, as the guest itself reports it.
#[derive(Debug, PartialEq, Eq)]
struct Identity {
    random: String,
    host_key: String,
    addr: String,
    mac: String,
    hostname: String,
    machine_id: String,
}

fn identity(c: &mut Ctx, vm: &str) -> Result<Identity, String> {
    let out = c.sh_ok(
        vm,
        "k=/etc/ssh/ssh_host_ed25519_key.pub; \
         for i in $(seq 600); do [ -s $k ] && break; sleep 0.2; done; \
         head -c16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; \
         cut -d' ' -f2 $k; \
         ip -4 -o addr show dev eth0 | awk '{print $4}'; \
         cat /sys/class/net/eth0/address; hostname; cat /etc/machine-id",
    )?;
    let l: Vec<&str> = out.lines().collect();
    if l.len() != 6 {
        return Err(format!(
            "the identity probe printed {} lines: {out:?}",
            l.len()
        ));
    }
    Ok(Identity {
        random: l[0].into(),
        host_key: l[1].into(),
        addr: l[2].into(),
        mac: l[3].into(),
        hostname: l[4].into(),
        machine_id: l[5].into(),
    })
}

fn snapshots(c: &mut Ctx) -> Result<Vec<Value>, String> {
    let t = c.banger_ok(&["snapshot", "list", "--json"])?;
    Ok(c.json(&t)?.as_array().cloned().unwrap_or_default())
}

pub fn snapshot_restore(c: &mut Ctx) -> Res {
    let src = c.vm_name("src");
    c.create(&src, &[])?;
    c.sh_ok(
        &src,
        "echo kept > /root/file && cp /bin/sleep /root/snapproc && \
         (setsid /root/snapproc 100000 </dev/null >/dev/null 2>&1 &) && sync",
    )?;
    let src_id = identity(c, &src)?;
    let s = c.snapshot_name("s1");
    let out = c.banger_ok_within(&["vm", "snapshot", &src, "--name", &s], BOOT_TIMEOUT)?;
    c.check(
        out.contains(&format!("snapshot {s} of {src}")),
        format!("made: {out:?}"),
    )?;
    let listed = snapshots(c)?;
    let row = listed
        .iter()
        .find(|x| x["name"] == s.as_str())
        .cloned()
        .unwrap_or(Value::Null);
    c.check(
        row["source_vm"] == src.as_str() && row["size_bytes"].as_u64().unwrap_or(0) > 10 << 20,
        format!("listed with its source and size: {row}"),
    )?;
    let kept = c.sh_ok(&src, "cat /root/file")?;
    c.check(kept == "kept\n", "the source runs on")?;
    // A restored VM has the file and the process.
    let r = c.vm_name("run");
    let o = run_rm(
        c,
        &r,
        &["--from", &s],
        &[
            "sh",
            "-c",
            "cat /root/file; pgrep -x snapproc >/dev/null && echo alive",
        ],
    )?;
    c.check(o.ok(), format!("vm run --from exits 0: {}", o.err_line()))?;
    c.check(
        o.out() == "kept\nalive\n",
        format!("file and process restored: {:?}", o.out()),
    )?;
    let err = o.err();
    c.check(
        err.contains(&format!("from snapshot {s}")) && err.contains("  restore: "),
        "the spec line and the restore stage say so",
    )?;
    // Two clones: each its own identity.
    let (c1, c2) = (c.vm_name("c1"), c.vm_name("c2"));
    c.create(&c1, &["--from", &s])?;
    c.create(&c2, &["--from", &s])?;
    let a = identity(c, &c1)?;
    let b = identity(c, &c2)?;
    for (name, id) in [(&c1, &a), (&c2, &b)] {
        let rec = c.show(name)?;
        c.check(
            id.addr.split('/').next() == rec["ip"].as_str(),
            format!("{name}'s address matches its record: {id:?}"),
        )?;
        c.check(
            id.hostname == *name,
            format!("{name}'s hostname: {}", id.hostname),
        )?;
        c.check(
            id.machine_id != src_id.machine_id
                && id.host_key != src_id.host_key
                && id.mac != src_id.mac,
            format!("{name} differs from the source: {id:?} vs {src_id:?}"),
        )?;
    }
    c.check(
        a.random != b.random
            && a.host_key != b.host_key
            && a.addr != b.addr
            && a.mac != b.mac
            && a.machine_id != b.machine_id,
        format!("clones differ: {a:?} vs {b:?}"),
    )?;
    let o = c.banger_within(
        &["vm", "ssh", &c1, "--", "cat", "/etc/hostname"],
        GUEST_TIMEOUT,
    )?;
    c.check(
        o.out() == format!("{c1}\n"),
        format!("ssh reaches the clone as itself: {}", o.err_line()),
    )?;
    // Refused while clones exist.
    let o = c.banger(&["snapshot", "delete", &s])?;
    c.check(
        !o.ok() && o.err().contains(&c1),
        format!("delete refused while {c1} exists: {}", o.err_line()),
    )?;
    for vm in [&c1, &c2] {
        c.banger_ok_within(&["vm", "delete", vm], BOOT_TIMEOUT)?;
    }
    c.banger_ok(&["snapshot", "delete", &s])?;
    let left = snapshots(c)?;
    c.check(
        !left.iter().any(|x| x["name"] == s.as_str()),
        "the snapshot is gone",
    )?;
    Ok(())
}

fn set_warm(c: &mut Ctx, on: bool) -> Result<(), String> {
    let text = if on {
        CONFIG.replace("warm_start = false", "warm_start = true")
    } else {
        CONFIG.to_string()
    };
    c.note(&format!("config.toml now:\n{text}"));
    std::fs::write(c.env.config_file(), text).map_err(|e| format!("writing the config: {e}"))
}

pub fn warm_run(c: &mut Ctx) -> Res {
    // The daemon reads its config when it starts.
    runner::stop_stack(c)?;
    set_warm(c, true)?;
    c.banger_ok(&["daemon", "start"])?;
    let mut warm_name: Option<String> = None;
    let r = warm_inner(c, &mut warm_name);
    if let Some(w) = &warm_name {
        let _ = c.banger(&["snapshot", "delete", w]);
    }
    let back = set_warm(c, false).and_then(|_| runner::restart_stack(c));
    r?;
    back?;
    Ok(())
}

fn warm_inner(c: &mut Ctx, warm_name: &mut Option<String>) -> Res {
    let first = c.vm_name("first");
    let o = run_rm(c, &first, &[], &["true"])?;
    c.check(o.ok(), format!("the first run exits 0: {}", o.err_line()))?;
    c.check(
        o.err().contains("  agent: ") && !o.err().contains("  restore: "),
        "the first run boots",
    )?;
    let mut found: Option<Value> = None;
    c.wait_for(
        "the warm-start snapshot, its VM gone",
        Duration::from_secs(420),
        |c| {
            let snaps = snapshots(c)?;
            let vms = c.vm_names()?;
            found = snaps
                .into_iter()
                .find(|s| s["auto"] == true)
                .filter(|_| vms.is_empty());
            Ok(found.is_some())
        },
    )?;
    let name = found
        .as_ref()
        .and_then(|s| s["name"].as_str())
        .unwrap_or("")
        .to_string();
    *warm_name = Some(name.clone());
    c.check(
        name.starts_with("warm-"),
        format!("named warm-<key>: {name}"),
    )?;
    let next = c.vm_name("next");
    let o = run_rm(c, &next, &[], &["cat", "/etc/hostname"])?;
    c.check(o.ok(), format!("the next run exits 0: {}", o.err_line()))?;
    let err = o.err();
    c.check(
        err.contains("  restore: ") && err.contains(&format!("snapshot {name}")),
        "the next run restores the warm snapshot",
    )?;
    c.check(
        o.out().trim() == next,
        format!("as a VM of its own name: {:?}", o.out()),
    )?;
    // A generated name: the restored clone takes it too.
    let o = c.banger_within(
        &["vm", "run", "--rm", "--", "cat", "/etc/hostname"],
        BOOT_TIMEOUT,
    )?;
    let err = o.err();
    let generated = err
        .lines()
        .find_map(|l| l.trim().strip_prefix("reserve: "))
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or("")
        .to_string();
    c.check(
        o.ok()
            && err.contains("  restore: ")
            && !generated.is_empty()
            && o.out().trim() == generated,
        format!(
            "a run with a generated name restores as {generated:?}: {:?} {}",
            o.out(),
            o.err_line()
        ),
    )?;
    // The warm path keeps the readiness contract: the snapshot is of a
    // settled guest, so nothing of the boot is left in a clone.
    crate::scenarios::ready::tmp_runs(c, "warm", &[])?;
    crate::scenarios::ready::gcc_first(c, "wgcc", &[])?;
    crate::scenarios::ready::detached_reachable(c, "wdet", &[])?;
    let cold = c.vm_name("cold");
    let o = run_rm(c, &cold, &["--cold"], &["true"])?;
    c.check(
        o.ok() && o.err().contains("  agent: ") && !o.err().contains("  restore: "),
        format!("--cold boots anyway: {}", o.err_line()),
    )?;
    // It runs alone: nothing of its runs is left.
    let left = c.vm_names()?;
    c.check(left.is_empty(), format!("no VM is left: {left:?}"))?;
    Ok(())
}

fn need_tool(name: &str) -> Result<String, ctx::Stop> {
    ctx::find_tool(name)
        .map(|p| p.display().to_string())
        .ok_or_else(|| {
            skip(format!(
                "{name} is not installed (scripts/test.sh installs the OCI tools)"
            ))
        })
}

fn wait_port(c: &mut Ctx, what: &str, port: u16, log: &Path) -> Result<(), String> {
    let ns = c.env.netns.clone();
    c.wait_for(what, Duration::from_secs(30), |_| {
        Ok(ctx::tcp_listening(&ns, port))
    })
    .map_err(|e| format!("{e}: {}", std::fs::read_to_string(log).unwrap_or_default()))
}

/// A registry on 127.0.0.1:5055 in the namespace (tests/oci.rs uses 5000),
/// an image of busybox without an init pushed to it, pulled and run.
/// Debian's static busybox, unpacked under `<run dir>/<sub>`: a shell and
/// cat for the tiny images (the host's namespace reaches the archive).
fn busybox(c: &mut Ctx, sub: &str) -> Result<std::path::PathBuf, ctx::Stop> {
    let bb = c.dir.join(sub);
    std::fs::create_dir_all(&bb).map_err(|e| e.to_string())?;
    let mut dl = std::process::Command::new("apt-get");
    dl.args(["download", "-q", "busybox-static"])
        .current_dir(&bb);
    let o = c.run_cmd(dl, None, Duration::from_secs(300))?;
    if !o.ok() {
        return Err(skip(format!(
            "apt-get download busybox-static failed: {}",
            o.err_line()
        )));
    }
    let deb = std::fs::read_dir(&bb)
        .map_err(|e| e.to_string())?
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".deb"))
        .map(|e| e.path())
        .ok_or("no busybox-static .deb was downloaded")?;
    let x = bb.join("x");
    c.run_ok(
        "dpkg-deb",
        &["-x", &deb.display().to_string(), &x.display().to_string()],
    )?;
    Ok(x.join("bin/busybox"))
}

/// `image register`: an ext4 file made here (busybox, an os-release, no
/// agent, no init) boots as an image; a file that is not ext4 is refused
/// and leaves no image.
pub fn image_register(c: &mut Ctx) -> Res {
    let busybox = busybox(c, "bb-reg")?;
    let tree = c.dir.join("reg-tree");
    for d in ["bin", "etc"] {
        std::fs::create_dir_all(tree.join(d)).map_err(|e| e.to_string())?;
    }
    std::fs::copy(&busybox, tree.join("bin/busybox")).map_err(|e| e.to_string())?;
    for a in ["sh", "cat"] {
        std::os::unix::fs::symlink("busybox", tree.join("bin").join(a))
            .map_err(|e| e.to_string())?;
    }
    std::fs::write(tree.join("etc/os-release"), "ID=smokereg\n").map_err(|e| e.to_string())?;
    let file = c.dir.join("reg.ext4");
    let (t, f) = (tree.display().to_string(), file.display().to_string());
    c.run_ok("mkfs.ext4", &["-q", "-d", &t, &f, "64M"])?;
    let image = c.vm_name("reg");
    c.images.push(image.clone());
    let junk = c.dir.join("junk.img");
    std::fs::write(&junk, vec![7u8; 1 << 20]).map_err(|e| e.to_string())?;
    let j = junk.display().to_string();
    let o = c.banger(&["image", "register", &image, "--rootfs", &j])?;
    c.check(
        !o.ok() && o.err().contains("not an ext2/3/4"),
        format!("a file that is not ext4 is refused: {}", o.err_line()),
    )?;
    let list = c.banger_ok(&["image", "list"])?;
    c.check(!list.contains(&image), "the refusal leaves no image")?;
    c.banger_ok_within(
        &["image", "register", &image, "--rootfs", &f],
        Duration::from_secs(600),
    )?;
    boots_as_itself(c, &image, "registered:", "ID=smokereg")?;
    Ok(())
}

/// `image` records a source starting with `source`, and `vm run --rm` of
/// it prints its own os-release (`id` in it); returns the VM's name.
fn boots_as_itself(c: &mut Ctx, image: &str, source: &str, id: &str) -> Result<String, ctx::Stop> {
    let t = c.banger_ok(&["image", "show", image, "--json"])?;
    let v = c.json(&t)?;
    c.check(
        v["source"].as_str().is_some_and(|s| s.starts_with(source)),
        format!("the image records where it came from: {}", v["source"]),
    )?;
    let n = c.vm_name("vm");
    let o = run_rm(c, &n, &["--image", image], &["cat", "/etc/os-release"])?;
    c.check(o.ok(), format!("{image} boots and runs: {}", o.err_line()))?;
    c.check(
        o.out().contains(id),
        format!("the image's own file: {:?}", o.out()),
    )?;
    Ok(n)
}

/// Two services for `docker compose`: a web server and a client that
/// fetches its page by the service's name, then exits 0.
const COMPOSE: &str = r#"services:
  web:
    image: smoke/bb:v1
    command: ["sh", "-c", "echo hello-from-web > /index.html && httpd -f -p 8080 -h /"]
  client:
    image: smoke/bb:v1
    depends_on: [web]
    command: ["sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15; do wget -qO- http://web:8080/index.html && exit 0; sleep 1; done; exit 1"]
"#;

/// The sandbox image's Docker, offline: an image tarball made here
/// (busybox, by umoci and skopeo) is loaded and run, then two services
/// talk under `docker compose up --exit-code-from`.
pub fn docker(c: &mut Ctx) -> Res {
    let umoci = need_tool("umoci")?;
    let skopeo = need_tool("skopeo")?;
    let busybox = busybox(c, "bb-docker")?;
    let layout = c.dir.join("dlayout").display().to_string();
    let img = format!("{layout}:v1");
    c.run_ok(&umoci, &["init", "--layout", &layout])?;
    c.run_ok(&umoci, &["new", "--image", &img])?;
    let bundle = c.dir.join("dbundle");
    let bs = bundle.display().to_string();
    c.run_ok(&umoci, &["unpack", "--image", &img, &bs])?;
    let bin = bundle.join("rootfs/bin");
    std::fs::create_dir_all(&bin).map_err(|e| e.to_string())?;
    std::fs::copy(&busybox, bin.join("busybox")).map_err(|e| e.to_string())?;
    for a in ["sh", "echo", "httpd", "wget", "sleep"] {
        std::os::unix::fs::symlink("busybox", bin.join(a)).map_err(|e| e.to_string())?;
    }
    c.run_ok(&umoci, &["repack", "--image", &img, &bs])?;
    let tar = c.dir.join("bb.tar");
    let archive = format!("docker-archive:{}:smoke/bb:v1", tar.display());
    c.run_ok(
        &skopeo,
        &["copy", "--quiet", &format!("oci:{img}"), &archive],
    )?;
    let bytes = std::fs::read(&tar).map_err(|e| e.to_string())?;
    let n = c.vm_name("vm");
    c.create(&n, &["--image", "debian-bookworm-sandbox"])?;
    let put = |c: &mut Ctx, file: &str, data: &[u8]| -> Res {
        let script = format!("cat > /root/{file}");
        let o = c.banger_stdin(&["vm", "exec", &n, "--", "sh", "-c", &script], data)?;
        c.check(o.ok(), format!("copying {file} in: {}", o.err_line()))?;
        Ok(())
    };
    put(c, "bb.tar", &bytes)?;
    put(c, "compose.yml", COMPOSE.as_bytes())?;
    let sh = |c: &mut Ctx, script: &str| {
        c.banger_within(
            &["vm", "exec", &n, "--", "sh", "-c", script],
            Duration::from_secs(600),
        )
    };
    let o = sh(
        c,
        "docker load -i /root/bb.tar && docker run --rm smoke/bb:v1 echo hi-from-a-container",
    )?;
    c.check(
        o.ok() && o.out().contains("hi-from-a-container"),
        format!("docker load and run: {:?} {}", o.out(), o.err_line()),
    )?;
    let o = sh(c, "cd /root && docker compose up --exit-code-from client")?;
    c.check(
        o.ok() && o.out().contains("hello-from-web"),
        format!(
            "docker compose up --exit-code-from client: {:?} {}",
            o.code,
            o.err_line()
        ),
    )?;
    c.banger_ok_within(&["vm", "delete", &n], BOOT_TIMEOUT)?;
    Ok(())
}

pub fn oci_pull_run(c: &mut Ctx) -> Res {
    const PORT: u16 = 5055;
    let registry = need_tool("docker-registry")?;
    let umoci = need_tool("umoci")?;
    let skopeo = need_tool("skopeo")?;
    let dir = c.dir.clone();
    let busybox = busybox(c, "bb")?;
    // The registry.
    let rdir = dir.join("registry");
    std::fs::create_dir_all(rdir.join("data")).map_err(|e| e.to_string())?;
    let cfg = rdir.join("config.yml");
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{PORT}\n",
            rdir.join("data").display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let rlog = rdir.join("log");
    c.netns_spawn(&[&registry, "serve", &cfg.display().to_string()], &rlog)?;
    wait_port(c, "the registry", PORT, &rlog)?;
    // The image: one layer, busybox and an os-release, no init.
    let layout = dir.join("layout").display().to_string();
    let img = format!("{layout}:v1");
    c.run_ok(&umoci, &["init", "--layout", &layout])?;
    c.run_ok(&umoci, &["new", "--image", &img])?;
    let bundle = dir.join("bundle");
    let bs = bundle.display().to_string();
    c.run_ok(&umoci, &["unpack", "--image", &img, &bs])?;
    let root = bundle.join("rootfs");
    for d in ["bin", "etc"] {
        std::fs::create_dir_all(root.join(d)).map_err(|e| e.to_string())?;
    }
    std::fs::copy(&busybox, root.join("bin/busybox"))
        .map_err(|e| format!("copying busybox: {e}"))?;
    for a in ["sh", "cat", "ls"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a))
            .map_err(|e| e.to_string())?;
    }
    std::fs::write(
        root.join("etc/os-release"),
        "ID=smoketiny\nNAME=\"banger smoke tiny\"\n",
    )
    .map_err(|e| e.to_string())?;
    c.run_ok(&umoci, &["repack", "--image", &img, &bs])?;
    let reference = format!("127.0.0.1:{PORT}/banger/smoketiny:v1");
    let o = c.netns_exec(&[
        &skopeo,
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        &format!("oci:{img}"),
        &format!("docker://{reference}"),
    ])?;
    if !o.ok() {
        return Err(format!("skopeo copy: {}", o.err_line()).into());
    }
    // Pull and run.
    let image = "smoketiny-v1".to_string();
    c.images.push(image.clone());
    c.banger_ok_within(&["image", "pull", &reference], Duration::from_secs(900))?;
    let pinned = format!("oci:{reference}@sha256:");
    let n = boots_as_itself(c, &image, &pinned, "ID=smoketiny")?;
    let names = c.vm_names()?;
    c.check(!names.contains(&n), "no VM is left")?;
    Ok(())
}

/// A user catalog entry (a bundle made by `image export`, served over HTTP
/// in the namespace) pulled by its name, then booted.
pub fn catalog(c: &mut Ctx) -> Res {
    const PORT: u16 = 5056;
    let python = need_tool("python3")?;
    let sha256sum = need_tool("sha256sum")?;
    let dir = c.dir.clone();
    let serve = dir.join("serve");
    std::fs::create_dir_all(&serve).map_err(|e| e.to_string())?;
    let bundle = serve.join("bundle.tar.zst");
    let bs = bundle.display().to_string();
    c.banger_ok_within(
        &["image", "export", "debian-bookworm", "-o", &bs],
        Duration::from_secs(1200),
    )?;
    let sum = c.run_ok(&sha256sum, &[&bs])?;
    let sha = sum.split_whitespace().next().unwrap_or("").to_string();
    let size = std::fs::metadata(&bundle).map(|m| m.len()).unwrap_or(0);
    let log = dir.join("http.log");
    c.netns_spawn(
        &[
            &python,
            "-m",
            "http.server",
            &PORT.to_string(),
            "--bind",
            "127.0.0.1",
            "--directory",
            &serve.display().to_string(),
        ],
        &log,
    )?;
    wait_port(c, "the HTTP server", PORT, &log)?;
    let name = "smoke-catalog".to_string();
    let file = c.env.config_dir().join("catalog.toml");
    std::fs::write(
        &file,
        format!(
            "[[image]]\nname = \"{name}\"\ndescription = \"the smoke suite's bundle\"\nurl = \"http://127.0.0.1:{PORT}/bundle.tar.zst\"\nsha256 = \"{sha}\"\nsize = {size}\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    c.images.push(name.clone());
    let r = catalog_inner(c, &name);
    let _ = std::fs::remove_file(&file);
    r
}

fn catalog_inner(c: &mut Ctx, name: &str) -> Res {
    let t = c.banger_ok(&["image", "catalog", "--json"])?;
    let v = c.json(&t)?;
    c.check(
        v.as_array()
            .is_some_and(|a| a.iter().any(|e| e["name"] == name)),
        format!("image catalog lists {name}"),
    )?;
    c.banger_ok_within(&["image", "pull", name], Duration::from_secs(1200))?;
    let t = c.banger_ok(&["image", "list", "--json"])?;
    let v = c.json(&t)?;
    c.check(
        v.as_array()
            .is_some_and(|a| a.iter().any(|e| e["name"] == name)),
        format!("image list has {name}"),
    )?;
    let n = c.vm_name("vm");
    let o = run_rm(c, &n, &["--image", name], &["cat", "/etc/os-release"])?;
    c.check(
        o.ok() && o.out().contains("bookworm"),
        format!("a VM boots from it: {}", o.err_line()),
    )?;
    Ok(())
}
