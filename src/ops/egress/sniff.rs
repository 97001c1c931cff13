//! The name a guest's connection asks for, from its first bytes: the SNI of
//! a TLS ClientHello or the Host of an HTTP/1 request. The bytes are the
//! guest's (hostile): every length is checked against what was read, and
//! only printable ASCII names come out.

/// What the first bytes say.
#[derive(Debug, PartialEq, Eq)]
pub enum Sniff {
    /// A TLS ClientHello or an HTTP request naming this host (lowercase,
    /// no port, no trailing dot).
    Name(String),
    /// TLS or HTTP without a name, or another protocol.
    NoName,
    /// Not enough bytes yet to tell.
    More,
}

/// Whether the first bytes are an HTTP/1 request head (a refusal can
/// then be said in HTTP).
pub fn is_http(buf: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    buf.first().is_some_and(u8::is_ascii_uppercase)
        && matches!(req.parse(buf), Ok(httparse::Status::Complete(_)))
}

/// Most bytes read before deciding.
pub const MAX_SNIFF: usize = 16 << 10;

/// Looks at what the guest sent so far.
pub fn sniff(buf: &[u8]) -> Sniff {
    match buf.first() {
        None => Sniff::More,
        Some(0x16) => tls(buf),
        Some(c) if c.is_ascii_uppercase() => http(buf),
        Some(_) => Sniff::NoName,
    }
}

fn clean(name: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(name).ok()?;
    let s = s.trim_end_matches('.');
    // An address is not a name (`Host: 10.0.0.3`).
    let ok = !s.is_empty()
        && s.parse::<std::net::Ipv4Addr>().is_err()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_');
    ok.then(|| s.to_ascii_lowercase())
}

fn http(buf: &[u8]) -> Sniff {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) if buf.len() < MAX_SNIFF => {
            // A name may already be there in a partial head.
            Sniff::More
        }
        Ok(_) => match req
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("host"))
        {
            Some(h) => {
                let v = h.value;
                // `host:port`, `[v6]:port`: only the host part.
                let host = match v.iter().rposition(|&b| b == b':') {
                    Some(i) if v[i + 1..].iter().all(u8::is_ascii_digit) => &v[..i],
                    _ => v,
                };
                clean(host).map_or(Sniff::NoName, Sniff::Name)
            }
            None => Sniff::NoName,
        },
        Err(_) => Sniff::NoName,
    }
}

/// A big-endian length at `at`, `n` bytes wide.
fn be(b: &[u8], at: usize, n: usize) -> Option<usize> {
    let s = b.get(at..at.checked_add(n)?)?;
    Some(s.iter().fold(0usize, |a, &x| (a << 8) | x as usize))
}

fn tls(buf: &[u8]) -> Sniff {
    // The handshake bytes, gathered from as many records as are here.
    let mut hs = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let Some(len) = be(buf, at + 3, 2) else {
            break;
        };
        if buf[at] != 0x16 {
            // Past the handshake records (the hello is judged below).
            break;
        }
        let Some(body) = buf.get(at + 5..at + 5 + len) else {
            hs.extend_from_slice(&buf[(at + 5).min(buf.len())..]);
            break;
        };
        hs.extend_from_slice(body);
        at += 5 + len;
    }
    if hs.first().is_some_and(|&t| t != 1) {
        return Sniff::NoName;
    }
    let Some(hello_len) = be(&hs, 1, 3) else {
        return more_or_none(buf);
    };
    let Some(hello) = hs.get(4..4 + hello_len) else {
        return more_or_none(buf);
    };
    client_hello_sni(hello).map_or(Sniff::NoName, Sniff::Name)
}

fn more_or_none(buf: &[u8]) -> Sniff {
    if buf.len() < MAX_SNIFF {
        Sniff::More
    } else {
        Sniff::NoName
    }
}

