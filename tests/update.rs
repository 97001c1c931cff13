//! `banger update` against releases made by `scripts/release.sh` (signed
//! with the test key the test-hooks build trusts) and served over HTTP on
//! the test namespace's loopback: a good update keeps a running VM, every
//! damaged release is refused with nothing changed, a release whose daemon
//! does not come up is rolled back.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::support::*;
use crate::vms::vm_env;

const PORT: u16 = 18731;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn key(name: &str) -> PathBuf {
    repo().join("tests/fixtures/release").join(name)
}

/// `scripts/release.sh` for `version` from the binaries in `bin_dir`.
fn release(version: &str, bin_dir: &Path, out: &Path, latest: bool) {
    release_with(version, bin_dir, out, latest, &[]);
}

fn release_with(version: &str, bin_dir: &Path, out: &Path, latest: bool, extra: &[&Path]) {
    let mut c = Command::new(repo().join("scripts/release.sh"));
    c.args(extra);
    c.args(["--version", version, "--out"])
        .arg(out)
        .arg("--key")
        .arg(key("test-key.pem"))
        .arg("--bin-dir")
        .arg(bin_dir)
        .env("ZSTD_LEVEL", "1");
    if !latest {
        c.arg("--not-latest");
    }
    run_ok(&mut c);
}

/// `<srv>/<to>/`: `from`'s tarball under `to`'s name, its SHA256SUMS signed
/// with `signer`, then `damage` applied to the directory.
fn variant(srv: &Path, from: &str, to: &str, signer: &str, damage: impl Fn(&Path)) {
    let dir = srv.join(to);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        srv.join(from)
            .join(format!("banger-{from}-x86_64-linux.tar.zst")),
        dir.join(format!("banger-{to}-x86_64-linux.tar.zst")),
    )
    .unwrap();
    run_ok(
        Command::new("sh")
            .arg("-c")
            .arg("sha256sum banger-*.tar.zst > SHA256SUMS")
            .current_dir(&dir),
    );
    run_ok(
        Command::new("sh")
            .arg("-c")
            .arg("openssl dgst -sha256 -sign \"$1\" SHA256SUMS | base64 -w0 > SHA256SUMS.sig")
            .arg("sh")
            .arg(key(signer))
            .current_dir(&dir),
    );
    damage(&dir);
}

/// What an install directory holds: names and contents' sha256.
fn snapshot(dir: &Path) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            let data = std::fs::read(e.path()).unwrap_or_default();
            (
                e.file_name().to_string_lossy().into_owned(),
                banger::digest::sha256_hex(&data),
            )
        })
        .collect();
    v.sort();
    v
}

/// A static file server on the namespace's loopback, ready when it says so.
fn serve(env: &TestEnv, dir: &Path) -> std::process::Child {
    let mut child = env
        .netns
        .command("python3")
        .args(["-u", "-m", "http.server", "--bind", "127.0.0.1"])
        .arg(PORT.to_string())
        .arg("--directory")
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("Serving HTTP"), "http.server said {line:?}");
    child
}

/// Unpacks the three binaries of `srv`'s release `version` into `dir`.
fn install_from(srv: &Path, version: &str, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    run_ok(
        Command::new("sh")
            .arg("-c")
            .arg("zstd -dc \"$1\" | tar -x --strip-components=2 -C \"$2\" \"$3/bin\"")
            .arg("sh")
            .arg(srv.join(format!("{version}/banger-{version}-x86_64-linux.tar.zst")))
            .arg(dir)
            .arg(format!("banger-{version}-x86_64-linux")),
    );
}

struct Installed<'a> {
    env: &'a TestEnv,
    dir: PathBuf,
    /// PATH for it and the daemon and helper it starts.
    path: Option<PathBuf>,
}

impl Installed<'_> {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = self.env.netns.command(self.dir.join("banger"));
        c.args(args).envs(self.env.envs()).stdin(Stdio::null());
        if let Some(p) = &self.path {
            c.env("PATH", p);
        }
        c
    }
    fn run(&self, args: &[&str]) -> (bool, String, String) {
        let o = self.cmd(args).output().unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }
    fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args);
        assert!(
            ok,
            "banger {args:?}: {out}\n{err}\n{}",
            self.env.daemon_log()
        );
        out
    }
    fn daemon(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["daemon", "status", "--json"])).unwrap()
    }
    /// doctor's "banger release" row: (status, detail).
    fn release_row(&self) -> (String, String) {
        let (_, out, err) = self.run(&["doctor", "--json"]);
        let rows: Vec<serde_json::Value> =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
        let r = rows
            .iter()
            .find(|r| r["name"] == "banger release")
            .unwrap_or_else(|| panic!("no release row: {out}"));
        (r["status"].to_string(), r["detail"].to_string())
    }
    fn boot_id(&self) -> String {
        self.ok(&[
            "vm",
            "exec",
            "keep",
            "--",
            "cat",
            "/proc/sys/kernel/random/boot_id",
        ])
        .trim()
        .to_string()
    }
}

