//! SSH into guests: banger's own key pair, its own known_hosts (each VM's
//! host key learned over vsock and pinned, never the user's files), a
//! generated ssh_config for the system `ssh`, and a russh client for `vm run`
//! and `vm exec`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use russh::client;
use russh::keys::{PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::ChannelMsg;
use tokio::sync::mpsc;

use crate::domain::Event;
use crate::paths::Layout;

/// banger's SSH files.
#[derive(Debug, Clone)]
pub struct SshFiles {
    pub key: PathBuf,
    pub known_hosts: PathBuf,
    pub config: PathBuf,
}

impl SshFiles {
    pub fn of(layout: &Layout) -> SshFiles {
        let dir = layout.ssh_dir();
        SshFiles {
            key: dir.join("id_ed25519"),
            known_hosts: dir.join("known_hosts"),
            config: dir.join("ssh_config"),
        }
    }

    /// Creates the key pair on first use; returns the public key line
    /// (`ssh-ed25519 AAAA...`).
    pub fn ensure_key(&self) -> Result<String, String> {
        // Concurrent first starts must not race ssh-keygen on one file.
        static KEYGEN: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one_at_a_time = KEYGEN.lock().unwrap_or_else(|e| e.into_inner());
        if !self.key.exists() {
            let dir = self.key.parent().unwrap_or(Path::new("."));
            crate::paths::ensure_private_dir(dir)
                .map_err(|e| format!("creating {}: {e}", dir.display()))?;
            let kg = crate::host::system_tool("ssh-keygen")
                .ok_or("ssh-keygen is not installed; install openssh-client")?;
            let out = crate::host::process::run_bounded(
                std::process::Command::new(kg)
                    .args(["-q", "-t", "ed25519", "-N", "", "-C", "banger", "-f"])
                    .arg(&self.key),
                std::time::Duration::from_secs(30),
                64 << 10,
            )
            .map_err(|e| format!("ssh-keygen: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "ssh-keygen failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        let public = std::fs::read_to_string(self.key.with_extension("pub"))
            .map_err(|e| format!("reading {}.pub: {e}", self.key.display()))?;
        Ok(public
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" "))
    }

    /// Runs `f` holding the lock of banger's SSH files: read-modify-write
    /// of known_hosts and ssh_config by concurrent VM starts and deletes
    /// never loses an update.
    fn locked<T>(&self, f: impl FnOnce() -> std::io::Result<T>) -> std::io::Result<T> {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = self.known_hosts.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(dir.join(".lock"))?;
        let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| std::io::Error::from(e))?;
        f()
    }

    /// Pins `host_key` for `<name>.vm` and `ip`, replacing older entries for
    /// either (addresses are reused by later VMs).
    pub fn pin(&self, name: &str, ip: &str, host_key: &str) -> std::io::Result<()> {
        self.locked(|| {
            let alias = format!("{name}.vm");
            let mut lines = self.known_lines_without(&alias, ip);
            lines.push(format!("{alias},{ip} {host_key}"));
            self.write_known(&lines)
        })
    }

    /// Whether a host key is pinned for `<name>.vm`.
    pub fn is_pinned(&self, name: &str) -> bool {
        let alias = format!("{name}.vm");
        std::fs::read_to_string(&self.known_hosts)
            .unwrap_or_default()
            .lines()
            .any(|l| {
                l.split_whitespace()
                    .next()
                    .is_some_and(|h| h.split(',').any(|h| h == alias))
            })
    }

    /// Forgets a VM's entries.
    pub fn unpin(&self, name: &str, ip: &str) -> std::io::Result<()> {
        self.locked(|| {
            let lines = self.known_lines_without(&format!("{name}.vm"), ip);
            self.write_known(&lines)
        })
    }

    fn known_lines_without(&self, alias: &str, ip: &str) -> Vec<String> {
        std::fs::read_to_string(&self.known_hosts)
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                let hosts = l.split_whitespace().next().unwrap_or("");
                !hosts.split(',').any(|h| h == alias || h == ip)
            })
            .map(str::to_string)
            .collect()
    }

    fn write_known(&self, lines: &[String]) -> std::io::Result<()> {
        if let Some(d) = self.known_hosts.parent() {
            std::fs::create_dir_all(d)?;
        }
        let body = if lines.is_empty() {
            String::new()
        } else {
            lines.join("\n") + "\n"
        };
        replace_file(&self.known_hosts, body.as_bytes())
    }

    /// Writes ssh_config with one `Host <name>.vm` block per VM of `vms`
    /// (called under the lock, so the newest list always wins).
    pub fn write_config(&self, vms: impl FnOnce() -> Vec<(String, String)>) -> std::io::Result<()> {
        self.locked(|| self.write_config_locked(&vms()))
    }

    fn write_config_locked(&self, vms: &[(String, String)]) -> std::io::Result<()> {
        let mut s = String::from("# Generated by banger; `ssh -F <this file> <name>.vm`.\n");
        // Each VM's address (so `ssh <name>.vm` needs no DNS), then what
        // every `*.vm` shares (ssh takes the first value it sees).
        for (name, ip) in vms {
            s.push_str(&format!(
                "\nHost {name}.vm\n  HostName {ip}\n  HostKeyAlias {name}.vm\n"
            ));
        }
        s.push_str(&format!(
            "\nHost *.vm\n  User root\n  Port 22\n  IdentityFile {}\n  IdentitiesOnly yes\n  UserKnownHostsFile {}\n  StrictHostKeyChecking yes\n  LogLevel ERROR\n",
            self.key.display(),
            self.known_hosts.display()
        ));
        if let Some(d) = self.config.parent() {
            std::fs::create_dir_all(d)?;
        }
        replace_file(&self.config, s.as_bytes())
    }
}

