//! Extracting the ELF `vmlinux` from an x86 bzImage (`vmlinuz`).
//!
//! The boot protocol header gives the compressed payload's offset and length
//! (`payload_offset` at 0x248, `payload_length` at 0x24c, relative to the
//! protected-mode code after `setup_sects`). The payload's magic tells the
//! compression: LZ4 legacy frames, gzip, xz or zstd.

/// Why a vmlinux could not be extracted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BzImageError {
    #[error("not a bzImage: {0}")]
    NotBzImage(String),
    #[error("unsupported kernel payload compression (magic {0}); supported: LZ4, gzip, xz, zstd")]
    Unsupported(String),
    #[error("decompressing the {0} payload failed: {1}")]
    Decompress(&'static str, String),
    #[error("the decompressed payload is not an ELF file")]
    NotElf,
}

/// The payload compression, by magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Lz4Legacy,
    Gzip,
    Xz,
    Zstd,
}

impl Compression {
    pub fn detect(data: &[u8]) -> Option<Compression> {
        if data.starts_with(&[0x02, 0x21, 0x4c, 0x18]) {
            Some(Compression::Lz4Legacy)
        } else if data.starts_with(&[0x1f, 0x8b]) {
            Some(Compression::Gzip)
        } else if data.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            Some(Compression::Xz)
        } else if data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Some(Compression::Zstd)
        } else {
            None
        }
    }

    fn name(self) -> &'static str {
        match self {
            Compression::Lz4Legacy => "LZ4",
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
        }
    }
}

/// Whether `data` is an ELF file.
pub fn is_elf(data: &[u8]) -> bool {
    data.starts_with(b"\x7fELF")
}

/// Returns the compressed payload slice of a bzImage.
pub fn payload(image: &[u8]) -> Result<&[u8], BzImageError> {
    if image.len() < 0x250 || &image[0x202..0x206] != b"HdrS" {
        return Err(BzImageError::NotBzImage("no HdrS boot header".into()));
    }
    let setup_sects = match image[0x1f1] {
        0 => 4,
        n => n as usize,
    };
    let u32_at = |o: usize| u32::from_le_bytes(image[o..o + 4].try_into().unwrap()) as usize;
    let start = (setup_sects + 1) * 512 + u32_at(0x248);
    let len = u32_at(0x24c);
    image.get(start..start + len).ok_or_else(|| {
        BzImageError::NotBzImage(format!(
            "payload {start}+{len} beyond the file ({} bytes)",
            image.len()
        ))
    })
}

/// The largest vmlinux a payload may decompress to (distribution kernels
/// are 30-70 MiB): a bomb stops here.
pub const MAX_VMLINUX: usize = 512 << 20;

/// Decompresses a kernel payload.
pub fn decompress(payload: &[u8]) -> Result<(Compression, Vec<u8>), BzImageError> {
    let c = Compression::detect(payload).ok_or_else(|| {
        BzImageError::Unsupported(payload.iter().take(6).map(|b| format!("{b:02x}")).collect())
    })?;
    let err = |e: String| BzImageError::Decompress(c.name(), e);
    let out = match c {
        Compression::Lz4Legacy => lz4_legacy(payload).map_err(err)?,
        Compression::Gzip => crate::fsutil::read_all_capped(
            flate2::read::GzDecoder::new(payload),
            MAX_VMLINUX as u64,
        )
        .map_err(|e| err(e.to_string()))?,
        Compression::Xz => {
            let mut v = crate::fsutil::CappedVec {
                data: Vec::new(),
                max: MAX_VMLINUX,
            };
            // The kernel appends the uncompressed size after the stream.
            let stream = &payload[..payload.len().saturating_sub(4)];
            let mut input = std::io::BufReader::new(stream);
            lzma_rs::xz_decompress(&mut input, &mut v).map_err(|e| err(format!("{e:?}")))?;
            v.data
        }
        Compression::Zstd => {
            // One frame only: the kernel appends the size after it.
            let d = zstd::stream::read::Decoder::new(payload)
                .map(|d| d.single_frame())
                .map_err(|e| err(e.to_string()))?;
            crate::fsutil::read_all_capped(d, MAX_VMLINUX as u64).map_err(|e| err(e.to_string()))?
        }
    };
    Ok((c, out))
}

