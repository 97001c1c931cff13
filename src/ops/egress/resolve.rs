//! Resolving an allowed name for a policed guest on the host: its question
//! is asked again (a fresh id, the one question) of the host's resolvers,
//! and the answer, checked against the question, goes back under the
//! guest's id. The A records in it are what the VM may then connect to.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, Query};
use hickory_proto::rr::RData;

/// How long one resolver is given.
pub const PER_SERVER: Duration = Duration::from_secs(3);

/// The host's resolvers: the configured ones, else `/etc/resolv.conf`'s
/// (loopback ones too: the daemon runs on the host).
pub fn upstreams(configured: &[SocketAddr]) -> Vec<SocketAddr> {
    if !configured.is_empty() {
        return configured.to_vec();
    }
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .take(3)
        .collect()
}

/// The answer to `q` from the first resolver that gives one.
pub async fn ask(q: &Query, servers: &[SocketAddr]) -> Result<Message, String> {
    let mut last = "no resolver configured (egress.resolvers, /etc/resolv.conf)".to_string();
    for s in servers {
        match tokio::time::timeout(PER_SERVER, ask_one(q, *s)).await {
            Ok(Ok(m)) => return Ok(m),
            Ok(Err(e)) => last = format!("{s}: {e}"),
            Err(_) => last = format!("{s}: no answer within {PER_SERVER:?}"),
        }
    }
    Err(last)
}

async fn ask_one(q: &Query, server: SocketAddr) -> Result<Message, String> {
    use rand::RngExt;
    let id: u16 = rand::rng().random();
    let mut m = Message::query();
    m.metadata.id = id;
    m.metadata.recursion_desired = true;
    m.add_query(q.clone());
    let bytes = m.to_vec().map_err(|e| e.to_string())?;
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    let sock = tokio::net::UdpSocket::bind(bind)
        .await
        .map_err(|e| e.to_string())?;
    sock.connect(server).await.map_err(|e| e.to_string())?;
    sock.send(&bytes).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 4096];
    loop {
        let n = sock.recv(&mut buf).await.map_err(|e| e.to_string())?;
        let Ok(r) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        // Only the answer to this question (a stray or forged packet is
        // skipped; the caller's deadline bounds the wait).
        if r.metadata.id == id
            && r.metadata.message_type == MessageType::Response
            && r.queries.len() == 1
            && r.queries[0].name().eq_case(q.name())
            && r.queries[0].query_type() == q.query_type()
        {
            return Ok(r);
        }
    }
}

/// What a policed guest's question asks for.
#[derive(Debug)]
pub enum Question {
    /// An allowed name: ask the host's resolvers.
    Allowed {
        msg: Box<Message>,
        query: Query,
        name: String,
    },
    /// A name the policy does not allow: refused (and logged).
    Refused { name: String },
}

/// Judges a policed guest's packet: `None` when it is not a plain query
/// of a name outside `vm.` (those are answered as for any guest).
pub fn judge(packet: &[u8], policy: &crate::domain::egress::Allowances) -> Option<Question> {
    use hickory_proto::op::OpCode;
    if packet.len() > crate::ops::dns::MAX_PACKET {
        return None;
    }
    let msg = Message::from_vec(packet).ok()?;
    if msg.metadata.message_type != MessageType::Query || msg.metadata.op_code != OpCode::Query {
        return None;
    }
    let [q] = msg.queries.as_slice() else {
        return None;
    };
    let labels: Vec<&[u8]> = q.name().iter().collect();
    if labels
        .last()
        .is_some_and(|z| z.eq_ignore_ascii_case(crate::ops::dns::ZONE.as_bytes()))
    {
        return None;
    }
    // Printable names only in the log; anything else is refused as `?`.
    let name = labels
        .iter()
        .map(|l| {
            std::str::from_utf8(l)
                .ok()
                .filter(|s| s.is_ascii() && !s.contains(|c: char| c.is_ascii_control()))
        })
        .collect::<Option<Vec<_>>>()
        .map(|v| v.join(".").to_ascii_lowercase())
        .unwrap_or_else(|| "?".into());
    let query = q.clone();
    if policy.allows_host(&name) {
        Some(Question::Allowed {
            msg: Box::new(msg),
            query,
            name,
        })
    } else {
        Some(Question::Refused { name })
    }
}

