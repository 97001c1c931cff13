//! The release key and what it signs: an ECDSA P-256 signature (SHA-256,
//! DER, base64 — what `openssl dgst -sha256 -sign` and cosign write) over
//! `SHA256SUMS`, whose lines then vouch for each file.
//!
//! The public key is built in. A build with the `test-hooks` feature (the
//! test suite's, never a release) trusts the test key in
//! `tests/fixtures/release/` instead; nothing at run time can change it.

use base64::Engine;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;

#[cfg(not(feature = "test-hooks"))]
const RELEASE_KEY_PEM: &str = include_str!("../../release/banger-release.pub.pem");
#[cfg(feature = "test-hooks")]
const RELEASE_KEY_PEM: &str = include_str!("../../tests/fixtures/release/test-key.pub.pem");

/// The key releases are signed with.
pub fn release_key() -> VerifyingKey {
    VerifyingKey::from_public_key_pem(RELEASE_KEY_PEM).expect("the built-in release key parses")
}

/// `SHA256SUMS`, verified: file name → sha256 (lowercase hex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sums(Vec<(String, String)>);

impl Sums {
    /// The signed sha256 of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, h)| h.as_str())
    }

    /// Every file the sums name.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(n, _)| n.as_str())
    }
}

/// Checks `sig_b64` over `sums` with `key`, then parses the sums.
pub fn verify_sums(sums: &[u8], sig_b64: &[u8], key: &VerifyingKey) -> Result<Sums, String> {
    let text: Vec<u8> = sig_b64
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(&text)
        .map_err(|_| "SHA256SUMS.sig is not base64; the release is damaged".to_string())?;
    let sig = Signature::from_der(&der).map_err(|_| {
        "SHA256SUMS.sig is not an ECDSA signature; the release is damaged".to_string()
    })?;
    key.verify(sums, &sig).map_err(|_| {
        "SHA256SUMS is not signed by banger's release key (a tampered or foreign release); nothing was installed".to_string()
    })?;
    parse_sums(sums)
}

/// `<64 hex>  <name>` lines (`sha256sum`'s output; `*` for binary mode
/// allowed). A name is one plain file name.
pub fn parse_sums(sums: &[u8]) -> Result<Sums, String> {
    let text = std::str::from_utf8(sums).map_err(|_| "SHA256SUMS is not UTF-8".to_string())?;
    let mut out: Vec<(String, String)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = || format!("SHA256SUMS line {} is not '<sha256>  <file>'", i + 1);
        let (hex, name) = line.split_once(' ').ok_or_else(bad)?;
        let name = name.trim_start_matches(' ').trim_start_matches('*');
        let hex_ok = hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit());
        if !hex_ok || !plain_file_name(name) {
            return Err(bad());
        }
        if out.iter().any(|(n, _)| n == name) {
            return Err(format!("SHA256SUMS names {name} twice"));
        }
        out.push((name.to_string(), hex.to_ascii_lowercase()));
    }
    if out.is_empty() {
        return Err("SHA256SUMS names no file".into());
    }
    Ok(Sums(out))
}

/// A file name with no directory part: printable ASCII, no `/`, not `.`/`..`.
pub fn plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b'/')
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Signer;
    use p256::ecdsa::SigningKey;
    use p256::pkcs8::DecodePrivateKey;

    fn key(pem: &str) -> SigningKey {
        // openssl writes SEC1 ("EC PRIVATE KEY"); convert via the secret scalar.
        use p256::elliptic_curve::SecretKey;
        SecretKey::<p256::NistP256>::from_sec1_pem(pem)
            .map(SigningKey::from)
            .or_else(|_| SigningKey::from_pkcs8_pem(pem))
            .expect("a P-256 key")
    }

    fn sign(k: &SigningKey, data: &[u8]) -> Vec<u8> {
        let sig: Signature = k.sign(data);
        base64::engine::general_purpose::STANDARD
            .encode(sig.to_der().as_bytes())
            .into_bytes()
    }

    const SUMS: &[u8] = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef  banger-v1.0.0-x86_64-linux.tar.zst\n";

    #[test]
    fn the_test_key_is_built_in_and_verifies_what_its_private_half_signs() {
        let k = key(include_str!("../../tests/fixtures/release/test-key.pem"));
        let sums = verify_sums(SUMS, &sign(&k, SUMS), &release_key()).unwrap();
        assert_eq!(
            sums.get("banger-v1.0.0-x86_64-linux.tar.zst"),
            Some("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
        );
    }

    #[test]
    fn the_shipped_release_key_parses_and_is_not_the_test_key() {
        let shipped =
            VerifyingKey::from_public_key_pem(include_str!("../../release/banger-release.pub.pem"))
                .unwrap();
        assert_ne!(shipped, release_key(), "this build trusts the test key");
        let pem = include_str!("../../release/banger-release.pub.pem");
        assert!(
            include_str!("../../scripts/install.sh").contains(pem.trim()),
            "scripts/install.sh embeds the same release key"
        );
    }

    #[test]
    fn a_foreign_key_a_changed_file_and_junk_are_refused() {
        let test = key(include_str!("../../tests/fixtures/release/test-key.pem"));
        let other = key(include_str!("../../tests/fixtures/release/other-key.pem"));
        let e = verify_sums(SUMS, &sign(&other, SUMS), &release_key()).unwrap_err();
        assert!(e.contains("not signed by banger's release key"), "{e}");
        let mut changed = SUMS.to_vec();
        changed[0] = b'f';
        let e = verify_sums(&changed, &sign(&test, SUMS), &release_key()).unwrap_err();
        assert!(e.contains("not signed"), "{e}");
        let e = verify_sums(SUMS, b"!!!", &release_key()).unwrap_err();
        assert!(e.contains("not base64"), "{e}");
        let e = verify_sums(SUMS, b"AAAA", &release_key()).unwrap_err();
        assert!(e.contains("not an ECDSA signature"), "{e}");
    }

    #[test]
    fn sums_name_plain_files_once() {
        let h = "a".repeat(64);
        assert!(parse_sums(format!("{h}  ../x\n").as_bytes()).is_err());
        assert!(parse_sums(format!("{h}  a/b\n").as_bytes()).is_err());
        assert!(parse_sums(format!("{h}  x\n{h}  x\n").as_bytes()).is_err());
        assert!(parse_sums(format!("{}  x\n", "g".repeat(64)).as_bytes()).is_err());
        assert!(parse_sums(b"\n").is_err());
        let s = parse_sums(format!("{h} *x\n").as_bytes()).unwrap();
        assert_eq!(s.names().collect::<Vec<_>>(), ["x"]);
    }
}
