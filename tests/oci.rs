//! `image pull` against a real registry (Debian's `docker-registry`) on
//! loopback inside the test's network namespace, with images made by
//! `umoci` and pushed by `skopeo`: layers with a whiteout and an opaque
//! directory, a hard link, a symlink, a setuid file and an xattr; a boot of
//! the pulled image (no init of its own: the agent is PID 1); a corrupted
//! blob refused with nothing registered.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::*;

struct Registry {
    child: Child,
    dir: PathBuf,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn registry(env: &TestEnv) -> Registry {
    let dir = env.root().join("registry");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::write(
        dir.join("config.yml"),
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:5000\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", &env.netns.name])
        .arg(tool("docker-registry"))
        .arg("serve")
        .arg(dir.join("config.yml"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("log")).unwrap())
        .spawn()
        .unwrap();
    let mut reg = Registry { child, dir };
    wait_for("the registry", Duration::from_secs(30), || {
        if let Ok(Some(st)) = reg.child.try_wait() {
            panic!(
                "docker-registry exited ({st}): {}",
                std::fs::read_to_string(reg.dir.join("log")).unwrap_or_default()
            );
        }
        let (out, _) = env.netns.exec(&[
            "bash",
            "-c",
            "(exec 3<>/dev/tcp/127.0.0.1/5000) 2>/dev/null && echo up || true",
        ]);
        out.contains("up").then_some(())
    });
    reg
}

fn umoci(args: &[&str]) {
    run_ok(Command::new(tool("umoci")).args(args));
}

/// busybox (static) from Debian, for a shell and `cat` in the image.
fn busybox(dir: &Path) -> PathBuf {
    let out = dir.join("bb");
    std::fs::create_dir_all(&out).unwrap();
    run_ok(
        Command::new("apt-get")
            .args(["download", "-q", "busybox-static"])
            .current_dir(&out),
    );
    let deb = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".deb"))
        .unwrap()
        .path();
    run_ok(
        Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(out.join("x")),
    );
    out.join("x/bin/busybox")
}

fn sh(script: &str) {
    run_ok(Command::new("sh").args(["-c", script]));
}