/// SERVFAIL for the guest's question (the host could not resolve it).
pub fn failed(guest: &Message) -> Option<Vec<u8>> {
    let mut m = Message::new(
        guest.metadata.id,
        MessageType::Response,
        guest.metadata.op_code,
    );
    m.metadata.recursion_desired = guest.metadata.recursion_desired;
    m.metadata.response_code = hickory_proto::op::ResponseCode::ServFail;
    m.add_query(guest.queries.first()?.clone());
    m.to_vec().ok()
}

/// The IPv4 addresses in an answer, with their TTLs.
pub fn addresses(m: &Message) -> Vec<(Ipv4Addr, u32)> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some((a.0, r.ttl)),
            _ => None,
        })
        .take(64)
        .collect()
}

/// The upstream answer as the guest's: its id and flags, the upstream's
/// code and records.
pub fn for_guest(guest: &Message, up: &Message) -> Option<Vec<u8>> {
    let mut m = Message::new(
        guest.metadata.id,
        MessageType::Response,
        guest.metadata.op_code,
    );
    m.metadata.recursion_desired = guest.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.metadata.response_code = up.metadata.response_code;
    m.add_query(guest.queries.first()?.clone());
    for r in up.answers.iter().take(64) {
        m.add_answer(r.clone());
    }
    m.to_vec().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::{Name, RecordType};

    fn query(name: &str) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 7;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        m.to_vec().unwrap()
    }

    fn policy() -> crate::domain::egress::Allowances {
        let mut p = crate::domain::egress::EgressPolicy::default();
        p.allow(&["allowed.test".into(), "*.cdn.test".into()], &[])
            .unwrap();
        p.allowances()
    }

    #[test]
    fn a_policed_question_is_allowed_refused_or_left_to_the_vm_zone() {
        let p = policy();
        assert!(
            matches!(judge(&query("Allowed.Test."), &p), Some(Question::Allowed { name, .. }) if name == "allowed.test")
        );
        assert!(matches!(
            judge(&query("x.cdn.test."), &p),
            Some(Question::Allowed { .. })
        ));
        assert!(
            matches!(judge(&query("denied.test."), &p), Some(Question::Refused { name }) if name == "denied.test")
        );
        // `<name>.vm` is answered as for any guest; garbage and responses
        // are not questions.
        assert!(judge(&query("dev.vm."), &p).is_none());
        assert!(judge(b"\x00\x07garbage", &p).is_none());
        let mut resp = Message::from_vec(&query("allowed.test.")).unwrap();
        resp.metadata.message_type = MessageType::Response;
        assert!(judge(&resp.to_vec().unwrap(), &p).is_none());
        assert!(judge(&vec![0u8; crate::ops::dns::MAX_PACKET + 1], &p).is_none());
    }

    #[test]
    fn an_answer_goes_back_under_the_guests_id_with_its_addresses() {
        let guest = Message::from_vec(&query("allowed.test.")).unwrap();
        let mut up = Message::new(999, MessageType::Response, hickory_proto::op::OpCode::Query);
        up.add_query(guest.queries[0].clone());
        up.add_answer(hickory_proto::rr::Record::from_rdata(
            Name::from_ascii("allowed.test.").unwrap(),
            42,
            RData::A(hickory_proto::rr::rdata::A("10.77.0.2".parse().unwrap())),
        ));
        assert_eq!(addresses(&up), [("10.77.0.2".parse().unwrap(), 42)]);
        let back = Message::from_vec(&for_guest(&guest, &up).unwrap()).unwrap();
        assert_eq!(back.metadata.id, 7);
        assert_eq!(back.answers.len(), 1);
        let failed = Message::from_vec(&failed(&guest).unwrap()).unwrap();
        assert_eq!(
            failed.metadata.response_code,
            hickory_proto::op::ResponseCode::ServFail
        );
    }
}
