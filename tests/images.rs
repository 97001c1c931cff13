//! Kernels and images through banger: builds (coalesced, cached, atomic),
//! bundles, bad input.

use std::process::{Child, Stdio};
use std::time::Duration;

use crate::support::*;

fn spawn_banger(env: &TestEnv, args: &[&str]) -> Child {
    env.banger_cmd(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn image_json(env: &TestEnv, name: &str) -> serde_json::Value {
    serde_json::from_str(&env.banger_ok(&["image", "show", name, "--json"])).unwrap()
}

#[test]
fn three_concurrent_builds_make_one_build_and_three_successes() {
    let _heavy = heavy();
    artifacts();
    let env = TestEnv::host_network();
    env.banger_ok(&["kernel", "pull", "debian-cloud"]);
    let children: Vec<Child> = (0..3)
        .map(|_| spawn_banger(&env, &["image", "build", "debian-bookworm", "--rebuild"]))
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "build failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            env.daemon_log()
        );
    }
    let builds = env
        .daemon_log()
        .matches("building rootfs with mmdebstrap")
        .count();
    assert_eq!(builds, 1, "daemon log:\n{}", env.daemon_log());
    assert_eq!(
        env.helper_log().matches("running mmdebstrap").count(),
        1,
        "{}",
        env.helper_log()
    );
    let list: serde_json::Value =
        serde_json::from_str(&env.banger_ok(&["image", "list", "--json"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["name"], "debian-bookworm");
    assert_eq!(list[0]["default"], true);
}

#[test]
fn killing_the_daemon_mid_build_leaves_nothing_and_the_next_build_succeeds() {
    let _heavy = heavy();
    artifacts();
    let env = TestEnv::host_network();
    env.banger_ok(&["kernel", "pull", "debian-cloud"]);
    let mut cli = spawn_banger(&env, &["image", "build", "debian-bookworm", "--rebuild"]);
    wait_for("mmdebstrap to start", Duration::from_secs(60), || {
        env.helper_log()
            .contains("running mmdebstrap")
            .then_some(())
    });
    let helper = env.pid_of("bangerd-root").expect("helper runs");
    // The helper's private work area, keyed by its runtime directory.
    let key = banger::digest::sha256_hex(env.runtime_dir().display().to_string().as_bytes());
    let work_root = std::path::Path::new(banger::image::build::WORK_ROOT).join(&key[..12]);
    assert!(
        std::fs::read_dir(&work_root)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false),
        "a build directory exists in {}",
        work_root.display()
    );
    let daemon = env.pid_of("bangerd").expect("daemon runs");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let out = cli.wait().unwrap();
    assert!(!out.success(), "the CLI reports the lost daemon");
    // The helper notices, kills mmdebstrap and removes its work.
    wait_for(
        "the helper to drop the build",
        Duration::from_secs(60),
        || {
            let empty = std::fs::read_dir(&work_root)
                .map(|mut d| d.next().is_none())
                .unwrap_or(true);
            empty.then_some(())
        },
    );
    assert!(
        banger::host::process::pid_alive(helper),
        "the helper itself survives"
    );
    assert!(
        !env.helper_log().contains("not removing a build directory"),
        "{}",
        env.helper_log()
    );
    // Nothing was recorded, nothing half-written is visible.
    let list = env.banger_ok(&["image", "list", "--json"]);
    assert_eq!(list.trim(), "[]");
    let images = env.state_dir().join("images");
    let leftovers: Vec<_> = std::fs::read_dir(&images)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // Now the helper itself is SIGKILLed mid-build: mmdebstrap dies with it
    // (PDEATHSIG), and the next helper kills whatever the build left in its
    // chroot before it removes the work.
    let runs = |log: &str| log.matches("running mmdebstrap").count();
    let before = runs(&env.helper_log());
    let mut cli = spawn_banger(&env, &["image", "build", "debian-bookworm", "--rebuild"]);
    wait_for("mmdebstrap to start again", Duration::from_secs(60), || {
        (runs(&env.helper_log()) > before).then_some(())
    });
    let helper = env.pid_of("bangerd-root").expect("helper runs");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(helper as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(!cli.wait().unwrap().success());
    let mmdebstrap_left = || {
        std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd);
            cmd.contains("mmdebstrap") && cmd.contains(&work_root.display().to_string())
        })
    };
    wait_for(
        "mmdebstrap to die with the helper",
        Duration::from_secs(10),
        || (!mmdebstrap_left()).then_some(()),
    );
    // The next build starts clean and succeeds.
    env.banger_ok(&["image", "build", "debian-bookworm", "--rebuild"]);
    let in_work = std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        ["root", "cwd"]
            .iter()
            .any(|l| std::fs::read_link(e.path().join(l)).is_ok_and(|p| p.starts_with(&work_root)))
    });
    assert!(
        !in_work,
        "a process of the killed build still runs in {}",
        work_root.display()
    );
    let img = image_json(&env, "debian-bookworm");
    assert!(img["source"].as_str().unwrap().starts_with("built:"));
    let cache = shared_cache().join("banger/images");
    let stale: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp-"))
        .collect();
    assert!(stale.is_empty(), "{stale:?}");
}