/// Replaces `path` with `data` through a uniquely named temporary file.
fn replace_file(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use rand::RngExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{:08x}.tmp", rand::rng().random::<u32>()));
    let tmp = PathBuf::from(tmp);
    let r = std::fs::write(&tmp, data).and_then(|_| std::fs::rename(&tmp, path));
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

/// A guest's host key as a known_hosts key field (`ssh-ed25519 <base64>`),
/// parsed and re-encoded: anything else the guest sends (another type, a
/// newline, a second entry) is refused.
pub fn host_key_line(algorithm: &str, b64: &str) -> Result<String, SshError> {
    let refuse = |why: &str| SshError::UnusableHostKey(why.to_string());
    if algorithm != "ssh-ed25519" {
        return Err(refuse("not ssh-ed25519"));
    }
    if b64.len() > 256
        || !b64
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
    {
        return Err(refuse("not base64"));
    }
    let key = russh::keys::parse_public_key_base64(b64).map_err(|e| refuse(&e.to_string()))?;
    if key.algorithm() != russh::keys::Algorithm::Ed25519 {
        return Err(refuse("not an ed25519 key"));
    }
    let encoded = key.to_openssh().map_err(|e| refuse(&e.to_string()))?;
    let mut parts = encoded.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some(a), Some(k)) => Ok(format!("{a} {k}")),
        _ => Err(refuse("cannot re-encode it")),
    }
}

/// SSH failures.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("cannot connect to {0}:22: {1}")]
    Connect(String, String),
    #[error("the guest's host key does not match the one pinned for it")]
    HostKey,
    #[error("authentication as root was refused")]
    Auth,
    #[error("ssh: {0}")]
    Protocol(String),
    #[error("the guest sent an unusable host key: {0}")]
    UnusableHostKey(String),
}

struct Pinned {
    want: russh::keys::PublicKey,
    matched: bool,
}

impl client::Handler for Pinned {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let ok = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.key_data() == self.want.key_data(),
            PublicKeyOrCertificate::Certificate(_) => false,
        };
        self.matched = ok;
        Ok(ok)
    }
}

/// A connected, authenticated session.
pub struct Session {
    handle: client::Handle<Pinned>,
}

/// Connects to `ip:22`, checks the host key against `host_key`
/// (`ssh-ed25519 AAAA...`) and authenticates as root with `key`.
pub async fn connect(
    ip: &str,
    key: &Path,
    host_key: &str,
    timeout: Duration,
) -> Result<Session, SshError> {
    let b64 = host_key.split_whitespace().nth(1).unwrap_or(host_key);
    let want = russh::keys::parse_public_key_base64(b64)
        .map_err(|e| SshError::Protocol(format!("pinned key: {e}")))?;
    let secret = russh::keys::load_secret_key(key, None)
        .map_err(|e| SshError::Protocol(format!("{}: {e}", key.display())))?;
    let config = Arc::new(client::Config {
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(15)),
        ..Default::default()
    });
    let fut = client::connect(
        config,
        (ip, 22u16),
        Pinned {
            want,
            matched: false,
        },
    );
    let mut handle = match tokio::time::timeout(timeout, fut).await {
        Err(_) => {
            return Err(SshError::Connect(
                ip.into(),
                format!("no answer within {timeout:?}"),
            ))
        }
        Ok(Err(russh::Error::UnknownKey)) => return Err(SshError::HostKey),
        Ok(Err(e)) => return Err(SshError::Connect(ip.into(), e.to_string())),
        Ok(Ok(h)) => h,
    };
    let auth = handle
        .authenticate_publickey("root", PrivateKeyWithHashAlg::new(Arc::new(secret), None))
        .await
        .map_err(|e| SshError::Protocol(e.to_string()))?;
    if !auth.success() {
        return Err(SshError::Auth);
    }
    Ok(Session { handle })
}

