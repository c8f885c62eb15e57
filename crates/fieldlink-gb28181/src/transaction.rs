//! Client transactions over UDP (RFC 3261 §17.1), without I/O: a request the platform sent
//! is sent again at T1, 2·T1, 4·T1… (capped at T2 for non-INVITE) until a response comes,
//! and given up after 64·T1. A provisional response stops an INVITE's retransmissions; a
//! final one ends any transaction. Over TCP nothing is retransmitted.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::sip::{Message, StartLine};

pub const T1: Duration = Duration::from_millis(500);
pub const T2: Duration = Duration::from_secs(4);
/// Transactions kept at most (a flood of unanswered requests cannot grow memory).
const MAX_PENDING: usize = 10_000;

/// Identifies a transaction: Call-ID, CSeq number and method.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TxKey {
    pub call_id: String,
    pub cseq: u32,
    pub method: String,
}

impl TxKey {
    /// The key of a request we built ourselves, read from its `Call-ID` and `CSeq` lines
    /// without parsing the whole message (every query of a storm comes through here);
    /// anything unusual falls back to [`Message::parse`].
    pub fn of_bytes(bytes: &[u8]) -> Option<TxKey> {
        let quick = || {
            let text = std::str::from_utf8(bytes).ok()?;
            let head = &text[..text.find("\r\n\r\n")?];
            let (mut call_id, mut cseq) = (None, None);
            for line in head.split("\r\n").skip(1) {
                let (name, value) = line.split_once(':')?;
                let name = name.trim();
                if name.eq_ignore_ascii_case("call-id") || name.eq_ignore_ascii_case("i") {
                    call_id = Some(value.trim());
                } else if name.eq_ignore_ascii_case("cseq") {
                    let (n, method) = value.trim().split_once(' ')?;
                    cseq = Some((n.trim().parse::<u32>().ok()?, method.trim()));
                }
            }
            let (n, method) = cseq?;
            Some(TxKey {
                call_id: call_id?.to_string(),
                cseq: n,
                method: method.to_string(),
            })
        };
        quick().or_else(|| TxKey::of(&Message::parse(bytes).ok()?))
    }

    /// The transaction a request or response belongs to.
    pub fn of(m: &Message) -> Option<TxKey> {
        let (cseq, method) = m.cseq()?;
        Some(TxKey {
            call_id: m.header("call-id")?.to_string(),
            cseq,
            method: method.to_string(),
        })
    }
}

#[derive(Debug)]
struct Pending {
    key: TxKey,
    bytes: Vec<u8>,
    to: SocketAddr,
    next: Instant,
    interval: Duration,
    give_up: Instant,
    /// Still retransmitting (an INVITE stops at its first provisional response).
    resend: bool,
}

#[derive(Debug, Default)]
pub struct Transactions {
    pending: Vec<Pending>,
}

impl Transactions {
    pub fn new() -> Transactions {
        Transactions::default()
    }

    /// A request was just sent to `to` over UDP. Requests that do not parse are not
    /// tracked.
    pub fn sent(&mut self, bytes: &[u8], to: SocketAddr, now: Instant) {
        let Some(key) = TxKey::of_bytes(bytes) else {
            return;
        };
        if key.method == "ACK" {
            return; // never answered, never retransmitted on its own
        }
        if self.pending.len() >= MAX_PENDING {
            self.pending.remove(0);
        }
        self.pending.retain(|p| p.key != key);
        self.pending.push(Pending {
            key,
            bytes: bytes.to_vec(),
            to,
            next: now + T1,
            interval: T1,
            give_up: now + T1 * 64,
            resend: true,
        });
    }

    /// A response arrived; returns whether it belonged to a pending transaction.
    pub fn answered(&mut self, response: &Message) -> bool {
        let StartLine::Response { code, .. } = response.start else {
            return false;
        };
        let Some(key) = TxKey::of(response) else {
            return false;
        };
        let Some(i) = self.pending.iter().position(|p| p.key == key) else {
            return false;
        };
        if code >= 200 {
            self.pending.remove(i);
        } else if key.method == "INVITE" {
            self.pending[i].resend = false;
        }
        true
    }

