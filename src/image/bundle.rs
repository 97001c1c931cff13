//! Image bundles: `.tar.zst` holding `manifest.json` (first), `rootfs.ext4`
//! and `work-seed.ext4`. Import streams the archive, writes files sparsely,
//! hashes while writing and verifies every sha256 against the manifest.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::{ImageManifest, MANIFEST, ROOTFS, WORK_SEED};
use crate::fsutil::{IoContext, IoError};

/// Bundle failures, each naming what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{file} is not an image bundle (expected a .tar.zst with {MANIFEST}, {ROOTFS} and {WORK_SEED}): {why}")]
    NotBundle { file: String, why: String },
    #[error("{file} is corrupt: {why}")]
    Corrupt { file: String, why: String },
    #[error(transparent)]
    Io(#[from] IoError),
}

/// Writes a bundle of the image in `dir` to `out` (manifest first).
pub fn export(dir: &Path, manifest: &ImageManifest, out: &Path) -> Result<u64, BundleError> {
    Ok(write_bundle(dir, manifest, out).ctx("writing the bundle", out)?)
}

fn write_bundle(dir: &Path, manifest: &ImageManifest, out: &Path) -> std::io::Result<u64> {
    let f = std::fs::File::create(out)?;
    let mut enc = zstd::stream::write::Encoder::new(f, 3)?;
    enc.include_checksum(true)?;
    enc.multithread(2).ok();
    {
        let mut t = tar::Builder::new(&mut enc);
        let json = serde_json::to_vec_pretty(manifest)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(json.len() as u64);
        h.set_mtime(0);
        t.append_data(&mut h, MANIFEST, &json[..])?;
        for name in [ROOTFS, WORK_SEED] {
            let mut file = std::fs::File::open(dir.join(name))?;
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_size(file.metadata()?.len());
            h.set_mtime(0);
            t.append_data(&mut h, name, &mut file)?;
        }
        t.finish()?;
    }
    let f = enc.finish()?;
    f.sync_all()?;
    Ok(f.metadata()?.len())
}

/// Copies `r` into a new file at `dst`, skipping zero blocks (sparse), and
/// returns the sha256 and length.
fn write_sparse(mut r: impl Read, dst: &Path) -> std::io::Result<(String, u64)> {
    let mut out = std::fs::File::create(dst)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let n = r.read(&mut buf[filled..])?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        let chunk = &buf[..filled];
        h.update(chunk);
        if chunk.iter().all(|&b| b == 0) {
            out.seek(SeekFrom::Current(filled as i64))?;
        } else {
            out.write_all(chunk)?;
        }
        len += filled as u64;
    }
    out.set_len(len)?;
    out.sync_all()?;
    Ok((
        h.finalize().iter().map(|b| format!("{b:02x}")).collect(),
        len,
    ))
}

