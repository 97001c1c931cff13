//! `<name>.vm` DNS: the answer to one query packet, as a pure function over
//! a name lookup (the actor in `actors::dns_server` owns the socket).
//!
//! Packets are parsed and built by `hickory-proto`, never by hand. Every
//! packet comes from a guest or a host process and is untrusted: anything
//! that does not parse gets FORMERR (when it has a header to answer) or no
//! answer; responses are never answered (no loops between servers).

use std::net::Ipv4Addr;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{rdata, DNSClass, RData, Record, RecordType};

/// The zone we answer for.
pub const ZONE: &str = "vm";
/// Seconds a resolver may cache an answer: VMs come and go.
pub const TTL: u32 = 5;
/// Largest packet read (a query is far smaller; more is dropped unread).
pub const MAX_PACKET: usize = 1232;

/// The answer to `packet`, or `None` when it deserves none. `lookup` maps a
/// VM name (lowercase ASCII, already one label) to its address while it
/// runs.
pub fn answer(packet: &[u8], lookup: impl Fn(&str) -> Option<Ipv4Addr>) -> Option<Vec<u8>> {
    if packet.len() < 12 || packet.len() > MAX_PACKET {
        return None;
    }
    // QR set: a response (or garbage claiming to be one); never answered.
    if packet[2] & 0x80 != 0 {
        return None;
    }
    let id = u16::from_be_bytes([packet[0], packet[1]]);
    let msg = match Message::from_vec(packet) {
        Ok(m) => m,
        Err(_) => return encode(Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)),
    };
    if msg.metadata.op_code != OpCode::Query {
        return encode(reply_to(&msg, ResponseCode::NotImp));
    }
    let [q] = msg.queries.as_slice() else {
        return encode(reply_to(&msg, ResponseCode::FormErr));
    };
    let mut out = reply_to(&msg, ResponseCode::NoError);
    out.add_query(q.clone());
    match vm_name(q) {
        Zone::Other => out.metadata.response_code = ResponseCode::Refused,
        Zone::Apex => out.metadata.authoritative = true,
        Zone::Vm(name) => {
            out.metadata.authoritative = true;
            match lookup(&name) {
                None => out.metadata.response_code = ResponseCode::NXDomain,
                Some(ip) if q.query_type() == RecordType::A && q.query_class() == DNSClass::IN => {
                    out.add_answer(Record::from_rdata(
                        q.name().clone(),
                        TTL,
                        RData::A(rdata::A(ip)),
                    ));
                }
                // The name exists, with no record of that type.
                Some(_) => {}
            }
        }
    }
    encode(out)
}

enum Zone {
    /// `<name>.vm.`, the name lowercased.
    Vm(String),
    /// `vm.` itself, or deeper names under it (`a.b.vm.`) that never exist.
    Apex,
    Other,
}

fn vm_name(q: &Query) -> Zone {
    let name = q.name();
    let labels: Vec<&[u8]> = name.iter().collect();
    match labels.as_slice() {
        [zone] if zone.eq_ignore_ascii_case(ZONE.as_bytes()) => Zone::Apex,
        [vm, zone] if zone.eq_ignore_ascii_case(ZONE.as_bytes()) => {
            match std::str::from_utf8(vm) {
                Ok(s) if s.is_ascii() => Zone::Vm(s.to_ascii_lowercase()),
                // Not a name banger ever gives a VM.
                _ => Zone::Vm(String::new()),
            }
        }
        [.., zone] if zone.eq_ignore_ascii_case(ZONE.as_bytes()) => Zone::Vm(String::new()),
        _ => Zone::Other,
    }
}

fn reply_to(q: &Message, code: ResponseCode) -> Message {
    let mut m = Message::new(q.metadata.id, MessageType::Response, q.metadata.op_code);
    m.metadata.recursion_desired = q.metadata.recursion_desired;
    m.metadata.response_code = code;
    m
}

fn encode(m: Message) -> Option<Vec<u8>> {
    m.to_vec().ok()
}

/// Answers per source address per second: a guest that floods the server
/// is dropped past it, and the others are still answered.
pub const PER_SOURCE_PER_SEC: u32 = 200;

/// A per-source budget of answers per second.
pub struct Limiter {
    per_sec: u32,
    second: u64,
    counts: std::collections::HashMap<std::net::IpAddr, u32>,
}

impl Limiter {
    pub fn new(per_sec: u32) -> Limiter {
        Limiter {
            per_sec,
            second: 0,
            counts: Default::default(),
        }
    }

