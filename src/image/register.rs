//! `image register`: an ext4 root file system the owner already has, made
//! a banger image. The file is the owner's and may be hostile: it is
//! copied first, checked (`e2fsck`), and changed only with `debugfs` (no
//! mount, nothing run as root): the agent written where the initramfs
//! looks for it, and the mount points it needs made where missing.

use std::path::Path;

use super::layers::LayerError;

/// The directories a guest needs, made (with these modes) where missing.
const MOUNT_POINTS: [(&str, u32); 9] = [
    ("/proc", 0o555),
    ("/sys", 0o555),
    ("/dev", 0o755),
    ("/run", 0o755),
    ("/tmp", 0o1777),
    ("/root", 0o700),
    ("/usr", 0o755),
    ("/usr/local", 0o755),
    ("/usr/local/bin", 0o755),
];

/// Where an image may have its SSH server.
const SSHD: [&str; 2] = ["/usr/sbin/sshd", "/usr/bin/sshd"];

fn err(s: impl Into<String>) -> LayerError {
    LayerError(s.into())
}

/// Whether `file` starts like an ext2/3/4 file system (the superblock's
/// magic at byte 1080).
pub fn looks_like_ext4(file: &Path) -> std::io::Result<bool> {
    use std::io::{Read, Seek};
    let mut f = std::fs::File::open(file)?;
    let mut magic = [0u8; 2];
    f.seek(std::io::SeekFrom::Start(1080))?;
    Ok(f.read_exact(&mut magic).is_ok() && magic == [0x53, 0xEF])
}