impl Session {
    /// Runs `command`, streaming stdout/stderr to `events`; returns the exit
    /// code (128+signal when killed by one).
    pub async fn exec(&self, command: &str, events: &mpsc::Sender<Event>) -> Result<i32, SshError> {
        let mut ch = self
            .handle
            .channel_open_session()
            .await
            .map_err(|e| SshError::Protocol(e.to_string()))?;
        ch.exec(true, command)
            .await
            .map_err(|e| SshError::Protocol(e.to_string()))?;
        let mut code = None;
        while let Some(msg) = ch.wait().await {
            match msg {
                ChannelMsg::Data { data } => {
                    let _ = events.send(Event::Stdout(data.to_vec())).await;
                }
                ChannelMsg::ExtendedData { data, .. } => {
                    let _ = events.send(Event::Stderr(data.to_vec())).await;
                }
                ChannelMsg::ExitStatus { exit_status } => code = Some(exit_status as i32),
                ChannelMsg::ExitSignal { signal_name, .. } => {
                    code = Some(128 + signal_number(&format!("{signal_name:?}")));
                }
                _ => {}
            }
        }
        code.ok_or_else(|| SshError::Protocol("the command ended without an exit status".into()))
    }

    /// Runs `command` and returns its stdout (errors on a non-zero exit).
    /// Runs `command`, keeping the last 64 KiB of its stdout. Output is
    /// drained while the command runs (a bounded channel read only at the
    /// end would stall a command that prints more than it holds).
    pub async fn output(&self, command: &str) -> Result<String, SshError> {
        let (tx, mut rx) = mpsc::channel(64);
        let collect = tokio::spawn(async move {
            let mut out = crate::guest::exec::Tail::new(64 << 10);
            while let Some(e) = rx.recv().await {
                if let Event::Stdout(d) = e {
                    out.push(&d);
                }
            }
            out.0
        });
        let code = self.exec(command, &tx).await;
        drop(tx);
        let out = collect.await.unwrap_or_default();
        let code = code?;
        if code != 0 {
            return Err(SshError::Protocol(format!("`{command}` exited {code}")));
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    pub async fn close(self) {
        let _ = self
            .handle
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    }
}

fn signal_number(name: &str) -> i32 {
    match name.trim_start_matches("SIG").to_ascii_uppercase().as_str() {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "ILL" => 4,
        "ABRT" => 6,
        "FPE" => 8,
        "KILL" => 9,
        "SEGV" => 11,
        "PIPE" => 13,
        "ALRM" => 14,
        "TERM" => 15,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinning_replaces_entries_for_the_name_or_address() {
        let d = tempfile::tempdir().unwrap();
        let f = SshFiles {
            key: d.path().join("k"),
            known_hosts: d.path().join("known_hosts"),
            config: d.path().join("ssh_config"),
        };
        f.pin("a", "172.16.0.2", "ssh-ed25519 AAAA1").unwrap();
        f.pin("b", "172.16.0.3", "ssh-ed25519 BBBB").unwrap();
        f.pin("c", "172.16.0.2", "ssh-ed25519 CCCC").unwrap();
        let k = std::fs::read_to_string(&f.known_hosts).unwrap();
        assert!(!k.contains("AAAA1"), "{k}");
        assert!(k.contains("b.vm,172.16.0.3 ssh-ed25519 BBBB"));
        assert!(k.contains("c.vm,172.16.0.2 ssh-ed25519 CCCC"));
        f.unpin("b", "172.16.0.3").unwrap();
        assert!(!std::fs::read_to_string(&f.known_hosts)
            .unwrap()
            .contains("BBBB"));
        f.write_config(|| vec![("c".into(), "172.16.0.2".into())])
            .unwrap();
        let c = std::fs::read_to_string(&f.config).unwrap();
        assert!(
            c.contains("Host c.vm")
                && c.contains("HostName 172.16.0.2")
                && c.contains("StrictHostKeyChecking yes")
        );
    }
}
