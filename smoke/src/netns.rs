//! Work inside the run's network namespace from this process: a thread
//! that joined it (setns is per thread) binds, connects, asks DNS.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::Duration;

/// Runs `f` on a thread that joined the run's network namespace (setns
/// is per thread); the rest of the process stays in the host's.
pub fn in_netns<T, F>(ns: &str, f: F) -> Result<T, String>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    use std::os::fd::AsRawFd;
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || -> Result<T, String> {
        let fd = File::open(&path).map_err(|e| format!("{path}: {e}"))?;
        // SAFETY: a valid descriptor of a network namespace file.
        if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!("setns {path}: {}", std::io::Error::last_os_error()));
        }
        Ok(f())
    })
    .join()
    .map_err(|_| "the namespace thread panicked".to_string())?
}

/// Whether a UDP port can be bound in the namespace (nothing uses it).
pub fn udp_port_free(ns: &str, port: u16) -> Result<Result<(), String>, String> {
    in_netns(ns, move || {
        UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))
            .map(drop)
            .map_err(|e| e.to_string())
    })
}

/// Whether something accepts TCP connections on 127.0.0.1:`port` in the
/// namespace.
pub fn tcp_listening(ns: &str, port: u16) -> bool {
    in_netns(ns, move || {
        std::net::TcpStream::connect_timeout(
            &SocketAddrV4::new(Ipv4Addr::LOCALHOST, port).into(),
            Duration::from_millis(500),
        )
        .is_ok()
    })
    .unwrap_or(false)
}

/// A DNS answer: the response code (0 NOERROR, 3 NXDOMAIN, 5 REFUSED, ...)
/// and the A records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsAnswer {
    pub rcode: u8,
    pub addrs: Vec<Ipv4Addr>,
}

impl DnsAnswer {
    pub fn rcode_name(&self) -> &'static str {
        match self.rcode {
            0 => "NOERROR",
            1 => "FORMERR",
            2 => "SERVFAIL",
            3 => "NXDOMAIN",
            5 => "REFUSED",
            _ => "other",
        }
    }
}

/// One A query to `server` from inside the namespace (three tries of 1 s).
pub fn dns_query(ns: &str, server: SocketAddrV4, name: &str) -> Result<DnsAnswer, String> {
    let name = name.to_string();
    in_netns(ns, move || -> Result<DnsAnswer, String> {
        let sock = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))
            .map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(Duration::from_secs(1)))
            .map_err(|e| e.to_string())?;
        let id: u16 = (std::process::id() as u16) ^ 0x5a5a;
        let mut q = Vec::new();
        q.extend_from_slice(&id.to_be_bytes());
        q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        for label in name.trim_end_matches('.').split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        let mut last = String::from("no answer");
        for _ in 0..3 {
            sock.send_to(&q, server).map_err(|e| e.to_string())?;
            let mut buf = [0u8; 1500];
            match sock.recv_from(&mut buf) {
                Ok((n, _)) => match parse_dns(&buf[..n], id) {
                    Ok(a) => return Ok(a),
                    Err(e) => last = e,
                },
                Err(e) => last = format!("no answer from {server}: {e}"),
            }
        }
        Err(last)
    })?
}

fn parse_dns(b: &[u8], id: u16) -> Result<DnsAnswer, String> {
    if b.len() < 12 || u16::from_be_bytes([b[0], b[1]]) != id {
        return Err("a short or foreign DNS reply".into());
    }
    let rcode = b[3] & 0x0f;
    let qd = u16::from_be_bytes([b[4], b[5]]) as usize;
    let an = u16::from_be_bytes([b[6], b[7]]) as usize;
    let mut i = 12;
    let skip_name = |b: &[u8], mut i: usize| -> Result<usize, String> {
        loop {
            let l = *b.get(i).ok_or("truncated name")? as usize;
            if l == 0 {
                return Ok(i + 1);
            }
            if l & 0xc0 == 0xc0 {
                return Ok(i + 2);
            }
            i += 1 + l;
        }
    };
    for _ in 0..qd {
        i = skip_name(b, i)? + 4;
    }
    let mut addrs = Vec::new();
    for _ in 0..an {
        i = skip_name(b, i)?;
        let h = b.get(i..i + 10).ok_or("truncated answer")?;
        let (ty, len) = (
            u16::from_be_bytes([h[0], h[1]]),
            u16::from_be_bytes([h[8], h[9]]) as usize,
        );
        i += 10;
        let data = b.get(i..i + len).ok_or("truncated data")?;
        if ty == 1 && len == 4 {
            addrs.push(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        i += len;
    }
    Ok(DnsAnswer { rcode, addrs })
}
