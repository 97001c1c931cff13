//! Secrets kept outside the VM (`--secret NAME@HOST`): each policed VM
//! with secrets has its own CA (made by the daemon; the guest trusts its
//! certificate, never sees its key) and a placeholder per secret. The
//! values, the placeholders and the CA's key are kept by the daemon in its
//! state directory (`secrets/<vm id>.json`, 0600 in a 0700 directory, on
//! the host, outside every VMM's view), read back after a restart, and
//! removed with the VM. Nothing of them is logged.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::domain::egress::{SecretRef, SecretSpec, MAX_SECRETS};
use crate::ops::OpError;

#[derive(Clone, Serialize, Deserialize)]
struct Stored {
    /// The CA's own name: a guest that trusts several (a clone of a VM
    /// with secrets) tells them apart.
    ca_name: String,
    ca_key_pem: String,
    ca_cert_pem: String,
    secrets: Vec<StoredSecret>,
}

#[derive(Clone, Serialize, Deserialize)]
struct StoredSecret {
    name: String,
    host: String,
    placeholder: String,
    value: String,
}

/// A VM's secrets, made before its record is (nothing written yet).
pub struct Prepared(Stored);

impl Prepared {
    /// What the record keeps.
    pub fn refs(&self) -> Vec<SecretRef> {
        self.0
            .secrets
            .iter()
            .map(|s| SecretRef {
                name: s.name.clone(),
                host: s.host.clone(),
                placeholder: s.placeholder.clone(),
            })
            .collect()
    }
}

fn placeholder() -> String {
    use rand::RngExt;
    let r: [u8; 16] = rand::rng().random();
    let hex: String = r.iter().map(|b| format!("{b:02x}")).collect();
    format!("banger-placeholder-{hex}")
}

/// The CA's fixed parameters: its certificate and the issuer rebuilt from
/// its key must agree.
fn ca_params(name: &str) -> rcgen::CertificateParams {
    let mut p = rcgen::CertificateParams::default();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    p
}

/// Checks the specs and makes the VM's CA and placeholders.
pub fn prepare(specs: &[SecretSpec]) -> Result<Option<Prepared>, OpError> {
    if specs.is_empty() {
        return Ok(None);
    }
    if specs.len() > MAX_SECRETS {
        return Err(OpError::invalid(format!(
            "a VM has at most {MAX_SECRETS} secrets"
        )));
    }
    let mut secrets: Vec<StoredSecret> = Vec::new();
    for s in specs {
        let s = s.checked().map_err(OpError::invalid)?;
        if secrets.iter().any(|x| x.name == s.name) {
            return Err(OpError::invalid(format!(
                "secret {} is given twice; give each name once",
                s.name
            )));
        }
        secrets.push(StoredSecret {
            name: s.name,
            host: s.host,
            placeholder: placeholder(),
            value: s.value,
        });
    }
    let key = rcgen::KeyPair::generate()
        .map_err(|e| OpError::failed(format!("making the VM's CA key: {e}")))?;
    let ca_name = format!("banger egress CA {}", &placeholder()[19..35]);
    let cert = ca_params(&ca_name)
        .self_signed(&key)
        .map_err(|e| OpError::failed(format!("making the VM's CA: {e}")))?;
    Ok(Some(Prepared(Stored {
        ca_name,
        ca_key_pem: key.serialize_pem(),
        ca_cert_pem: cert.pem(),
        secrets,
    })))
}

/// A VM's secrets in use: swapping, and the certificates its proxy shows.
pub struct VmSecrets {
    pub ca_cert_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    secrets: Vec<StoredSecret>,
    leaves: Mutex<HashMap<String, Arc<rustls::ServerConfig>>>,
}

impl VmSecrets {
    fn from_stored(s: Stored) -> Result<VmSecrets, String> {
        let key = rcgen::KeyPair::from_pem(&s.ca_key_pem).map_err(|e| e.to_string())?;
        Ok(VmSecrets {
            ca_cert_pem: s.ca_cert_pem,
            issuer: rcgen::Issuer::new(ca_params(&s.ca_name), key),
            secrets: s.secrets,
            leaves: Mutex::default(),
        })
    }