/// The server name of a whole ClientHello body.
fn client_hello_sni(h: &[u8]) -> Option<String> {
    // version (2) + random (32)
    let mut at = 34;
    let sid = be(h, at, 1)?;
    at += 1 + sid;
    let suites = be(h, at, 2)?;
    at += 2 + suites;
    let comp = be(h, at, 1)?;
    at += 1 + comp;
    let ext_len = be(h, at, 2)?;
    at += 2;
    let exts = h.get(at..at + ext_len)?;
    let mut i = 0;
    while i + 4 <= exts.len() {
        let (ty, len) = (be(exts, i, 2)?, be(exts, i + 2, 2)?);
        let body = exts.get(i + 4..i + 4 + len)?;
        if ty == 0 {
            // server_name_list: (type 1, len 2, name)*
            let list = body.get(2..2 + be(body, 0, 2)?)?;
            let mut j = 0;
            while j + 3 <= list.len() {
                let n = be(list, j + 1, 2)?;
                let name = list.get(j + 3..j + 3 + n)?;
                if list[j] == 0 {
                    return clean(name);
                }
                j += 3 + n;
            }
            return None;
        }
        i += 4 + len;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello as rustls or curl would send it, with `sni`.
    fn hello(sni: Option<&str>) -> Vec<u8> {
        let mut exts = Vec::new();
        // supported_versions, some noise first.
        exts.extend_from_slice(&[0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04]);
        if let Some(n) = sni {
            let n = n.as_bytes();
            let mut list = vec![0u8];
            list.extend_from_slice(&(n.len() as u16).to_be_bytes());
            list.extend_from_slice(n);
            let mut body = (list.len() as u16).to_be_bytes().to_vec();
            body.extend_from_slice(&list);
            exts.extend_from_slice(&[0, 0]);
            exts.extend_from_slice(&(body.len() as u16).to_be_bytes());
            exts.extend_from_slice(&body);
        }
        let mut h = vec![3, 3];
        h.extend_from_slice(&[7; 32]);
        h.push(0); // session id
        h.extend_from_slice(&[0, 2, 0x13, 0x01]);
        h.extend_from_slice(&[1, 0]);
        h.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        h.extend_from_slice(&exts);
        let mut hs = vec![1];
        hs.extend_from_slice(&(h.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&h);
        let mut rec = vec![0x16, 3, 1];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn a_client_hello_gives_its_server_name_once_it_is_whole() {
        let h = hello(Some("Allowed.Test"));
        assert_eq!(sniff(&h), Sniff::Name("allowed.test".into()));
        for cut in [1, 5, 20, h.len() - 1] {
            assert_eq!(sniff(&h[..cut]), Sniff::More, "cut at {cut}");
        }
        assert_eq!(sniff(&hello(None)), Sniff::NoName);
    }

    #[test]
    fn a_hello_split_over_two_records_is_put_together() {
        let h = hello(Some("a.test"));
        let hs = &h[5..];
        let (x, y) = hs.split_at(10);
        let mut two = Vec::new();
        for part in [x, y] {
            two.extend_from_slice(&[0x16, 3, 1]);
            two.extend_from_slice(&(part.len() as u16).to_be_bytes());
            two.extend_from_slice(part);
        }
        assert_eq!(sniff(&two), Sniff::Name("a.test".into()));
    }

    #[test]
    fn lying_lengths_and_odd_names_give_no_name_and_no_panic() {
        let h = hello(Some("a.test"));
        for i in 0..h.len() {
            for v in [0u8, 0x7f, 0xff] {
                let mut m = h.clone();
                m[i] = v;
                let _ = sniff(&m);
            }
        }
        assert_eq!(sniff(&hello(Some("a b.test"))), Sniff::NoName);
        assert_eq!(sniff(&hello(Some("ä.test"))), Sniff::NoName);
        assert_eq!(sniff(&[0x16; 3 * MAX_SNIFF]), Sniff::NoName);
    }

    #[test]
    fn an_http_request_gives_its_host_without_the_port() {
        let r = b"GET / HTTP/1.1\r\nHost: Denied.Test:8080\r\nAccept: */*\r\n\r\n";
        assert_eq!(sniff(r), Sniff::Name("denied.test".into()));
        assert_eq!(sniff(&r[..20]), Sniff::More);
        assert_eq!(sniff(b"GET / HTTP/1.0\r\n\r\n"), Sniff::NoName);
        assert_eq!(
            sniff(b"GET / HTTP/1.1\r\nHost: 10.0.0.3\r\n\r\n"),
            Sniff::NoName
        );
        assert_eq!(sniff(b"SSH-2.0-OpenSSH\r\n"), Sniff::NoName);
        assert_eq!(sniff(b"\x00\x01binary"), Sniff::NoName);
    }
}