/// LZ4 "legacy" frames as the kernel writes them: magic, then blocks of
/// `u32 le size` + LZ4 block (each at most 8 MiB decompressed); a repeated
/// magic starts a new frame; the kernel appends the total size as 4 bytes.
fn lz4_legacy(data: &[u8]) -> Result<Vec<u8>, String> {
    const MAGIC: u32 = 0x184c_2102;
    const BLOCK: usize = 8 << 20;
    let mut out = Vec::new();
    let mut pos = 4;
    while pos + 4 <= data.len() {
        let size = u32::from_le_bytes(data[pos..pos + 4].try_into().unwrap());
        pos += 4;
        if size == MAGIC {
            continue;
        }
        let size = size as usize;
        if pos + size > data.len() {
            // The trailing uncompressed-size word: done.
            break;
        }
        let block = lz4_flex::block::decompress(&data[pos..pos + size], BLOCK)
            .map_err(|e| e.to_string())?;
        if out.len() + block.len() > MAX_VMLINUX {
            return Err(format!("decompresses to more than {MAX_VMLINUX} bytes"));
        }
        out.extend_from_slice(&block);
        pos += size;
    }
    if out.is_empty() {
        return Err("no LZ4 blocks".into());
    }
    Ok(out)
}

/// Extracts the ELF vmlinux from a bzImage; an ELF input is returned as is.
pub fn extract_vmlinux(image: &[u8]) -> Result<Vec<u8>, BzImageError> {
    if is_elf(image) {
        return Ok(image.to_vec());
    }
    let (_, out) = decompress(payload(image)?)?;
    if !is_elf(&out) {
        return Err(BzImageError::NotElf);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn fake_elf() -> Vec<u8> {
        let mut v = b"\x7fELF".to_vec();
        v.extend((0..100_000u32).map(|i| (i % 251) as u8));
        v
    }

    fn bzimage(payload: &[u8]) -> Vec<u8> {
        let setup_sects = 3usize;
        let mut img = vec![0u8; (setup_sects + 1) * 512 + 64];
        img[0x1f1] = setup_sects as u8;
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x248..0x24c].copy_from_slice(&64u32.to_le_bytes());
        img[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        img.extend_from_slice(payload);
        img
    }

    #[test]
    fn every_supported_compression_round_trips() {
        let elf = fake_elf();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&elf).unwrap();
        let gz = gz.finish().unwrap();
        let zs = zstd::encode_all(&elf[..], 3).unwrap();
        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut &elf[..], &mut xz).unwrap();
        let mut lz4 = 0x184c_2102u32.to_le_bytes().to_vec();
        for chunk in elf.chunks(40_000) {
            let b = lz4_flex::block::compress(chunk);
            lz4.extend_from_slice(&(b.len() as u32).to_le_bytes());
            lz4.extend_from_slice(&b);
        }
        lz4.extend_from_slice(&(elf.len() as u32).to_le_bytes());
        for (name, p) in [("gzip", gz), ("zstd", zs), ("xz", xz), ("lz4", lz4)] {
            let mut withsize = p.clone();
            if name != "lz4" {
                withsize.extend_from_slice(&(elf.len() as u32).to_le_bytes());
            }
            assert_eq!(extract_vmlinux(&bzimage(&withsize)).unwrap(), elf, "{name}");
        }
    }

    #[test]
    fn bad_inputs_are_named() {
        assert!(matches!(
            extract_vmlinux(b"hello"),
            Err(BzImageError::NotBzImage(_))
        ));
        assert!(matches!(
            extract_vmlinux(&bzimage(b"BZh91AY&SY....")),
            Err(BzImageError::Unsupported(_))
        ));
    }
}