    /// Whether a secret goes to `host`.
    pub fn for_host(&self, host: &str) -> bool {
        self.secrets.iter().any(|s| s.host == host)
    }

    /// `value` with the placeholders of `host`'s secrets swapped for
    /// their values; and the names of other hosts' placeholders found in it
    /// (left as they are).
    pub fn swap(&self, host: &str, value: &str) -> (String, Vec<String>) {
        let mut out = value.to_string();
        let mut elsewhere = Vec::new();
        for s in &self.secrets {
            if !out.contains(&s.placeholder) {
                continue;
            }
            if s.host == host {
                out = out.replace(&s.placeholder, &s.value);
            } else {
                elsewhere.push(s.name.clone());
            }
        }
        (out, elsewhere)
    }

    /// The names of this VM's placeholders found in `bytes`.
    pub fn placeholders_in(&self, bytes: &[u8]) -> Vec<String> {
        self.secrets
            .iter()
            .filter(|s| {
                bytes
                    .windows(s.placeholder.len())
                    .any(|w| w == s.placeholder.as_bytes())
            })
            .map(|s| s.name.clone())
            .collect()
    }

    /// The TLS server side the guest sees for `host`: a certificate for it,
    /// signed by this VM's CA (made once per host).
    pub fn server_config(&self, host: &str) -> Result<Arc<rustls::ServerConfig>, String> {
        let mut leaves = self.leaves.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = leaves.get(host) {
            return Ok(c.clone());
        }
        let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let mut params =
            rcgen::CertificateParams::new(vec![host.to_string()]).map_err(|e| e.to_string())?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, host);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        // Names its CA's key: clients find the right one among several.
        params.use_authority_key_identifier_extension = true;
        let leaf = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| e.to_string())?;
        let key_der = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let mut cfg = rustls::ServerConfig::builder_with_provider(super::mitm::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone()], key_der)
            .map_err(|e| e.to_string())?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let cfg = Arc::new(cfg);
        if leaves.len() < 64 {
            leaves.insert(host.to_string(), cfg.clone());
        }
        Ok(cfg)
    }
}

/// The daemon's secrets of every VM.
pub struct Vault {
    dir: PathBuf,
    open: Mutex<HashMap<String, Arc<VmSecrets>>>,
}

impl Vault {
    pub fn new(state_dir: &Path) -> Vault {
        Vault {
            dir: state_dir.join("secrets"),
            open: Mutex::default(),
        }
    }

    fn file(&self, vm_id: &str) -> PathBuf {
        self.dir.join(format!("{vm_id}.json"))
    }

    /// Keeps a new VM's secrets (durably, before it boots).
    pub fn keep(&self, vm_id: &str, p: Prepared) -> Result<(), OpError> {
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let io = |what: &str, e: std::io::Error| {
            OpError::failed(format!("{what} {}: {e}", self.dir.display()))
        };
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(&self.dir)
            .map_err(|e| io("making", e))?;
        let json = serde_json::to_vec(&p.0).map_err(|e| OpError::failed(e.to_string()))?;
        let tmp = self.dir.join(format!(".tmp-{vm_id}"));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(|e| io("writing in", e))?;
        f.write_all(&json)
            .and_then(|_| f.sync_all())
            .map_err(|e| io("writing in", e))?;
        std::fs::rename(&tmp, self.file(vm_id)).map_err(|e| io("writing in", e))?;
        let s = VmSecrets::from_stored(p.0).map_err(OpError::failed)?;
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(vm_id.to_string(), Arc::new(s));
        Ok(())
    }

    /// A VM's secrets, if it has any (read back after a daemon restart).
    pub fn get(&self, vm_id: &str) -> Option<Arc<VmSecrets>> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = open.get(vm_id) {
            return Some(s.clone());
        }
        let text = std::fs::read(self.file(vm_id)).ok()?;
        let stored: Stored = serde_json::from_slice(&text).ok()?;
        let s = Arc::new(VmSecrets::from_stored(stored).ok()?);
        open.insert(vm_id.to_string(), s.clone());
        Some(s)
    }

    /// The VM is gone: so are its secrets and CA.
    pub fn forget(&self, vm_id: &str) {
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(vm_id);
        let _ = std::fs::remove_file(self.file(vm_id));
    }
}

