//! OCI image → ext4 root (`cargo bench --bench oci`, as root): banger's
//! `image pull` against the baseline `umoci unpack` + `mkfs.ext4 -d` of the
//! same image, alternating in one run, `BANGER_BENCH_RUNS` (5) each.
//!
//! The image: one gzip layer of this host's /usr/bin and
//! /usr/lib/python3.11 (~370 MB, binaries and many small files), made by
//! umoci and pushed by skopeo to Debian's docker-registry on loopback in
//! the bench's namespace. banger's first pull also downloads the layer
//! (reported on its own); the timed pulls find the blob in banger's cache,
//! so both sides start from the same compressed layer on local disk and
//! end with an ext4 file system (banger's also holds the agent and is
//! hashed and published).

#[path = "common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn main() {
    let runs = runs(5);
    let b = Bench::new("oci", 1);
    let w = b.root().join("oci");
    std::fs::create_dir_all(&w).unwrap();
    let l = w.join("layout").display().to_string();
    let umoci = |args: &[&str]| run(Command::new("umoci").args(args));
    umoci(&["init", "--layout", &l]);
    umoci(&["new", "--image", &format!("{l}:v1")]);
    let bundle = w.join("bundle");
    umoci(&[
        "unpack",
        "--image",
        &format!("{l}:v1"),
        bundle.to_str().unwrap(),
    ]);
    let rootfs = bundle.join("rootfs");
    run(Command::new("mkdir").arg("-p").arg(rootfs.join("usr/lib")));
    run(Command::new("cp")
        .args(["-a", "/usr/bin"])
        .arg(rootfs.join("usr/bin")));
    run(Command::new("cp")
        .args(["-a", "/usr/lib/python3.11"])
        .arg(rootfs.join("usr/lib/python3.11")));
    let t = Instant::now();
    umoci(&[
        "repack",
        "--image",
        &format!("{l}:v1"),
        bundle.to_str().unwrap(),
    ]);
    println!("made the image in {:.1}s", t.elapsed().as_secs_f64());
    std::fs::remove_dir_all(&bundle).unwrap();

    // The registry, in the namespace.
    let reg = w.join("registry");
    std::fs::create_dir_all(reg.join("data")).unwrap();
    std::fs::write(
        reg.join("config.yml"),
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:5000\n",
            reg.join("data").display()
        ),
    )
    .unwrap();
    let mut registry = b
        .in_ns("docker-registry")
        .arg("serve")
        .arg(reg.join("config.yml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !b
        .in_ns("bash")
        .args(["-c", "(exec 3<>/dev/tcp/127.0.0.1/5000) 2>/dev/null"])
        .status()
        .unwrap()
        .success()
    {
        assert!(Instant::now() < deadline, "the registry did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    run(b.in_ns("skopeo").args([
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        &format!("oci:{l}:v1"),
        "docker://127.0.0.1:5000/bench/big:v1",
    ]));

    let reference = "127.0.0.1:5000/bench/big:v1";
    let pull = |name: &str| -> (Duration, serde_json::Value) {
        let t = Instant::now();
        b.banger(&["image", "pull", reference, "--name", name]);
        let d = t.elapsed();
        let v = serde_json::from_str(&b.banger(&["image", "show", name, "--json"])).unwrap();
        (d, v)
    };
    let (first, img) = pull("big-first");
    let root_bytes = img["rootfs_bytes"].as_u64().unwrap();
    let dir = img["dir"].as_str().unwrap().to_string();
    let blobs: serde_json::Value =
        serde_json::from_slice(&std::fs::read(Path::new(&dir).join("oci-blobs.json")).unwrap())
            .unwrap();
    b.banger(&["image", "delete", "big-first"]);
    println!(
        "first pull (download included): {:.2}s, ext4 root {} MiB",
        first.as_secs_f64(),
        root_bytes >> 20
    );

    let (mut ours, mut base) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let (d, _) = pull(&format!("big-{i}"));
        b.banger(&["image", "delete", &format!("big-{i}")]);
        ours.push(d);

        let out = w.join(format!("base-{i}"));
        let img = w.join(format!("base-{i}.ext4"));
        let t = Instant::now();
        umoci(&[
            "unpack",
            "--image",
            &format!("{l}:v1"),
            out.to_str().unwrap(),
        ]);
        run(Command::new("mkfs.ext4")
            .args(["-F", "-q", "-m", "1", "-d"])
            .arg(out.join("rootfs"))
            .arg(&img)
            .arg(format!("{}M", root_bytes >> 20)));
        base.push(t.elapsed());
        std::fs::remove_dir_all(&out).unwrap();
        std::fs::remove_file(&img).unwrap();
    }
    println!("banger image pull (cached blob): {:?}", secs(&ours));
    println!("umoci unpack + mkfs.ext4 -d:    {:?}", secs(&base));
    let (mo, mb) = (median(&mut ours), median(&mut base));
    println!(
        "median: banger {:.2}s, baseline {:.2}s, ratio {:.2}x",
        mo.as_secs_f64(),
        mb.as_secs_f64(),
        mo.as_secs_f64() / mb.as_secs_f64()
    );

    // The shared cache keeps nothing of this bench.
    let cache = std::env::var_os("BANGER_TEST_CACHE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/var/cache/banger-ci/test-cache".into());
    for d in blobs["blobs"].as_array().unwrap() {
        let name = d.as_str().unwrap().replace(':', "-");
        let _ = std::fs::remove_file(cache.join("banger/images/oci-blobs").join(name));
    }
    let _ = registry.kill();
    let _ = registry.wait();
}