#[test]
fn update_installs_a_signed_release_refuses_damaged_ones_and_rolls_back_a_broken_one() {
    let _heavy = heavy();
    let env = vm_env();
    env.banger_ok(&["daemon", "stop"]);
    let built = bin("banger").parent().unwrap().to_path_buf();
    let srv = env.root().join("srv");
    release("v0.1.0", &built, &srv, false);
    release("v0.2.0", &built, &srv, true);
    // v0.3.0: a bangerd that says its version, reads the store, and fails
    // as a daemon.
    let broken = env.root().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    for b in ["banger", "bangerd-root"] {
        std::fs::copy(built.join(b), broken.join(b)).unwrap();
    }
    std::fs::write(
        broken.join("bangerd"),
        "#!/bin/sh\ncase \"$1\" in --version) echo 'bangerd v0.3.0'; exit 0;; --check-migrations) exit 0;; esac\necho 'this bangerd fails on purpose' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(
        broken.join("bangerd"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    release("v0.3.0", &broken, &srv, false);
    variant(&srv, "v0.2.0", "v0.2.1", "test-key.pem", |d| {
        let f = d.join("banger-v0.2.1-x86_64-linux.tar.zst");
        let mut data = std::fs::read(&f).unwrap();
        let mid = data.len() / 2;
        data[mid] ^= 0x55;
        std::fs::write(&f, data).unwrap();
    });
    variant(&srv, "v0.2.0", "v0.2.2", "test-key.pem", |d| {
        // A valid signature by the right key, of other bytes.
        let other = d.join("other");
        std::fs::write(&other, "not these sums").unwrap();
        run_ok(
            Command::new("sh")
                .arg("-c")
                .arg("openssl dgst -sha256 -sign \"$1\" other | base64 -w0 > SHA256SUMS.sig && rm other")
                .arg("sh")
                .arg(key("test-key.pem"))
                .current_dir(d),
        );
    });
    variant(&srv, "v0.2.0", "v0.2.3", "other-key.pem", |_| {});
    variant(&srv, "v0.2.0", "v0.2.4", "test-key.pem", |d| {
        let f = d.join("banger-v0.2.4-x86_64-linux.tar.zst");
        let len = std::fs::metadata(&f).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&f)
            .unwrap()
            .set_len(len / 2)
            .unwrap();
    });

    // install.sh --release: the newest verified release into a prefix; a
    // damaged one refused before anything is made.
    let install_sh = |prefix: &Path, extra: &[&str]| {
        Command::new(repo().join("scripts/install.sh"))
            .args(["--yes", "--release"])
            .arg(&srv)
            .arg("--key")
            .arg(key("test-key.pub.pem"))
            .arg("--prefix")
            .arg(prefix)
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let pfx = env.root().join("pfx");
    let o = install_sh(&pfx, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let said = run_ok(Command::new(pfx.join("bin/banger")).arg("--version"));
    assert!(String::from_utf8_lossy(&said.stdout).starts_with("banger v0.2.0 "));
    for (v, says) in [
        ("v0.2.1", "not the signed"),
        ("v0.2.3", "not signed by banger's release key"),
    ] {
        let bad = env.root().join(format!("pfx-{v}"));
        let o = install_sh(&bad, &["--version", v]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(says), "{v}: {err}");
        assert!(!bad.exists(), "{v} made nothing");
    }

    // Installed: v0.1.0's binaries, as install.sh --release would put them.
    let inst = Installed {
        env: &env,
        dir: env.root().join("inst"),
        path: None,
    };
    install_from(&srv, "v0.1.0", &inst.dir);
    let cfg = env.root().join("config/banger/config.toml");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!("[update]\nurl = \"http://127.0.0.1:{PORT}/\"\n"));
    std::fs::write(&cfg, text).unwrap();
    let mut server = serve(&env, &srv);

    assert!(inst.ok(&["--version"]).starts_with("banger v0.1.0 "));
    inst.ok(&["vm", "create", "--name", "keep"]);
    let boot = inst.boot_id();
    let d1 = inst.daemon();
    assert_eq!(d1["version"], "v0.1.0");
    let files = snapshot(&inst.dir);

    let out = inst.ok(&["update", "--check"]);
    assert!(out.contains("installed v0.1.0; available v0.2.0"), "{out}");
    let (status, detail) = inst.release_row();
    assert!(
        status.contains("warn") && detail.contains("v0.2.0 is available"),
        "doctor says {status} {detail}"
    );
    let out = inst.ok(&["update", "--dry-run"]);
    assert!(
        out.contains("v0.2.0 verified") && out.contains("nothing changed"),
        "{out}"
    );
    assert_eq!(
        snapshot(&inst.dir),
        files,
        "--check and --dry-run change nothing"
    );
    assert_eq!(inst.daemon()["pid"], d1["pid"], "nor restart the daemon");

    for (v, says) in [
        ("v0.2.1", "not the pinned"),
        ("v0.2.2", "not signed by banger's release key"),
        ("v0.2.3", "not signed by banger's release key"),
        ("v0.2.4", "not the pinned"),
        ("v9.9.9", "404"),
    ] {
        let (ok, out, err) = inst.run(&["update", "--to", v]);
        assert!(!ok, "{v} is refused: {out}");
        assert!(err.contains(says), "{v}: {err}");
        assert_eq!(snapshot(&inst.dir), files, "{v} left the install as it was");
        assert_eq!(
            inst.daemon()["pid"],
            d1["pid"],
            "{v} did not touch the daemon"
        );
    }
    let (ok, _, err) = inst.run(&["update", "--to", "v0.1.0-rc.1", "--allow-downgrade"]);
    assert!(!ok && err.contains("404"), "no such release: {err}");

    // The good update: new binaries, new daemon and helper, the VM untouched.
    let out = inst.ok(&["update"]);
    assert!(out.contains("updated banger v0.1.0 → v0.2.0"), "{out}");
    assert!(out.contains("1 running VM(s) kept"), "{out}");
    assert!(inst.ok(&["--version"]).starts_with("banger v0.2.0 "));
    let d2 = inst.daemon();
    assert_eq!(d2["version"], "v0.2.0");
    assert_ne!(d2["pid"], d1["pid"]);
    assert_eq!(d2["helper"]["Connected"]["version"], "v0.2.0", "{d2}");
    for b in ["banger", "bangerd", "bangerd-root"] {
        let prev = std::fs::read(inst.dir.join(format!("{b}.previous"))).unwrap();
        let old = files.iter().find(|(n, _)| n == b).unwrap();
        assert_eq!(
            banger::digest::sha256_hex(&prev),
            old.1,
            "{b}.previous is the old one"
        );
    }
    assert_eq!(
        inst.boot_id(),
        boot,
        "the VM kept running through the update"
    );

    // Downgrades only on purpose; a prerelease older than latest is one.
    let (ok, _, err) = inst.run(&["update", "--to", "v0.1.0"]);
    assert!(!ok && err.contains("--allow-downgrade"), "{err}");
    let out = inst.ok(&["update", "--check"]);
    assert!(out.contains("newest"), "{out}");
    let (status, detail) = inst.release_row();
    assert!(
        status.contains("pass") && detail.contains("v0.2.0 is the newest release"),
        "doctor says {status} {detail}"
    );

    // A release whose daemon does not come up: rolled back, the VM untouched.
    let files2 = snapshot(&inst.dir);
    let (ok, out, err) = inst.run(&["update", "--to", "v0.3.0"]);
    assert!(!ok, "{out}");
    assert!(
        err.contains("Rolled back: v0.2.0 is running again"),
        "{err}"
    );
    assert!(inst.ok(&["--version"]).starts_with("banger v0.2.0 "));
    assert_eq!(inst.daemon()["version"], "v0.2.0");
    let now = snapshot(&inst.dir);
    for b in ["banger", "bangerd", "bangerd-root"] {
        let cur = |s: &[(String, String)]| s.iter().find(|(n, _)| n == b).unwrap().1.clone();
        assert_eq!(cur(&now), cur(&files2), "{b} is v0.2.0's again");
    }
    assert_eq!(
        inst.boot_id(),
        boot,
        "the VM kept running through the rollback"
    );
    assert!(
        !now.iter().any(|(n, _)| n.starts_with(".tmp-")),
        "no staging left: {now:?}"
    );

    inst.ok(&["vm", "delete", "keep"]);
    let _ = server.kill();
    let _ = server.wait();
}

/// A PATH with every program of the usual directories but Debian's
/// package tools (what an Arch, Fedora or NixOS host lacks).
fn path_without(dir: &Path, hidden: &[&str]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for d in [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ] {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            let name = e.file_name();
            let link = dir.join(&name);
            if hidden.iter().any(|h| name == **h) || link.exists() {
                continue;
            }
            let _ = std::os::unix::fs::symlink(e.path(), &link);
        }
    }
    dir.to_path_buf()
}

#[test]
fn a_host_without_apt_or_mmdebstrap_boots_the_default_image_from_the_releases_bundles() {
    let _heavy = heavy();
    // The bundles: this build's kernel and default image, as a release
    // publishes them.
    let maker = vm_env();
    let bundle = maker.root().join("image.tar.zst");
    maker.banger_ok(&[
        "image",
        "export",
        "debian-bookworm",
        "-o",
        bundle.to_str().unwrap(),
    ]);
    maker.banger_ok(&["daemon", "stop"]);
    let kernel_dir = maker.state_dir().join("kernels/debian-cloud");
    let built = bin("banger").parent().unwrap().to_path_buf();
    let srv = maker.root().join("srv");
    release_with(
        "v0.5.0",
        &built,
        &srv,
        true,
        &[
            Path::new("--kernel-dir"),
            &kernel_dir,
            Path::new("--image-bundle"),
            &bundle,
        ],
    );
    let catalog = std::fs::read_to_string(srv.join("v0.5.0/catalog.toml")).unwrap();
    let sums = std::fs::read_to_string(srv.join("v0.5.0/SHA256SUMS")).unwrap();
    assert!(
        sums.contains(" catalog.toml") && sums.contains(" image-debian-bookworm.tar.zst"),
        "{sums}"
    );

    // A fresh host: no kernel, no image, none of Debian's package tools.
    let env = TestEnv::new();
    let cfg = env.root().join("config/banger");
    std::fs::create_dir_all(&cfg).unwrap();
    let base =
        "warm_start = false\n[vm_defaults]\nvcpu = 2\nmemory_mib = 1024\ndisk_size = \"2G\"\n";
    std::fs::write(cfg.join("config.toml"), base).unwrap();
    let hidden = [
        "apt-get",
        "apt",
        "apt-cache",
        "dpkg-deb",
        "dpkg",
        "mmdebstrap",
    ];
    let inst = Installed {
        env: &env,
        dir: env.root().join("inst"),
        path: Some(path_without(&env.root().join("path"), &hidden)),
    };
    install_from(&srv, "v0.5.0", &inst.dir);
    let mut server = serve(&env, &srv);

    // Without a release URL: refused saying what to do, nothing made.
    let (ok, _, err) = inst.run(&["vm", "run", "--rm", "--", "true"]);
    assert!(!ok, "no URL, no bundles");
    assert!(
        err.contains("no apt-get, dpkg-deb, mmdebstrap") && err.contains("[update] url"),
        "{err}"
    );
    assert_eq!(inst.ok(&["vm", "list", "--json"]).trim(), "[]");
    inst.ok(&["daemon", "stop"]);

    std::fs::write(
        cfg.join("config.toml"),
        format!("{base}[update]\nurl = \"http://127.0.0.1:{PORT}\"\n"),
    )
    .unwrap();
    let (ok, out, err) = inst.run(&["vm", "run", "--rm", "--", "cat", "/etc/os-release"]);
    assert!(ok, "{out}\n{err}\n{}", env.daemon_log());
    assert!(out.contains("bookworm"), "{out}");
    let kernels = inst.ok(&["kernel", "list", "--json"]);
    assert!(
        kernels.contains("catalog:debian-cloud@sha256:"),
        "{kernels}"
    );
    let images = inst.ok(&["image", "list", "--json"]);
    assert!(
        images.contains("catalog:debian-bookworm@sha256:"),
        "{images}"
    );
    assert!(
        catalog.contains("url = \"kernel-debian-cloud.tar.zst\""),
        "{catalog}"
    );
    // A second run uses what is here.
    let (ok, out, err) = inst.run(&["vm", "run", "--rm", "--", "echo", "again"]);
    assert!(ok && out.contains("again"), "{out}\n{err}");
    assert_eq!(inst.ok(&["vm", "list", "--json"]).trim(), "[]");
    let _ = server.kill();
    let _ = server.wait();
}