    /// Whether `src` may have another answer in second `now_secs`.
    pub fn allow(&mut self, src: std::net::IpAddr, now_secs: u64) -> bool {
        if now_secs != self.second {
            self.second = now_secs;
            self.counts.clear();
        }
        // Sources are the bridge's guests (each sends only as itself) and
        // the host: a few; a map past this is refused rather than grown.
        if self.counts.len() >= 4096 && !self.counts.contains_key(&src) {
            return false;
        }
        let c = self.counts.entry(src).or_insert(0);
        if *c >= self.per_sec {
            return false;
        }
        *c += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_flooding_source_is_cut_off_and_the_others_still_answered() {
        let mut l = super::Limiter::new(3);
        let (a, b): (std::net::IpAddr, std::net::IpAddr) =
            ("172.16.0.2".parse().unwrap(), "172.16.0.3".parse().unwrap());
        let got: Vec<bool> = (0..5).map(|_| l.allow(a, 10)).collect();
        assert_eq!(got, [true, true, true, false, false]);
        assert!(l.allow(b, 10), "another guest is not starved");
        assert!(l.allow(a, 11), "the next second starts afresh");
    }

    use super::*;
    use hickory_proto::rr::Name;

    fn query(name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 0x1234;
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        m.to_vec().unwrap()
    }

    fn lookup(name: &str) -> Option<Ipv4Addr> {
        (name == "dev").then_some(Ipv4Addr::new(172, 16, 0, 5))
    }

    fn ask(p: &[u8]) -> Message {
        Message::from_vec(&answer(p, lookup).expect("an answer")).unwrap()
    }

    #[test]
    fn a_running_vm_has_an_a_record_and_others_do_not_exist() {
        let r = ask(&query("dev.vm.", RecordType::A));
        assert_eq!(r.metadata.id, 0x1234);
        assert_eq!(r.metadata.message_type, MessageType::Response);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.metadata.authoritative);
        assert_eq!(r.answers.len(), 1);
        assert_eq!(
            r.answers[0].data,
            RData::A(rdata::A(Ipv4Addr::new(172, 16, 0, 5)))
        );
        assert_eq!(r.answers[0].ttl, TTL);
        // Case does not matter.
        let r = ask(&query("DeV.Vm.", RecordType::A));
        assert_eq!(r.answers.len(), 1);
        for name in ["gone.vm.", "a.dev.vm."] {
            let r = ask(&query(name, RecordType::A));
            assert_eq!(r.metadata.response_code, ResponseCode::NXDomain, "{name}");
            assert!(r.answers.is_empty());
        }
    }

    #[test]
    fn other_types_get_no_data_and_other_zones_are_refused() {
        let r = ask(&query("dev.vm.", RecordType::AAAA));
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.answers.is_empty());
        let r = ask(&query("vm.", RecordType::SOA));
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        let r = ask(&query("example.com.", RecordType::A));
        assert_eq!(r.metadata.response_code, ResponseCode::Refused);
        assert!(r.answers.is_empty());
    }

    #[test]
    fn garbage_gets_formerr_or_nothing_and_responses_are_never_answered() {
        assert!(answer(b"", lookup).is_none());
        assert!(answer(&[0u8; 11], lookup).is_none());
        let mut resp = query("dev.vm.", RecordType::A);
        resp[2] |= 0x80;
        assert!(answer(&resp, lookup).is_none(), "no answer to a response");
        let mut bad = query("dev.vm.", RecordType::A);
        bad.truncate(bad.len() - 3);
        let r = ask(&bad);
        assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
        assert_eq!(r.metadata.id, 0x1234);
        assert!(answer(&vec![0u8; MAX_PACKET + 1], lookup).is_none());
    }

    /// Random and mutated packets: never a panic, never an answer larger
    /// than a UDP reply may be, never an answer to a response.
    #[test]
    fn fuzzed_packets_never_panic() {
        use rand::RngExt;
        let mut rng = rand::rng();
        let seeds = [
            query("dev.vm.", RecordType::A),
            query("x.example.com.", RecordType::MX),
        ];
        for i in 0..50_000 {
            let mut p = if i % 3 == 0 {
                let n = rng.random_range(0..80);
                (0..n).map(|_| rng.random()).collect::<Vec<u8>>()
            } else {
                let mut p = seeds[i % 2].clone();
                for _ in 0..rng.random_range(1..6) {
                    let at = rng.random_range(0..p.len());
                    p[at] = rng.random();
                }
                if rng.random_bool(0.2) {
                    p.truncate(rng.random_range(0..p.len()));
                }
                p
            };
            if rng.random_bool(0.05) {
                let extra: Vec<u8> = (0..rng.random_range(0..64)).map(|_| rng.random()).collect();
                p.extend(extra);
            }
            if let Some(a) = answer(&p, lookup) {
                assert!(a.len() <= 512, "answer of {} bytes", a.len());
                assert!(p.len() >= 12 && p[2] & 0x80 == 0);
            }
        }
    }
}