/// Unpacks and verifies a bundle into `stage`. Returns its manifest.
pub fn import(file: &Path, stage: &Path) -> Result<ImageManifest, BundleError> {
    let fname = file.display().to_string();
    let not_bundle = |why: String| BundleError::NotBundle {
        file: fname.clone(),
        why,
    };
    let corrupt = |why: String| BundleError::Corrupt {
        file: fname.clone(),
        why,
    };
    let f = std::fs::File::open(file).ctx("opening", file)?;
    let mut magic = [0u8; 4];
    (&f).read_exact(&mut magic)
        .map_err(|_| not_bundle("too short".into()))?;
    if magic != [0x28, 0xb5, 0x2f, 0xfd] {
        return Err(not_bundle("not zstd-compressed".into()));
    }
    (&f).seek(SeekFrom::Start(0)).ctx("reading", file)?;
    let dec = zstd::stream::read::Decoder::new(f).ctx("decompressing", file)?;
    // The same guard as OCI layers: no long-name or PAX record of
    // gigabytes read into memory.
    let mut archive = tar::Archive::new(super::layers::TarGuard::new(dec));
    let mut manifest: Option<ImageManifest> = None;
    let mut seen = std::collections::HashMap::new();
    let entries = archive.entries().map_err(|e| not_bundle(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| corrupt(format!("reading the archive: {e}")))?;
        let path = entry
            .path()
            .map_err(|e| corrupt(e.to_string()))?
            .to_string_lossy()
            .into_owned();
        match path.as_str() {
            MANIFEST => {
                let s = crate::fsutil::read_all_capped(&mut entry, crate::kernel::MAX_MANIFEST)
                    .map_err(|e| corrupt(format!("{MANIFEST}: {e}")))?;
                manifest = Some(
                    serde_json::from_slice(&s)
                        .map_err(|e| not_bundle(format!("{MANIFEST}: {e}")))?,
                );
            }
            ROOTFS | WORK_SEED => {
                // The manifest comes first and says how big each file is:
                // nothing larger is written, nor more than the disk holds.
                let m = manifest
                    .as_ref()
                    .ok_or_else(|| not_bundle(format!("{path} before {MANIFEST}")))?;
                let want = if path == ROOTFS {
                    m.rootfs_bytes
                } else {
                    m.work_seed_bytes
                };
                let size = entry.size();
                if size != want {
                    return Err(corrupt(format!(
                        "{path} is {size} bytes, the manifest says {want}"
                    )));
                }
                let free = crate::fsutil::free_bytes(stage);
                if size > free {
                    return Err(BundleError::Corrupt {
                        file: fname.clone(),
                        why: format!(
                            "{path} needs {} MiB and {} has {} MiB free; free some space and retry",
                            size >> 20,
                            stage.display(),
                            free >> 20
                        ),
                    });
                }
                let (sum, len) = write_sparse(&mut entry, &stage.join(&path))
                    .map_err(|e| corrupt(format!("extracting {path}: {e}")))?;
                seen.insert(path, (sum, len));
            }
            other => return Err(not_bundle(format!("unexpected entry {other:?}"))),
        }
    }
    let m = manifest.ok_or_else(|| not_bundle(format!("no {MANIFEST}")))?;
    for (name, want_sum, want_len) in [
        (ROOTFS, &m.rootfs_sha256, m.rootfs_bytes),
        (WORK_SEED, &m.work_seed_sha256, m.work_seed_bytes),
    ] {
        let (sum, len) = seen
            .get(name)
            .ok_or_else(|| not_bundle(format!("no {name}")))?;
        if sum != want_sum || *len != want_len {
            return Err(corrupt(format!(
                "{name} has sha256 {sum} ({len} bytes), the manifest says {want_sum} ({want_len} bytes)"
            )));
        }
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::sha256_file;

    fn image(dir: &Path) -> ImageManifest {
        std::fs::write(
            dir.join(ROOTFS),
            [vec![7u8; 5000], vec![0u8; 3 << 20], vec![9u8; 10]].concat(),
        )
        .unwrap();
        std::fs::write(dir.join(WORK_SEED), b"seed").unwrap();
        ImageManifest {
            name: "img".into(),
            distro: "debian".into(),
            arch: "x86_64".into(),
            kernel_ref: "k".into(),
            rootfs_bytes: std::fs::metadata(dir.join(ROOTFS)).unwrap().len(),
            work_seed_bytes: 4,
            rootfs_sha256: sha256_file(&dir.join(ROOTFS)).unwrap(),
            work_seed_sha256: sha256_file(&dir.join(WORK_SEED)).unwrap(),
        }
    }

    #[test]
    fn round_trip_is_byte_identical() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let m = image(&src);
        let b = d.path().join("b.tar.zst");
        export(&src, &m, &b).unwrap();
        let dst = d.path().join("dst");
        std::fs::create_dir(&dst).unwrap();
        assert_eq!(import(&b, &dst).unwrap(), m);
        for f in [ROOTFS, WORK_SEED] {
            assert_eq!(
                std::fs::read(src.join(f)).unwrap(),
                std::fs::read(dst.join(f)).unwrap()
            );
        }
    }

    #[test]
    fn a_flipped_byte_and_a_non_bundle_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let m = image(&src);
        let b = d.path().join("b.tar.zst");
        export(&src, &m, &b).unwrap();
        let mut bytes = std::fs::read(&b).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x01;
        let bad = d.path().join("bad.tar.zst");
        std::fs::write(&bad, &bytes).unwrap();
        let dst = d.path().join("dst");
        std::fs::create_dir(&dst).unwrap();
        let e = import(&bad, &dst).unwrap_err();
        assert!(
            matches!(
                e,
                BundleError::Corrupt { .. } | BundleError::NotBundle { .. }
            ),
            "{e}"
        );
        let txt = d.path().join("notes.txt");
        std::fs::write(&txt, b"hello, not a bundle").unwrap();
        let e = import(&txt, &dst).unwrap_err();
        assert!(e.to_string().contains("is not an image bundle"), "{e}");
    }
}
