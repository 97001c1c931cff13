//! Minimal rtnetlink: bring links up, set an IPv4 address, a default route.
//! Hand-written on libc to keep the agent small and static.

use std::io;
use std::mem::size_of;
use std::net::Ipv4Addr;

const NLMSG_ERROR: u16 = 2;
const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const IFLA_ADDRESS: u16 = 1;
const RTM_NEWROUTE: u16 = 24;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_GATEWAY: u16 = 5;
const RTA_OIF: u16 = 4;

fn align(n: usize) -> usize {
    (n + 3) & !3
}

struct Msg {
    buf: Vec<u8>,
}

impl Msg {
    fn new(ty: u16, flags: u16, body: &[u8]) -> Msg {
        let mut buf = vec![0u8; 16];
        buf[4..6].copy_from_slice(&ty.to_ne_bytes());
        buf[6..8].copy_from_slice(
            &(flags | libc::NLM_F_REQUEST as u16 | libc::NLM_F_ACK as u16).to_ne_bytes(),
        );
        buf[8..12].copy_from_slice(&1u32.to_ne_bytes());
        buf.extend_from_slice(body);
        buf.resize(align(buf.len()), 0);
        Msg { buf }
    }
    fn attr(mut self, ty: u16, data: &[u8]) -> Msg {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.buf.resize(align(self.buf.len()), 0);
        self
    }
    fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

struct Socket(libc::c_int);

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: we own the fd.
        unsafe { libc::close(self.0) };
    }
}

impl Socket {
    fn open() -> io::Result<Socket> {
        // SAFETY: plain socket(2).
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Socket(fd))
    }

    /// Sends one request and waits for its ACK (or error).
    fn request(&self, msg: Vec<u8>) -> io::Result<()> {
        // SAFETY: sockaddr_nl zeroed is valid (kernel destination).
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: buffer and address are valid for the call.
        let n = unsafe {
            libc::sendto(
                self.0,
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&sa as *const libc::sockaddr_nl).cast(),
                size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; 8192];
        loop {
            // SAFETY: buf is valid for writes of its length.
            let n = unsafe { libc::recv(self.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut off = 0usize;
            while off + 16 <= n as usize {
                let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
                let ty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap());
                if ty == NLMSG_ERROR {
                    let err = i32::from_ne_bytes(buf[off + 16..off + 20].try_into().unwrap());
                    return if err == 0 {
                        Ok(())
                    } else {
                        Err(io::Error::from_raw_os_error(-err))
                    };
                }
                if len < 16 {
                    break;
                }
                off += align(len);
            }
        }
    }
}

/// Interface index of `name`.
pub fn ifindex(name: &str) -> io::Result<u32> {
    let c =
        std::ffi::CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: valid C string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(idx)
    }
}

/// Brings a link up.
pub fn link_up(index: u32) -> io::Result<()> {
    let s = Socket::open()?;
    // struct ifinfomsg { family u8, pad u8, type u16, index i32, flags u32, change u32 }
    let mut body = vec![0u8; 16];
    body[4..8].copy_from_slice(&(index as i32).to_ne_bytes());
    body[8..12].copy_from_slice(&(libc::IFF_UP as u32).to_ne_bytes());
    body[12..16].copy_from_slice(&(libc::IFF_UP as u32).to_ne_bytes());
    s.request(Msg::new(RTM_NEWLINK, 0, &body).finish())
}

/// Sets a link's hardware (MAC) address; virtio-net takes it while up.
pub fn set_mac(index: u32, mac: [u8; 6]) -> io::Result<()> {
    let s = Socket::open()?;
    let mut body = vec![0u8; 16];
    body[4..8].copy_from_slice(&(index as i32).to_ne_bytes());
    s.request(
        Msg::new(RTM_NEWLINK, 0, &body)
            .attr(IFLA_ADDRESS, &mac)
            .finish(),
    )
}

/// Removes an IPv4 address from a link.
pub fn del_address(index: u32, ip: Ipv4Addr, prefix_len: u8) -> io::Result<()> {
    let s = Socket::open()?;
    let mut body = vec![0u8; 8];
    body[0] = libc::AF_INET as u8;
    body[1] = prefix_len;
    body[4..8].copy_from_slice(&index.to_ne_bytes());
    s.request(
        Msg::new(RTM_DELADDR, 0, &body)
            .attr(IFA_LOCAL, &ip.octets())
            .attr(IFA_ADDRESS, &ip.octets())
            .finish(),
    )
}

/// Sets (replaces) an IPv4 address on a link.
pub fn set_address(index: u32, ip: Ipv4Addr, prefix_len: u8) -> io::Result<()> {
    let s = Socket::open()?;
    // struct ifaddrmsg { family u8, prefixlen u8, flags u8, scope u8, index u32 }
    let mut body = vec![0u8; 8];
    body[0] = libc::AF_INET as u8;
    body[1] = prefix_len;
    body[4..8].copy_from_slice(&index.to_ne_bytes());
    let flags = (libc::NLM_F_CREATE | libc::NLM_F_REPLACE) as u16;
    s.request(
        Msg::new(RTM_NEWADDR, flags, &body)
            .attr(IFA_LOCAL, &ip.octets())
            .attr(IFA_ADDRESS, &ip.octets())
            .finish(),
    )
}

/// Sets (replaces) the default route.
pub fn set_default_route(index: u32, gw: Ipv4Addr) -> io::Result<()> {
    let s = Socket::open()?;
    // struct rtmsg { family, dst_len, src_len, tos, table, protocol, scope, type: u8; flags u32 }
    let mut body = vec![0u8; 12];
    body[0] = libc::AF_INET as u8;
    body[4] = libc::RT_TABLE_MAIN;
    body[5] = libc::RTPROT_BOOT;
    body[6] = libc::RT_SCOPE_UNIVERSE;
    body[7] = libc::RTN_UNICAST;
    let flags = (libc::NLM_F_CREATE | libc::NLM_F_REPLACE) as u16;
    s.request(
        Msg::new(RTM_NEWROUTE, flags, &body)
            .attr(RTA_GATEWAY, &gw.octets())
            .attr(RTA_OIF, &index.to_ne_bytes())
            .finish(),
    )
}

/// The first non-loopback network interface (`eth0` with `net.ifnames=0`).
pub fn first_ethernet() -> io::Result<String> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n != "lo" && std::path::Path::new(&format!("/sys/class/net/{n}/device")).exists()
        })
        .collect();
    names.sort();
    names
        .into_iter()
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no network interface"))
}
