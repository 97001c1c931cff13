//! SHA-256 of files and trees.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

/// Hex SHA-256 of bytes.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// Lowercase hex of a digest.
pub fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// A digest over a directory tree: every regular file's relative path and
/// content digest, and every symlink's target, in sorted order.
pub fn tree_sha256(dir: &Path) -> std::io::Result<String> {
    let mut entries = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let p = e.path();
            let ft = e.file_type()?;
            let rel = p
                .strip_prefix(dir)
                .unwrap_or(&p)
                .to_string_lossy()
                .into_owned();
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_symlink() {
                entries.push(format!("L {rel} {}", std::fs::read_link(&p)?.display()));
            } else if ft.is_file() {
                entries.push(format!("F {rel} {}", sha256_file(&p)?));
            }
        }
    }
    entries.sort();
    Ok(sha256_hex(entries.join("\n").as_bytes()))
}

/// Incremental hashing of labelled inputs (cache keys).
#[derive(Default)]
pub struct KeyHasher(Sha256);

impl KeyHasher {
    pub fn add(&mut self, label: &str, value: &[u8]) -> &mut Self {
        self.0.update((label.len() as u64).to_le_bytes());
        self.0.update(label.as_bytes());
        self.0.update((value.len() as u64).to_le_bytes());
        self.0.update(value);
        self
    }
    pub fn finish(self) -> String {
        hex(&self.0.finalize())[..32].to_string()
    }
}
