//! One `bangerd` per owner uid per network namespace.
//!
//! Two daemons of one uid in one namespace (another `XDG_STATE_HOME`: a
//! second checkout, a test run, `sudo` with another HOME) share the bridge,
//! its addresses and the `bgt*` taps, and each one's start-up reconcile
//! deletes the other's taps as orphans. So a daemon claims the abstract
//! Unix socket `banger-bangerd-uid<uid>` before it touches anything:
//! abstract names are per network namespace and vanish with their holder
//! (a crash leaves nothing to clean). A second daemon finds the name taken,
//! asks the holder who it is (pid and state directory, answered only to
//! the same uid) and refuses, saying so.

use std::io::{Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

/// The claim: held until it is served (then for as long as the process
/// lives) or dropped.
pub struct Claim {
    listener: UnixListener,
}

fn name(uid: u32) -> String {
    format!("banger-bangerd-uid{uid}")
}

/// What the holder says about itself, bounded.
const INFO_MAX: usize = 4096;

/// Claims the instance name for `uid`. A name held by a daemon that is
/// stopping (a `daemon stop` just before) is waited for up to `wait`.
pub fn claim(uid: u32, wait: Duration) -> Result<Claim, String> {
    claim_name(&name(uid), uid, wait)
}

fn claim_name(name: &str, uid: u32, wait: Duration) -> Result<Claim, String> {
    let addr = SocketAddr::from_abstract_name(name.as_bytes())
        .map_err(|e| format!("the instance name {name}: {e}"))?;
    let deadline = Instant::now() + wait;
    loop {
        match UnixListener::bind_addr(&addr) {
            Ok(listener) => return Ok(Claim { listener }),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                if Instant::now() >= deadline {
                    return Err(held_by(&addr, uid));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(format!("claiming the instance name {name}: {e}")),
        }
    }
}

/// Why the name is taken: the holder's own words when it is ours.
fn held_by(addr: &SocketAddr, uid: u32) -> String {
    let fix = "two daemons of one user in one network namespace would delete each other's taps and hand out the same addresses; use that daemon (run banger with its XDG_STATE_HOME), or stop it first (banger daemon stop, in its environment)";
    let s = match UnixStream::connect_addr(addr) {
        Ok(s) => s,
        Err(e) => {
            return format!("another bangerd of uid {uid} runs in this network namespace (its instance name is taken; asking it failed: {e}); {fix}")
        }
    };
    let holder = nix::sys::socket::getsockopt(&s, nix::sys::socket::sockopt::PeerCredentials)
        .map(|c| (c.uid(), c.pid()))
        .ok();
    match holder {
        Some((u, pid)) if u == uid => {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = Vec::new();
            let _ = (&s).take(INFO_MAX as u64).read_to_end(&mut buf);
            let info = String::from_utf8_lossy(&buf);
            let state = info
                .lines()
                .find_map(|l| l.strip_prefix("state="))
                .map(|p| p.chars().filter(|c| !c.is_control()).collect::<String>())
                .unwrap_or_else(|| "?".into());
            format!("another bangerd (pid {pid}, state {state}) already serves uid {uid} in this network namespace; {fix}")
        }
        Some((u, pid)) => format!(
            "the instance name of uid {uid}'s bangerd is held by uid {u} (pid {pid}) in this network namespace; stop that process"
        ),
        None => format!("another bangerd of uid {uid} runs in this network namespace; {fix}"),
    }
}

impl Claim {
    /// Answers who holds the name — this pid and `state_dir` — to callers
    /// of the same uid, on a thread that keeps the claim until the process
    /// ends.
    pub fn serve(self, uid: u32, state_dir: &Path) {
        let l = self.listener;
        let info = format!(
            "pid={}\nstate={}\n",
            std::process::id(),
            state_dir.display()
        );
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let same =
                    nix::sys::socket::getsockopt(&s, nix::sys::socket::sockopt::PeerCredentials)
                        .is_ok_and(|c| c.uid() == uid);
                if same {
                    let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
                    let _ = (&s).write_all(info.as_bytes());
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_claim_of_a_held_name_is_refused_naming_the_holder() {
        let uid = nix::unistd::geteuid().as_raw();
        let n = format!("banger-test-instance-{}", std::process::id());
        let first = claim_name(&n, uid, Duration::ZERO).unwrap();
        first.serve(uid, Path::new("/state/one"));
        let e = claim_name(&n, uid, Duration::from_millis(300))
            .err()
            .expect("the second claim is refused");
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        assert!(e.contains("state /state/one"), "{e}");
        assert!(e.contains("banger daemon stop"), "{e}");
    }

    #[test]
    fn a_name_is_free_again_once_its_holder_is_gone() {
        let uid = nix::unistd::geteuid().as_raw();
        let n = format!("banger-test-instance-gone-{}", std::process::id());
        let first = claim_name(&n, uid, Duration::ZERO).unwrap();
        drop(first);
        assert!(claim_name(&n, uid, Duration::ZERO).is_ok());
    }
}