/// debugfs with `args`, run in `cwd` (a script's `write` names its source
/// relative to it: no host path, with whatever spaces, in the script).
fn debugfs(cwd: &Path, args: &[&std::ffi::OsStr]) -> Result<(String, String), LayerError> {
    let tool = crate::host::system_tool("debugfs")
        .ok_or_else(|| err("debugfs is not installed; install e2fsprogs"))?;
    let out = crate::host::process::run_bounded(
        std::process::Command::new(tool)
            .args(args)
            .current_dir(cwd)
            .env("LC_ALL", "C"),
        super::TOOL_DEADLINE,
        4 << 20,
    )
    .map_err(|e| err(format!("debugfs: {e}")))?;
    Ok((
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// The kind (`regular`, `directory`, `symlink`, ...) of each of `paths` in
/// `image`, `None` where missing: one read-only debugfs run.
fn kinds(image: &Path, paths: &[&str], scratch: &Path) -> Result<Vec<Option<String>>, LayerError> {
    let script = scratch.join("stat.debugfs");
    let text: String = paths.iter().map(|p| format!("stat {p}\n")).collect();
    std::fs::write(&script, text).map_err(|e| err(e.to_string()))?;
    let (out, _) = debugfs(
        scratch,
        &["-f".as_ref(), script.as_os_str(), image.as_os_str()],
    )?;
    let mut kinds = vec![None; paths.len()];
    let mut at = None;
    for line in out.lines() {
        if let Some(p) = line.strip_prefix("debugfs: stat ") {
            at = paths.iter().position(|q| *q == p.trim());
        } else if let (Some(i), Some(rest)) = (at, line.split("Type: ").nth(1)) {
            kinds[i] = rest.split_whitespace().next().map(str::to_string);
            at = None;
        }
    }
    Ok(kinds)
}

/// Checks the copied root file system `image` and adds what banger needs
/// (`agent`'s bytes at [`crate::kernel::initramfs::AGENT_PATH`]). Returns
/// whether it has an SSH server.
pub fn adopt(image: &Path, agent: &[u8], scratch: &Path) -> Result<bool, LayerError> {
    if !looks_like_ext4(image).map_err(|e| err(e.to_string()))? {
        return Err(err(
            "it is not an ext2/3/4 file system image (no superblock magic at byte 1080)",
        ));
    }
    let fsck = crate::host::system_tool("e2fsck")
        .ok_or_else(|| err("e2fsck is not installed; install e2fsprogs"))?;
    let checked = crate::host::process::run_bounded(
        std::process::Command::new(fsck)
            .args(["-f", "-p"])
            .arg(image)
            .env("LC_ALL", "C"),
        super::TOOL_DEADLINE,
        1 << 20,
    )
    .map_err(|e| err(format!("e2fsck: {e}")))?;
    if checked.status.code().is_none_or(|c| c >= 4) {
        return Err(err(format!(
            "it has errors e2fsck could not fix on its own ({}); run e2fsck -f on it first",
            String::from_utf8_lossy(&checked.stdout)
                .lines()
                .last()
                .unwrap_or("")
                .trim()
        )));
    }
    let mut paths: Vec<&str> = MOUNT_POINTS.iter().map(|(p, _)| *p).collect();
    paths.extend(SSHD);
    paths.push(crate::kernel::initramfs::AGENT_PATH);
    let before = kinds(image, &paths, scratch)?;
    let has_sshd = SSHD.iter().any(|s| {
        let i = paths.iter().position(|p| p == s).expect("listed");
        before[i].as_deref() == Some("regular")
    });
    let mut script = String::new();
    for ((p, mode), kind) in MOUNT_POINTS.iter().zip(&before) {
        match kind.as_deref() {
            None => script += &format!("mkdir {p}\nsif {p} mode 0{:o}\n", 0o40000 | mode),
            Some("directory") => {}
            // A link (or a file) there would take banger's files elsewhere.
            Some(k) => {
                return Err(err(format!(
                    "{p} is a {k}, not a directory; banger needs it to be one"
                )))
            }
        }
    }
    let agent_path = crate::kernel::initramfs::AGENT_PATH;
    match before.last().and_then(|k| k.as_deref()) {
        None => {}
        Some("regular") => script += &format!("rm {agent_path}\n"),
        Some(k) => {
            return Err(err(format!(
                "{agent_path} is a {k}; banger puts its agent there"
            )))
        }
    }
    let (dir, name) = agent_path.rsplit_once('/').expect("an absolute path");
    std::fs::write(scratch.join(name), agent).map_err(|e| err(e.to_string()))?;
    script += &format!(
        "cd {dir}\nwrite {name} {name}\nsif {name} mode 0100755\nsif {name} uid 0\nsif {name} gid 0\n"
    );
    let file = scratch.join("adopt.debugfs");
    std::fs::write(&file, &script).map_err(|e| err(e.to_string()))?;
    let (_, errs) = debugfs(
        scratch,
        &[
            "-w".as_ref(),
            "-f".as_ref(),
            file.as_os_str(),
            image.as_os_str(),
        ],
    )?;
    // debugfs exits 0 even when a command fails; it says so on stderr.
    if let Some(l) = errs
        .lines()
        .find(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
    {
        return Err(err(format!("adding the agent: {l}")));
    }
    let after = kinds(image, &[agent_path], scratch)?;
    if after[0].as_deref() != Some("regular") {
        return Err(err("adding the agent: it is not there afterwards"));
    }
    Ok(has_sshd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image_of(tree: &Path, out: &Path) {
        let ok = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-d"])
            .arg(tree)
            .arg(out)
            .arg("32M")
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    #[test]
    fn a_root_file_system_gets_the_agent_and_its_mount_points_and_nothing_hostile_passes() {
        let d = tempfile::tempdir().unwrap();
        let tree = d.path().join("tree");
        std::fs::create_dir_all(tree.join("usr/sbin")).unwrap();
        std::fs::create_dir_all(tree.join("etc")).unwrap();
        std::fs::write(tree.join("usr/sbin/sshd"), b"x").unwrap();
        std::fs::write(tree.join("etc/os-release"), b"ID=mine\n").unwrap();
        let img = d.path().join("root.ext4");
        image_of(&tree, &img);
        assert!(adopt(&img, b"#!agent", d.path()).unwrap(), "it has sshd");
        let all: Vec<&str> = MOUNT_POINTS.iter().map(|(p, _)| *p).collect();
        let k = kinds(&img, &all, d.path()).unwrap();
        assert!(k.iter().all(|k| k.as_deref() == Some("directory")), "{k:?}");
        let (out, _) = debugfs(
            d.path(),
            &["-R".as_ref(), "ls -l /".as_ref(), img.as_os_str()],
        )
        .unwrap();
        let tmp = out.lines().find(|l| l.ends_with(" tmp")).unwrap();
        assert!(tmp.contains("41777"), "{tmp}");
        let (cat, _) = debugfs(
            d.path(),
            &[
                "-R".as_ref(),
                format!("cat {}", crate::kernel::initramfs::AGENT_PATH).as_ref(),
                img.as_os_str(),
            ],
        )
        .unwrap();
        assert_eq!(cat, "#!agent");
        // Again (the agent replaced), without sshd this time.
        let bare = d.path().join("bare");
        std::fs::create_dir_all(&bare).unwrap();
        let img2 = d.path().join("bare.ext4");
        image_of(&bare, &img2);
        assert!(!adopt(&img2, b"1", d.path()).unwrap());
        assert!(!adopt(&img2, b"2", d.path()).unwrap());

        // Not ext4; /usr/local/bin a link out of the tree.
        let junk = d.path().join("junk");
        std::fs::write(&junk, vec![0u8; 1 << 20]).unwrap();
        let e = adopt(&junk, b"a", d.path()).unwrap_err().0;
        assert!(e.contains("not an ext2/3/4"), "{e}");
        let evil = d.path().join("evil");
        std::fs::create_dir_all(evil.join("usr/local")).unwrap();
        std::os::unix::fs::symlink("/etc", evil.join("usr/local/bin")).unwrap();
        let img3 = d.path().join("evil.ext4");
        image_of(&evil, &img3);
        let e = adopt(&img3, b"a", d.path()).unwrap_err().0;
        assert!(e.contains("/usr/local/bin is a symlink"), "{e}");
    }
}