    /// What to send again now, and the transactions that timed out (no final answer).
    pub fn poll(&mut self, now: Instant) -> (Vec<(Vec<u8>, SocketAddr)>, Vec<TxKey>) {
        let mut again = Vec::new();
        let mut dead = Vec::new();
        self.pending.retain_mut(|p| {
            if now >= p.give_up {
                dead.push(p.key.clone());
                return false;
            }
            if p.resend && now >= p.next {
                again.push((p.bytes.clone(), p.to));
                p.interval = if p.key.method == "INVITE" {
                    p.interval * 2
                } else {
                    (p.interval * 2).min(T2)
                };
                p.next = now + p.interval;
            }
            true
        });
        (again, dead)
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, cseq: u32) -> Vec<u8> {
        format!(
            "{method} sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1\r\nCall-ID: c1\r\n\
             CSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
        )
        .into_bytes()
    }

    fn resp(code: u16, method: &str, cseq: u32) -> Message {
        Message::parse(
            format!(
                "SIP/2.0 {code} X\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1\r\nCall-ID: c1\r\n\
                 CSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn resends_at_doubling_intervals_capped_at_t2_then_gives_up() {
        let mut t = Transactions::new();
        let to: SocketAddr = "127.0.0.1:5060".parse().unwrap();
        let t0 = Instant::now();
        t.sent(&req("MESSAGE", 1), to, t0);
        let mut at = Vec::new();
        let mut now = t0;
        while now < t0 + Duration::from_secs(40) {
            now += Duration::from_millis(100);
            let (again, dead) = t.poll(now);
            if !again.is_empty() {
                at.push((now - t0).as_millis());
            }
            if !dead.is_empty() {
                assert_eq!(dead[0].method, "MESSAGE");
                break;
            }
        }
        // 0.5, 1.5, 3.5, 7.5 (capped at 4 s from here), 11.5, ...
        assert_eq!(&at[..5], &[500, 1500, 3500, 7500, 11500]);
        assert!(t.is_empty());
        assert!((now - t0) >= Duration::from_secs(32));
    }

    #[test]
    fn provisional_stops_invite_resends_and_final_ends_it() {
        let mut t = Transactions::new();
        let to: SocketAddr = "127.0.0.1:5060".parse().unwrap();
        let t0 = Instant::now();
        t.sent(&req("INVITE", 1), to, t0);
        assert!(t.answered(&resp(100, "INVITE", 1)));
        assert!(t.poll(t0 + Duration::from_secs(2)).0.is_empty());
        assert!(t.answered(&resp(200, "INVITE", 1)));
        assert!(t.is_empty());
        // A response to something else is not ours.
        assert!(!t.answered(&resp(200, "BYE", 2)));
        // ACK is not tracked.
        t.sent(&req("ACK", 1), to, t0);
        assert!(t.is_empty());
    }
}

#[cfg(test)]
mod built {
    use super::*;
    use crate::sip::{branch, request, Dialog};

    #[test]
    fn a_built_query_is_tracked() {
        let d = Dialog {
            remote_uri: "sip:34020000001320000001@3402000000".into(),
            local_uri: "sip:34020000002000000001@3402000000".into(),
            local_tag: "a".into(),
            remote_tag: None,
            call_id: "x@127.0.0.1".into(),
            via: "127.0.0.1:5060".parse().unwrap(),
            transport: "UDP",
        };
        let body = crate::manscdp::query("Catalog", 1, "34020000001320000001");
        let r = request(
            "MESSAGE",
            &d,
            1,
            &branch(),
            &[],
            Some(("Application/MANSCDP+xml", &body)),
        );
        let mut t = Transactions::new();
        t.sent(&r, "127.0.0.1:5070".parse().unwrap(), Instant::now());
        assert_eq!(t.len(), 1, "{:?}", Message::parse(&r));
        // Read from the two lines, the same key as a whole parse gives.
        let m = Message::parse(&r).unwrap();
        assert_eq!(TxKey::of_bytes(&r), TxKey::of(&m));
    }
}
