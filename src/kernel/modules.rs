//! Kernel modules: finding `<name>.ko` in a modules tree, reading its
//! dependencies from the `.modinfo` strings, and ordering a set for loading.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

/// Modules the guest needs before the root filesystem is mounted, in the
/// order HOST-NOTES lists them (dependencies are added and ordered anyway).
pub const BOOT_MODULES: &[&str] = &[
    "virtio",
    "virtio_ring",
    "virtio_mmio",
    "virtio_blk",
    "failover",
    "net_failover",
    "virtio_net",
    "vsock",
    "vmw_vsock_virtio_transport_common",
    "vmw_vsock_virtio_transport",
    "virtio_console",
];

fn canon(name: &str) -> String {
    name.replace('-', "_")
}

/// Indexes every module file under `dir` by canonical name.
pub fn index(dir: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(fname) = p.file_name().and_then(|f| f.to_str()) {
                for ext in [".ko", ".ko.xz", ".ko.zst", ".ko.gz"] {
                    if let Some(stem) = fname.strip_suffix(ext) {
                        out.insert(canon(stem), p.clone());
                    }
                }
            }
        }
    }
    out
}

/// The largest module read or decompressed (the biggest Debian modules
/// are a few tens of MiB): a bomb stops here.
pub const MAX_MODULE: u64 = 128 << 20;

/// Reads a module's bytes, decompressing `.ko.xz` / `.ko.zst` / `.ko.gz`,
/// at most [`MAX_MODULE`] read and made.
pub fn read_module(path: &Path) -> std::io::Result<Vec<u8>> {
    let raw = crate::fsutil::read_capped(path, MAX_MODULE)?;
    let name = path.to_string_lossy();
    let io = |e: String| std::io::Error::other(format!("{}: {e}", path.display()));
    if name.ends_with(".xz") {
        let mut v = crate::fsutil::CappedVec {
            data: Vec::new(),
            max: MAX_MODULE as usize,
        };
        lzma_rs::xz_decompress(&mut &raw[..], &mut v).map_err(|e| io(format!("{e:?}")))?;
        Ok(v.data)
    } else if name.ends_with(".zst") {
        let d = zstd::stream::read::Decoder::new(&raw[..]).map_err(|e| io(e.to_string()))?;
        crate::fsutil::read_all_capped(d, MAX_MODULE).map_err(|e| io(e.to_string()))
    } else if name.ends_with(".gz") {
        crate::fsutil::read_all_capped(flate2::read::GzDecoder::new(&raw[..]), MAX_MODULE)
            .map_err(|e| io(e.to_string()))
    } else {
        Ok(raw)
    }
}

/// The `depends=` list of a module's `.modinfo`.
pub fn depends(module: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(pos) = module.windows(KEY.len()).position(|w| w == KEY) else {
        return Vec::new();
    };
    let rest = &module[pos + KEY.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|s| !s.is_empty())
        .map(canon)
        .collect()
}

/// A module to load: name and (decompressed) bytes.
#[derive(Debug)]
pub struct Module {
    pub name: String,
    pub data: Vec<u8>,
}

/// Resolves `wanted` (and their dependencies) to modules in load order.
/// Names missing from the tree are assumed built in and skipped; the second
/// element lists them.
pub fn resolve(dir: &Path, wanted: &[&str]) -> std::io::Result<(Vec<Module>, Vec<String>)> {
    let idx = index(dir);
    let mut order = Vec::new();
    let mut done = HashSet::new();
    let mut builtin = Vec::new();
    fn visit(
        name: &str,
        idx: &BTreeMap<String, PathBuf>,
        done: &mut HashSet<String>,
        order: &mut Vec<Module>,
        builtin: &mut Vec<String>,
        depth: usize,
    ) -> std::io::Result<()> {
        let name = canon(name);
        if done.contains(&name) || depth > 32 {
            return Ok(());
        }
        done.insert(name.clone());
        let Some(path) = idx.get(&name) else {
            builtin.push(name);
            return Ok(());
        };
        let data = read_module(path)?;
        for d in depends(&data) {
            visit(&d, idx, done, order, builtin, depth + 1)?;
        }
        order.push(Module { name, data });
        Ok(())
    }
    for w in wanted {
        visit(w, &idx, &mut done, &mut order, &mut builtin, 0)?;
    }
    Ok((order, builtin))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_ko(deps: &str) -> Vec<u8> {
        let mut v = b"\x7fELF....".to_vec();
        v.extend_from_slice(b"\0license=GPL\0depends=");
        v.extend_from_slice(deps.as_bytes());
        v.extend_from_slice(b"\0intree=Y\0");
        v
    }

    #[test]
    fn dependencies_load_first() {
        let d = tempfile::tempdir().unwrap();
        let k = d.path().join("kernel/drivers");
        std::fs::create_dir_all(&k).unwrap();
        std::fs::write(k.join("virtio_net.ko"), fake_ko("net_failover,virtio_ring")).unwrap();
        std::fs::write(k.join("net_failover.ko"), fake_ko("failover")).unwrap();
        std::fs::write(k.join("failover.ko"), fake_ko("")).unwrap();
        std::fs::write(k.join("virtio_ring.ko"), fake_ko("")).unwrap();
        let zst = zstd::encode_all(&fake_ko("")[..], 3).unwrap();
        std::fs::write(k.join("vsock.ko.zst"), zst).unwrap();
        let (mods, builtin) = resolve(d.path(), &["virtio", "virtio_net", "vsock"]).unwrap();
        let names: Vec<&str> = mods.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "failover",
                "net_failover",
                "virtio_ring",
                "virtio_net",
                "vsock"
            ]
        );
        assert_eq!(builtin, ["virtio"]);
        assert!(
            mods[4].data.starts_with(b"\x7fELF"),
            "compressed module was decompressed"
        );
    }
}
