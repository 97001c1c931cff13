//! A seccomp filter for a child that parses hostile input and needs no
//! network (depmod over the owner's modules): every socket but a Unix one
//! is refused (`EACCES`), and so is io_uring (which can make sockets
//! without `socket(2)`). It holds where no network namespace can be made
//! (the helper's unit allows only mount namespaces). x86_64 only; a call
//! of another ABI (i386, x32) kills the process.

use std::os::unix::process::CommandExt;

const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
/// Where a syscall number from another ABI (x32) starts.
const X32_BIT: u32 = 0x4000_0000;

fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// The program (offsets into `struct seccomp_data`: nr 0, arch 4, args 16;
/// jumps count from the next instruction).
fn program() -> [libc::sock_filter; 11] {
    use libc::{BPF_ABS, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W};
    const BPF_JGE: u32 = 0x30;
    let ld = BPF_LD | BPF_W | BPF_ABS;
    let jeq = BPF_JMP | BPF_JEQ | BPF_K;
    let ret = BPF_RET | BPF_K;
    [
        /* 0 */ stmt(ld, 4),
        /* 1 */ jump(jeq, AUDIT_ARCH_X86_64, 0, 8), // else 10: kill
        /* 2 */ stmt(ld, 0),
        /* 3 */ jump(BPF_JMP | BPF_JGE | BPF_K, X32_BIT, 6, 0), // 10: kill
        /* 4 */ jump(jeq, libc::SYS_io_uring_setup as u32, 3, 0), // 8: deny
        /* 5 */ jump(jeq, libc::SYS_socket as u32, 0, 3), // else 9: allow
        /* 6 */ stmt(ld, 16),
        /* 7 */ jump(jeq, libc::AF_UNIX as u32, 1, 0), // 9: allow
        /* 8 */ stmt(ret, libc::SECCOMP_RET_ERRNO | libc::EACCES as u32),
        /* 9 */ stmt(ret, libc::SECCOMP_RET_ALLOW),
        /* 10 */ stmt(ret, libc::SECCOMP_RET_KILL_PROCESS),
    ]
}

/// Makes `cmd`'s child (and all it runs) unable to open a network socket.
pub fn deny_network(cmd: &mut std::process::Command) {
    let filter = program();
    // SAFETY: prctl is async-signal-safe; the program is built before fork
    // and moved into the closure (no allocation in the child).
    unsafe {
        cmd.pre_exec(move || {
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &prog as *const libc::sock_fprog,
                ) < 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// bash's `/dev/tcp` to a closed local port: refused by the port
    /// without the filter, refused by the filter (no socket at all) with it.
    #[test]
    fn a_filtered_child_makes_no_network_socket_but_runs() {
        let probe = "exec 3<>/dev/tcp/127.0.0.1/9 || true; echo ran";
        let run = |filtered: bool| {
            let mut c = std::process::Command::new("bash");
            c.args(["-c", probe]);
            if filtered {
                deny_network(&mut c);
            }
            let o = c.output().unwrap();
            (
                String::from_utf8_lossy(&o.stdout).into_owned(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            )
        };
        let (out, err) = run(false);
        assert_eq!(out, "ran\n");
        assert!(err.contains("Connection refused"), "{err}");
        let (out, err) = run(true);
        assert_eq!(out, "ran\n", "{err}");
        assert!(err.contains("Permission denied"), "{err}");
        // A Unix socket is still made; an Internet one is refused.
        let mut c = std::process::Command::new("python3");
        c.args([
            "-c",
            "import socket; socket.socket(socket.AF_UNIX); print('unix'); socket.socket()",
        ]);
        deny_network(&mut c);
        let o = c.output().unwrap();
        let (out, err) = (
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
        );
        assert_eq!(out, "unix\n", "{err}");
        assert!(err.contains("PermissionError"), "{err}");
    }
}