fn debugfs(image: &Path, cmd: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", cmd])
        .arg(image)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn image_pull_from_a_registry_applies_layers_and_boots_without_an_init() {
    let _heavy = heavy();
    let env = crate::vms::vm_env();
    let reg = registry(&env);
    let w = env.root().join("oci");
    std::fs::create_dir_all(&w).unwrap();
    let bb = busybox(&w);
    let layout = w.join("layout");
    let l = layout.to_str().unwrap().to_string();
    umoci(&["init", "--layout", &l]);
    umoci(&["new", "--image", &format!("{l}:v1")]);
    // Layer 1: busybox, files to delete and replace, a hard link, a
    // symlink, a setuid file, an xattr.
    let b = w.join("bundle");
    umoci(&["unpack", "--image", &format!("{l}:v1"), b.to_str().unwrap()]);
    let r = b.join("rootfs");
    sh(&format!(
        "set -e; cd {r}; mkdir -p bin etc opt/old usr/bin; cp {bb} bin/busybox; \
         for a in sh cat ls stat; do ln -s busybox bin/$a; done; \
         printf 'ID=tiny\\nNAME=\"banger tiny\"\\n' > etc/os-release; \
         echo gone > etc/gone; echo a > opt/old/a; \
         echo x > usr/bin/su && chmod 4755 usr/bin/su && ln usr/bin/su usr/bin/su2; \
         ln -s /etc/os-release etc/os-link; \
         python3 -c \"import os; os.setxattr('etc/os-release', 'user.banger', b'hello')\"",
        r = r.display(),
        bb = bb.display()
    ));
    umoci(&["repack", "--image", &format!("{l}:v1"), b.to_str().unwrap()]);
    // Layer 2: a whiteout and an opaque directory.
    std::fs::remove_dir_all(&b).unwrap();
    umoci(&["unpack", "--image", &format!("{l}:v1"), b.to_str().unwrap()]);
    sh(&format!(
        "set -e; cd {r}; rm etc/gone; rm -rf opt/old; mkdir opt/old; echo b > opt/old/b",
        r = r.display()
    ));
    umoci(&["repack", "--image", &format!("{l}:v1"), b.to_str().unwrap()]);
    let push = |tag: &str| {
        let out = Command::new("ip")
            .args(["netns", "exec", &env.netns.name])
            .arg(tool("skopeo"))
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("oci:{l}:v1"))
            .arg(format!("docker://127.0.0.1:5000/banger/tiny:{tag}"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    push("v1");

    let out = env.banger(&["image", "pull", "127.0.0.1:5000/banger/tiny:v1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}\n{}", env.daemon_log());
    let img: serde_json::Value =
        serde_json::from_str(&env.banger_ok(&["image", "show", "tiny-v1", "--json"])).unwrap();
    assert!(img["source"]
        .as_str()
        .unwrap()
        .starts_with("oci:127.0.0.1:5000/banger/tiny:v1@sha256:"));
    let rootfs = Path::new(img["dir"].as_str().unwrap()).join("rootfs.ext4");
    let ls = |p: &str| debugfs(&rootfs, &format!("ls -l {p}"));
    assert!(!ls("/etc").contains(" gone"), "{}", ls("/etc"));
    let old = ls("/opt/old");
    assert!(
        old.contains(" b") && !old.contains(" a\n") && !old.contains(" a "),
        "{old}"
    );
    let su = debugfs(&rootfs, "stat /usr/bin/su");
    assert!(
        su.contains("Mode:  04755") && su.contains("Links: 2"),
        "{su}"
    );
    assert!(debugfs(&rootfs, "stat /etc/os-link").contains("Type: symlink"));
    assert!(
        debugfs(&rootfs, "ea_get /etc/os-release user.banger").contains("hello"),
        "{}",
        debugfs(&rootfs, "ea_list /etc/os-release")
    );
    assert!(debugfs(&rootfs, "stat /usr/local/bin/banger-agent").contains("User:     0"));

    // It boots: no init of its own, the agent runs as PID 1.
    let out = env.banger_within(
        &[
            "vm",
            "run",
            "--rm",
            "--image",
            "tiny-v1",
            "--",
            "cat",
            "/etc/os-release",
        ],
        Stdio::null(),
        Duration::from_secs(300),
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        env.daemon_log()
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ID=tiny"));

    // A corrupted blob: refused, nothing registered, nothing cached.
    let blobs = reg.dir.join("data/docker/registry/v2/blobs/sha256");
    let mut biggest: Option<(u64, PathBuf)> = None;
    for p in std::fs::read_dir(&blobs).unwrap().flatten() {
        for q in std::fs::read_dir(p.path()).unwrap().flatten() {
            let data = q.path().join("data");
            let len = std::fs::metadata(&data).map(|m| m.len()).unwrap_or(0);
            if biggest.as_ref().is_none_or(|(l, _)| len > *l) {
                biggest = Some((len, data));
            }
        }
    }
    let (_, data) = biggest.unwrap();
    let mut bytes = std::fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();
    // Fetched again (not from banger's blob cache): refused.
    let cache = shared_cache().join("banger/images/oci-blobs");
    let _ = std::fs::remove_dir_all(&cache);
    let out = env.banger(&[
        "image",
        "pull",
        "127.0.0.1:5000/banger/tiny:v1",
        "--name",
        "corrupt",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.to_lowercase().contains("digest"), "{err}");
    let images = env.banger_ok(&["image", "list", "--json"]);
    assert!(!images.contains("corrupt"), "{images}");
    let left: Vec<_> = std::fs::read_dir(&cache)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.iter().all(|n| !n.to_string_lossy().ends_with(".tmp")),
        "{left:?}"
    );
}