/// The guest's environment for commands: each secret's name set to its
/// placeholder.
pub fn guest_env(refs: &[SecretRef]) -> Vec<(String, String)> {
    refs.iter()
        .map(|r| (r.name.clone(), r.placeholder.clone()))
        .collect()
}

/// Where the guest keeps the VM's CA certificate.
pub const GUEST_CA: &str = "/usr/local/share/ca-certificates/banger-egress.crt";

/// A script (`sh -c SCRIPT sh PEM MARK`) that makes the guest trust the
/// VM's CA: the certificate where `update-ca-certificates` keeps it, and
/// appended once (by its marker line) to the bundle TLS clients read.
pub const TRUST_SCRIPT: &str = r#"set -e
umask 022
mkdir -p /usr/local/share/ca-certificates /etc/ssl/certs
printf '%s\n' "$1" > /usr/local/share/ca-certificates/banger-egress.crt
b=/etc/ssl/certs/ca-certificates.crt
if ! grep -qxF "$2" "$b" 2>/dev/null; then printf '%s\n%s\n' "$2" "$1" >> "$b"; fi
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, host: &str, value: &str) -> SecretSpec {
        SecretSpec {
            name: name.into(),
            host: host.into(),
            value: value.into(),
        }
    }

    #[test]
    fn placeholders_are_swapped_only_for_their_own_host() {
        let p = prepare(&[
            spec("TOKEN", "Allowed.Test", "s3cret"),
            spec("OTHER", "b.test", "v2"),
        ])
        .unwrap()
        .unwrap();
        let refs = p.refs();
        assert_eq!(refs[0].host, "allowed.test");
        assert_ne!(refs[0].placeholder, refs[1].placeholder);
        let s = VmSecrets::from_stored(p.0).unwrap();
        let header = format!("Bearer {}", refs[0].placeholder);
        assert_eq!(s.swap("allowed.test", &header).0, "Bearer s3cret");
        let (same, elsewhere) = s.swap("b.test", &header);
        assert_eq!(same, header, "not another host's");
        assert_eq!(elsewhere, ["TOKEN"]);
        assert_eq!(s.placeholders_in(header.as_bytes()), ["TOKEN"]);
        assert!(s.for_host("allowed.test") && !s.for_host("c.test"));
        assert!(s.server_config("allowed.test").is_ok());
    }

    #[test]
    fn bad_secrets_are_refused_before_anything_is_made() {
        for bad in [
            spec("1X", "a.test", "v"),
            spec("A-B", "a.test", "v"),
            spec("T", "*.a.test", "v"),
            spec("T", "10.0.0.1", "v"),
            spec("T", "a.test", ""),
            spec("T", "a.test", "line\r\nInjected: yes"),
        ] {
            assert!(prepare(std::slice::from_ref(&bad)).is_err(), "{bad:?}");
        }
        assert!(prepare(&[spec("T", "a.test", "1"), spec("T", "b.test", "2")]).is_err());
        let many: Vec<_> = (0..=MAX_SECRETS)
            .map(|i| spec(&format!("T{i}"), "a.test", "v"))
            .collect();
        assert!(prepare(&many).is_err());
        assert!(format!("{:?}", spec("T", "a.test", "hidden-value")).contains("value hidden"));
    }

    #[test]
    fn the_vault_keeps_secrets_privately_and_forgets_them_with_the_vm() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let v = Vault::new(dir.path());
        let p = prepare(&[spec("T", "a.test", "v")]).unwrap().unwrap();
        let ph = p.refs()[0].placeholder.clone();
        v.keep("abc", p).unwrap();
        let f = dir.path().join("secrets/abc.json");
        assert_eq!(
            std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(dir.path().join("secrets"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        // A fresh vault (a restarted daemon) reads it back.
        let again = Vault::new(dir.path());
        let s = again.get("abc").unwrap();
        assert_eq!(s.swap("a.test", &ph).0, "v");
        again.forget("abc");
        assert!(!f.exists());
        assert!(Vault::new(dir.path()).get("abc").is_none());
    }
}
