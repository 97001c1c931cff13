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
    registry_with(env, "")
}

/// The registry on 127.0.0.1:5000 with `extra` appended to its config
/// (e.g. an `auth:` section).
fn registry_with(env: &TestEnv, extra: &str) -> Registry {
    let dir = env.root().join("registry");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::write(
        dir.join("config.yml"),
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:5000\n{extra}",
            dir.join("data").display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("log")).unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", &env.netns.name])
        .arg(tool("docker-registry"))
        .arg("serve")
        .arg(dir.join("config.yml"))
        // The access log goes to stdout, the rest to stderr: both in `log`.
        .stdout(log.try_clone().unwrap())
        .stderr(log)
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
        port_open(env, 5000).then_some(())
    });
    reg
}

fn port_open(env: &TestEnv, port: u16) -> bool {
    let (out, _) = env.netns.exec(&[
        "bash",
        "-c",
        &format!("(exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null && echo up || true"),
    ]);
    out.contains("up")
}

/// A process in the test's namespace, killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `args` in the namespace and waits until it listens on `port`.
fn serve(env: &TestEnv, args: &[&str], port: u16, log: &Path) -> Server {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &env.netns.name])
        .args(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    wait_for(
        &format!("{args:?} on port {port}"),
        Duration::from_secs(60),
        || {
            if let Ok(Some(st)) = child.try_wait() {
                panic!(
                    "{args:?} exited ({st}): {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            port_open(env, port).then_some(())
        },
    );
    Server(child)
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
    crate::api::api_pull_streams_its_stages(&env);
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

/// An OCI layout with `multi` (an index: arm64 listed first, then amd64,
/// each with its own /etc/arch) and `zst` (amd64 with a zstd layer), on a
/// busybox base.
fn multi_arch_layout(w: &Path) -> String {
    let bb = busybox(w);
    let l = w.join("layout").display().to_string();
    umoci(&["init", "--layout", &l]);
    for (tag, arch) in [("amd", "amd64"), ("arm", "arm64"), ("z", "amd64")] {
        umoci(&["new", "--image", &format!("{l}:{tag}")]);
        umoci(&[
            "config",
            "--image",
            &format!("{l}:{tag}"),
            "--architecture",
            arch,
        ]);
        let b = w.join(format!("b-{tag}"));
        umoci(&[
            "unpack",
            "--image",
            &format!("{l}:{tag}"),
            b.to_str().unwrap(),
        ]);
        sh(&format!(
            "set -e; cd {r}; mkdir -p bin etc; cp {bb} bin/busybox; ln -s busybox bin/sh; ln -s busybox bin/cat; \
             printf 'ID=tiny\\n' > etc/os-release; echo {arch} > etc/arch; echo {tag} > etc/tag",
            r = b.join("rootfs").display(),
            bb = bb.display()
        ));
        umoci(&[
            "repack",
            "--image",
            &format!("{l}:{tag}"),
            b.to_str().unwrap(),
        ]);
    }
    // The index, by hand (umoci makes single-platform images).
    let index_path = Path::new(&l).join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let entry = |tag: &str, arch: &str| {
        let m = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
            .unwrap()
            .clone();
        serde_json::json!({"mediaType": m["mediaType"], "digest": m["digest"], "size": m["size"],
                           "platform": {"architecture": arch, "os": "linux"}})
    };
    let list = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry("arm", "arm64"), entry("amd", "amd64")],
    });
    let bytes = serde_json::to_vec(&list).unwrap();
    let digest = banger::digest::sha256_hex(&bytes);
    std::fs::write(Path::new(&l).join("blobs/sha256").join(&digest), &bytes).unwrap();
    index["manifests"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": format!("sha256:{digest}"), "size": bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": "multi"},
        }));
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
    // The third image with its layer recompressed as zstd, in a layout of
    // its own (into the same one, skopeo reuses the gzip blob it finds).
    run_ok(Command::new(tool("skopeo")).args([
        "copy",
        "--quiet",
        "--dest-compress",
        "--dest-compress-format",
        "zstd",
        &format!("oci:{l}:z"),
        &format!("oci:{l}-zst:zst"),
    ]));
    l
}

/// The media types of the layers of `tag` in the layout.
fn layer_types(l: &str, tag: &str) -> Vec<String> {
    let blob = |d: &serde_json::Value| -> serde_json::Value {
        let hex = d.as_str().unwrap().trim_start_matches("sha256:");
        serde_json::from_slice(&std::fs::read(Path::new(l).join("blobs/sha256").join(hex)).unwrap())
            .unwrap()
    };
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(Path::new(l).join("index.json")).unwrap()).unwrap();
    let m = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap();
    blob(&m["digest"])["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["mediaType"].as_str().unwrap().to_string())
        .collect()
}