#[test]
fn export_delete_import_round_trips_and_corrupt_bundles_are_refused() {
    let _heavy = heavy();
    artifacts();
    let env = TestEnv::new();
    env.banger_ok(&["kernel", "pull", "debian-cloud"]);
    env.banger_ok(&["image", "build", "debian-bookworm"]);
    let before = image_json(&env, "debian-bookworm");
    let dir = std::path::PathBuf::from(before["dir"].as_str().unwrap());
    let orig_rootfs = banger::digest::sha256_file(&dir.join("rootfs.ext4")).unwrap();
    let orig_seed = banger::digest::sha256_file(&dir.join("work-seed.ext4")).unwrap();
    assert_eq!(orig_rootfs, before["rootfs_sha256"].as_str().unwrap());

    let bundle = env.root().join("img.tar.zst");
    let out = env.banger_ok(&[
        "image",
        "export",
        "debian-bookworm",
        "-o",
        bundle.to_str().unwrap(),
    ]);
    assert!(out.starts_with("wrote "), "{out}");
    env.banger_ok(&["image", "delete", "debian-bookworm"]);
    assert!(!dir.exists());
    assert_eq!(env.banger_ok(&["image", "list", "--json"]).trim(), "[]");
    env.banger_ok(&["image", "import", bundle.to_str().unwrap()]);
    let after = image_json(&env, "debian-bookworm");
    let dir2 = std::path::PathBuf::from(after["dir"].as_str().unwrap());
    assert_eq!(
        banger::digest::sha256_file(&dir2.join("rootfs.ext4")).unwrap(),
        orig_rootfs
    );
    assert_eq!(
        banger::digest::sha256_file(&dir2.join("work-seed.ext4")).unwrap(),
        orig_seed
    );
    assert!(after["source"].as_str().unwrap().starts_with("imported:"));

    // One flipped byte: refused, nothing registered, nothing left behind.
    let mut bytes = std::fs::read(&bundle).unwrap();
    let at = bytes.len() / 3;
    bytes[at] ^= 0x40;
    let bad = env.root().join("bad.tar.zst");
    std::fs::write(&bad, &bytes).unwrap();
    let out = env.banger(&[
        "image",
        "import",
        bad.to_str().unwrap(),
        "--name",
        "flipped",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.tar.zst")
            && (err.contains("corrupt") || err.contains("not an image bundle")),
        "{err}"
    );
    let names: Vec<String> =
        serde_json::from_str::<serde_json::Value>(&env.banger_ok(&["image", "list", "--json"]))
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap().to_string())
            .collect();
    assert_eq!(names, ["debian-bookworm"]);
    let leftovers: Vec<_> = std::fs::read_dir(env.state_dir().join("images"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A non-bundle file.
    let txt = env.root().join("notes.txt");
    std::fs::write(&txt, "not a bundle").unwrap();
    let out = env.banger(&["image", "import", txt.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("notes.txt is not an image bundle"), "{err}");
    // Importing under a taken name is refused.
    let out = env.banger(&["image", "import", bundle.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    // The kernel is in use by the image.
    let out = env.banger(&["kernel", "delete", "debian-cloud"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("used by image(s) debian-bookworm"));
}

#[test]
fn bad_input_gets_errors_that_name_the_problem() {
    let env = TestEnv::new();
    let check = |args: &[&str], want: &str| {
        let out = env.banger(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    };
    check(&["image", "show", "nope"], "no image named \"nope\"");
    check(
        &["image", "build", "arch-linux"],
        "no recipe named \"arch-linux\"",
    );
    check(&["kernel", "show", "nope"], "no kernel named \"nope\"");
    check(
        &["kernel", "pull", "gentoo"],
        "unknown kernel source \"gentoo\"",
    );
    check(
        &["kernel", "pull", "debian-cloud", "--version", "latest"],
        "not an ABI version",
    );
    let empty = env.root().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    check(
        &["kernel", "import", "k1", "--from", empty.to_str().unwrap()],
        "no kernel in",
    );
    check(
        &["kernel", "import", "k1", "--from", "/nonexistent/dir"],
        "is not a directory",
    );
    check(
        &["image", "import", "/nonexistent.tar.zst"],
        "does not exist",
    );
    check(&["image", "promote", "nope"], "no image named");
    assert_eq!(env.banger_ok(&["kernel", "list", "--json"]).trim(), "[]");
}

#[test]
fn a_kernel_imports_from_a_directory_with_a_bzimage() {
    let env = TestEnv::new();
    let a = artifacts();
    // An import directory shaped like a Debian package tree, but holding our
    // already-extracted ELF vmlinux (an ELF is accepted as is).
    let src = env.root().join("kdir");
    std::fs::create_dir_all(src.join("boot")).unwrap();
    std::fs::copy(&a.vmlinux, src.join("boot/vmlinux-6.1.0-test")).unwrap();
    std::fs::copy(&a.initrd, src.join("boot/initrd.img-6.1.0-test")).unwrap();
    let out = env.banger_ok(&["kernel", "import", "mine", "--from", src.to_str().unwrap()]);
    assert!(out.contains("6.1.0-test"), "{out}");
    let k: serde_json::Value =
        serde_json::from_str(&env.banger_ok(&["kernel", "show", "mine", "--json"])).unwrap();
    assert_eq!(k["has_initrd"], true);
    assert_eq!(
        k["vmlinux_sha256"].as_str().unwrap(),
        banger::digest::sha256_file(&a.vmlinux).unwrap()
    );
    env.banger_ok(&["kernel", "delete", "mine"]);
    assert_eq!(env.banger_ok(&["kernel", "list", "--json"]).trim(), "[]");
}