fn entries_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn token_auth_multi_arch_zstd_catalog_bundles_create_by_reference_and_cache_prune() {
    let _heavy = heavy();
    artifacts(); // the kernel package in the shared cache
    let env = TestEnv::with_own_cache();
    let cfg = env.root().join("config/banger");
    std::fs::create_dir_all(&cfg).unwrap();
    std::fs::write(
        cfg.join("config.toml"),
        "warm_start = false\n[vm_defaults]\nvcpu = 1\nmemory_mib = 512\ndisk_size = \"1G\"\n",
    )
    .unwrap();
    env.banger_ok(&["kernel", "pull", "debian-cloud"]);

    // A token server and a registry that accepts only its tokens.
    let tok = env.root().join("token");
    std::fs::create_dir_all(&tok).unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/token-server.py"
    );
    let tok_dir = tok.display().to_string();
    let _token = serve(
        &env,
        &[
            "python3",
            script,
            &tok_dir,
            "5001",
            "banger-test",
            "banger-test-issuer",
            "banger/multi",
            "banger/zst",
        ],
        5001,
        &tok.join("log"),
    );
    let reg = registry_with(
        &env,
        &format!(
            "auth:\n  token:\n    realm: http://127.0.0.1:5001/token\n    service: banger-test\n    issuer: banger-test-issuer\n    rootcertbundle: {tok_dir}/cert.pem\n"
        ),
    );
    let w = env.root().join("oci");
    std::fs::create_dir_all(&w).unwrap();
    let l = multi_arch_layout(&w);
    let push = |src: &str, dst: &str, all: bool| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &env.netns.name])
            .arg(tool("skopeo"))
            .args(["copy", "--quiet", "--dest-tls-verify=false"]);
        if all {
            c.arg("--all");
        }
        run_ok(
            c.arg(format!("oci:{src}"))
                .arg(format!("docker://127.0.0.1:5000/{dst}")),
        );
    };
    push(&format!("{l}:multi"), "banger/multi:v1", true);
    push(&format!("{l}:multi"), "banger/multi:v2", true);
    push(&format!("{l}-zst:zst"), "banger/zst:v1", false);
    let types = layer_types(&format!("{l}-zst"), "zst");
    assert!(types.iter().all(|t| t.ends_with("+zstd")), "{types:?}");
    let anonymous = env.netns.exec(&["python3", "-c", "import urllib.request as u, urllib.error as e\ntry: u.urlopen('http://127.0.0.1:5000/v2/banger/multi/manifests/v1')\nexcept e.HTTPError as x: print(x.code)"]).0;
    assert_eq!(
        anonymous.trim(),
        "401",
        "the registry must refuse anonymous pulls"
    );

    // Token auth, an index resolved to amd64 (listed second).
    let before = std::fs::read_to_string(tok.join("requests.log")).unwrap_or_default();
    env.banger_ok(&["image", "pull", "127.0.0.1:5000/banger/multi:v1"]);
    let after = std::fs::read_to_string(tok.join("requests.log")).unwrap();
    assert!(
        after[before.len()..].contains("scope=repository%3Abanger%2Fmulti%3Apull"),
        "banger did not ask the token server: {after}"
    );
    let show = |name: &str| -> serde_json::Value {
        serde_json::from_str(&env.banger_ok(&["image", "show", name, "--json"])).unwrap()
    };
    let rootfs = |name: &str| Path::new(show(name)["dir"].as_str().unwrap()).join("rootfs.ext4");
    assert_eq!(
        debugfs(&rootfs("multi-v1"), "cat /etc/arch").trim(),
        "amd64"
    );
    // A zstd layer.
    env.banger_ok(&["image", "pull", "127.0.0.1:5000/banger/zst:v1"]);
    assert_eq!(debugfs(&rootfs("zst-v1"), "cat /etc/tag").trim(), "z");
    let blobs_dir = env.cache_dir().join("banger/images/oci-blobs");
    let zst_layers: Vec<String> = {
        let m: serde_json::Value = serde_json::from_slice(
            &std::fs::read(
                Path::new(show("zst-v1")["dir"].as_str().unwrap()).join("oci-blobs.json"),
            )
            .unwrap(),
        )
        .unwrap();
        m["blobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_str().unwrap().replace(':', "-"))
            .collect()
    };
    let multi_layers: Vec<String> = entries_in(&blobs_dir)
        .into_iter()
        .filter(|b| !zst_layers.contains(b))
        .collect();
    assert!(
        !zst_layers.is_empty() && !multi_layers.is_empty(),
        "{zst_layers:?} {multi_layers:?} {:?}",
        entries_in(&blobs_dir)
    );
    let registry_log = || std::fs::read_to_string(reg.dir.join("log")).unwrap_or_default();
    // banger's own manifest GETs (its user agent), not skopeo's pushes.
    let manifest_gets = |tag: &str| {
        registry_log()
            .lines()
            .filter(|l| {
                l.contains(&format!("/v2/banger/multi/manifests/{tag} ")) && l.contains("\"banger ")
            })
            .count()
    };
    let one_pull = manifest_gets("v1");
    assert!(one_pull > 0, "{}", registry_log());

    // A user catalog: a bundle served on loopback, verified, registered; a
    // wrong sha256 refused with nothing left.
    let files = env.root().join("files");
    std::fs::create_dir_all(&files).unwrap();
    let bundle = files.join("team.tar.zst");
    env.banger_ok(&[
        "image",
        "export",
        "multi-v1",
        "-o",
        bundle.to_str().unwrap(),
    ]);
    let sha = banger::digest::sha256_file(&bundle).unwrap();
    let size = std::fs::metadata(&bundle).unwrap().len();
    let files_dir = files.display().to_string();
    let _files = serve(
        &env,
        &[
            "python3",
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            "--directory",
            &files_dir,
            "5002",
        ],
        5002,
        &env.root().join("http.log"),
    );
    // A kernel bundle: the pulled kernel's directory as `kernel import`
    // takes it (vmlinux, initrd.img, modules/<version>), as a .tar.zst.
    let kbundle = files.join("kernel.tar.zst");
    {
        let kdir = env.state_dir().join("kernels/debian-cloud");
        let z =
            zstd::stream::write::Encoder::new(std::fs::File::create(&kbundle).unwrap(), 3).unwrap();
        let mut t = tar::Builder::new(z);
        t.append_path_with_name(kdir.join("vmlinux"), "vmlinux")
            .unwrap();
        t.append_path_with_name(kdir.join("initrd.img"), "initrd.img")
            .unwrap();
        t.append_dir_all("modules", kdir.join("modules")).unwrap();
        t.into_inner().unwrap().finish().unwrap();
    }
    let ksha = banger::digest::sha256_file(&kbundle).unwrap();
    let ksize = std::fs::metadata(&kbundle).unwrap().len();
    let wrong = "0".repeat(64);
    std::fs::write(
        cfg.join("catalog.toml"),
        format!(
            "[[image]]\nname = \"team-tiny\"\ndescription = \"a team's image\"\nurl = \"http://127.0.0.1:5002/team.tar.zst\"\nsha256 = \"{sha}\"\nsize = {size}\n\n\
             [[image]]\nname = \"team-bad\"\nurl = \"http://127.0.0.1:5002/team.tar.zst\"\nsha256 = \"{wrong}\"\nsize = {size}\n\n\
             [[kernel]]\nname = \"team-kernel\"\nurl = \"http://127.0.0.1:5002/kernel.tar.zst\"\nsha256 = \"{ksha}\"\nsize = {ksize}\n"
        ),
    )
    .unwrap();
    let catalog = env.banger_ok(&["image", "catalog"]);
    for name in ["team-tiny", "team-bad", "alpine-3-20", "debian-bookworm"] {
        assert!(catalog.contains(name), "{catalog}");
    }
    let kernels = env.banger_ok(&["kernel", "catalog"]);
    assert!(kernels.contains("debian-cloud"), "{kernels}");
    let out = env.banger(&["image", "pull", "team-bad"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("sha256"), "{err}");
    assert!(!env.banger_ok(&["image", "list"]).contains("team-bad"));
    let bundles_dir = env.cache_dir().join("banger/images/bundles");
    assert_eq!(
        entries_in(&bundles_dir),
        Vec::<String>::new(),
        "a refused download left files"
    );
    env.banger_ok(&["image", "pull", "team-tiny"]);
    assert_eq!(
        show("team-tiny")["source"],
        format!("catalog:team-tiny@sha256:{sha}")
    );
    assert_eq!(
        debugfs(&rootfs("team-tiny"), "cat /etc/arch").trim(),
        "amd64"
    );
    assert_eq!(
        entries_in(&bundles_dir),
        vec![format!("sha256-{sha}.tar.zst")]
    );
    // The kernel entry: pulled, verified, imported.
    assert!(env
        .banger_ok(&["kernel", "catalog"])
        .contains("team-kernel"));
    env.banger_ok(&["kernel", "pull", "team-kernel"]);
    let k: serde_json::Value =
        serde_json::from_str(&env.banger_ok(&["kernel", "show", "team-kernel", "--json"])).unwrap();
    assert_eq!(k["source"], format!("catalog:team-kernel@sha256:{ksha}"));
    assert_eq!(k["has_initrd"], true, "{k}");
    assert_eq!(k["has_modules"], true, "{k}");
    let catalog: serde_json::Value =
        serde_json::from_str(&env.banger_ok(&["image", "catalog", "--json"])).unwrap();
    assert!(catalog
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["name"] == "team-tiny"));
    let table = env.banger_ok(&["image", "catalog"]);
    let row = table.lines().find(|l| l.starts_with("team-tiny")).unwrap();
    assert!(row.split_whitespace().nth(1) == Some("yes"), "{table}");
    let bash = env.banger_ok(&["completion", "bash"]);
    assert!(
        bash.contains("team-tiny") && bash.contains("alpine-3-20"),
        "completion lacks catalog names"
    );

    // `vm create --image <reference>`, twice at once: one pull, two VMs.
    let create = |name: &str| {
        env.banger_cmd(&[
            "vm",
            "create",
            "--name",
            name,
            "--image",
            "127.0.0.1:5000/banger/multi:v2",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
    };
    let (a, b) = (create("ref-a"), create("ref-b"));
    for (c, n) in [(a, "a"), (b, "b")] {
        let out = output_within(c, &format!("vm create ref-{n}"), Duration::from_secs(400));
        assert!(
            out.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            env.daemon_log()
        );
    }
    assert_eq!(
        manifest_gets("v2"),
        one_pull,
        "two creates pulled twice:\n{}",
        registry_log()
    );
    assert_eq!(
        show("multi-v2")["source"]
            .as_str()
            .unwrap()
            .split('@')
            .next(),
        Some("oci:127.0.0.1:5000/banger/multi:v2")
    );
    let vm: serde_json::Value =
        serde_json::from_str(&env.banger_ok(&["vm", "show", "ref-a", "--json"])).unwrap();
    assert_eq!(vm["image"], "multi-v2");
    // No sshd in that image: `vm ssh` says so at once.
    let t = std::time::Instant::now();
    let out = env.banger_within(
        &["vm", "ssh", "ref-a", "--", "true"],
        Stdio::null(),
        Duration::from_secs(60),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("SSH is unavailable")
            && err.contains("vm exec -t ref-a"),
        "{err}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "vm ssh took {:?}",
        t.elapsed()
    );
    let out = env.banger_within(
        &["vm", "exec", "ref-b", "--", "cat", "/etc/arch"],
        Stdio::null(),
        Duration::from_secs(120),
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "amd64",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    env.banger_ok(&["vm", "delete", "ref-a"]);
    env.banger_ok(&["vm", "delete", "ref-b"]);

    // Cache prune: what a deleted image used goes, the rest stays.
    let stale_build = env
        .cache_dir()
        .join("banger/images/0123456789abcdef0123456789abcdef");
    std::fs::create_dir_all(&stale_build).unwrap();
    std::fs::write(stale_build.join("rootfs.ext4"), vec![1u8; 1 << 20]).unwrap();
    env.banger_ok(&["image", "delete", "zst-v1"]);
    let dry = env.banger_ok(&["image", "cache", "prune", "--dry-run"]);
    for z in &zst_layers {
        assert!(dry.contains(z.as_str()), "{dry}");
        assert!(blobs_dir.join(z).exists(), "--dry-run removed {z}");
    }
    assert!(
        dry.contains("0123456789abcdef0123456789abcdef") && dry.contains("freed"),
        "{dry}"
    );
    for m in &multi_layers {
        assert!(!dry.contains(m.as_str()), "{m} is used by multi-v1: {dry}");
    }
    env.banger_ok(&["image", "cache", "prune"]);
    let left = entries_in(&blobs_dir);
    assert!(zst_layers.iter().all(|z| !left.contains(z)), "{left:?}");
    assert!(multi_layers.iter().all(|m| left.contains(m)), "{left:?}");
    assert!(!stale_build.exists());
    assert_eq!(
        entries_in(&bundles_dir),
        {
            let mut v = vec![
                format!("sha256-{sha}.tar.zst"),
                format!("sha256-{ksha}.tar.zst"),
            ];
            v.sort();
            v
        },
        "team-tiny's and team-kernel's bundles must stay"
    );
    assert!(env
        .banger_ok(&["image", "cache", "prune"])
        .contains("nothing to prune"));
    env.banger_ok(&["image", "delete", "team-tiny"]);
    assert!(env
        .banger_ok(&["image", "cache", "prune"])
        .contains(&format!("sha256-{sha}.tar.zst")));
    assert_eq!(
        entries_in(&bundles_dir),
        vec![format!("sha256-{ksha}.tar.zst")]
    );
    // What stayed boots: the pulled image with the catalog's kernel.
    let out = env.banger_within(
        &[
            "vm",
            "run",
            "--rm",
            "--image",
            "multi-v1",
            "--kernel",
            "team-kernel",
            "--",
            "cat",
            "/etc/arch",
        ],
        Stdio::null(),
        Duration::from_secs(300),
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "amd64",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
