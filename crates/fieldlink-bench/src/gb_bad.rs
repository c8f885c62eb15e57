//! Bad input beside a storm, for `fieldlink-bench gb --bad-input` (issue 17, item 8): the
//! same three kinds the test `gb28181_load` uses, at a fixed pace so runs compare —
//! garbage datagrams from 127.0.0.2 (10 000 per second, half random bytes, half a
//! REGISTER with a broken Via), REGISTERs from 127.0.0.3 for one device id with a wrong
//! password (a new try every 10 ms), and 1 000 idle SIP-over-TCP connections from
//! 127.0.0.4–7 that never send a byte.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use fieldlink_gb28181::digest::register_authorization;
use fieldlink_gb28181::sip::{self, Dialog, Message, StartLine};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

/// Garbage datagrams per second.
pub const GARBAGE_RATE: u64 = 10_000;
/// Idle TCP connections held.
pub const IDLE_TCP: usize = 1_000;

fn local(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

#[derive(Default)]
struct Counts {
    garbage: AtomicU64,
    guesses: AtomicU64,
    /// Guesses answered 403 (refused; after the ban without a challenge).
    refused: AtomicU64,
    /// Guesses answered anything else (200 would be a break-in).
    other: AtomicU64,
}

/// The bad input while it runs; [`BadInput::stop`] ends it and says what was sent.
pub struct BadInput {
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    idle: Vec<TcpStream>,
}

impl BadInput {
    pub async fn start(server: SocketAddr) -> anyhow::Result<BadInput> {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let mut idle = Vec::with_capacity(IDLE_TCP);
        for i in 0..IDLE_TCP {
            let s = TcpSocket::new_v4()?;
            let from = SocketAddr::new(local(4 + (i / 250) as u8), 0);
            s.bind(from)?;
            idle.push(
                s.connect(server)
                    .await
                    .with_context(|| format!("idle TCP connection {i} from {from}"))?,
            );
        }
        let garbage = UdpSocket::bind(SocketAddr::new(local(2), 0)).await?;
        let guesser = UdpSocket::bind(SocketAddr::new(local(3), 0)).await?;
        let tasks = vec![
            tokio::spawn(send_garbage(garbage, server, stop.clone(), counts.clone())),
            tokio::spawn(guess(guesser, server, stop.clone(), counts.clone())),
        ];
        Ok(BadInput {
            stop,
            counts,
            tasks,
            idle,
        })
    }

    /// Stops it; returns a line saying what was sent and how it was answered.
    pub async fn stop(self) -> String {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let c = &self.counts;
        let line = format!(
            "bad input beside it: {} garbage datagrams, {} wrong-password registrations ({} refused 403, {} otherwise), {} idle TCP connections",
            c.garbage.load(Ordering::Relaxed),
            c.guesses.load(Ordering::Relaxed),
            c.refused.load(Ordering::Relaxed),
            c.other.load(Ordering::Relaxed),
            self.idle.len()
        );
        drop(self.idle);
        line
    }
}

async fn send_garbage(u: UdpSocket, server: SocketAddr, stop: Arc<AtomicBool>, c: Arc<Counts>) {
    let per_ms = GARBAGE_RATE / 1000;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        for _ in 0..per_ms / 2 {
            n += 1;
            let junk: Vec<u8> = (0..200u32)
                .map(|i| (i as u8).wrapping_mul(n as u8 | 1))
                .collect();
            let _ = u.send_to(&junk, server).await;
            let _ = u
                .send_to(b"REGISTER sip:x SIP/2.0\r\nVia: nonsense\r\n\r\n", server)
                .await;
            c.garbage.fetch_add(2, Ordering::Relaxed);
        }
    }
}

/// The answer to a request on `u`, within 500 ms.
async fn answer(u: &UdpSocket, buf: &mut [u8]) -> Option<(u16, Option<String>)> {
    let (n, _) = tokio::time::timeout(Duration::from_millis(500), u.recv_from(buf))
        .await
        .ok()?
        .ok()?;
    let m = Message::parse(&buf[..n]).ok()?;
    match m.start {
        StartLine::Response { code, .. } => {
            let nonce = m
                .header("www-authenticate")
                .and_then(|h| sip::challenge_param(h, "nonce"))
                .map(str::to_string);
            Some((code, nonce))
        }
        StartLine::Request { .. } => None,
    }
}

async fn guess(u: UdpSocket, server: SocketAddr, stop: Arc<AtomicBool>, c: Arc<Counts>) {
    const REALM: &str = "3402000000";
    let id = "34020000001329999999";
    let Ok(me) = u.local_addr() else { return };
    let mut buf = vec![0u8; 65_536];
    let mut cseq = 0;
    while !stop.load(Ordering::Relaxed) {
        let d = Dialog {
            remote_uri: format!("sip:34020000002000000001@{REALM}"),
            local_uri: format!("sip:{id}@{REALM}"),
            local_tag: sip::new_tag(),
            remote_tag: None,
            call_id: sip::new_call_id(me.ip()),
            via: me,
            transport: "UDP",
        };
        let register = |cseq: u32, auth: Option<String>| {
            let mut headers = vec![
                ("Contact", format!("<sip:{id}@{me}>")),
                ("Expires", "3600".to_string()),
            ];
            headers.extend(auth.map(|a| ("Authorization", a)));
            sip::request("REGISTER", &d, cseq, &sip::branch(), &headers, None)
        };
        cseq += 1;
        let _ = u.send_to(&register(cseq, None), server).await;
        let mut code = answer(&u, &mut buf).await;
        if let Some((401, Some(nonce))) = &code {
            let auth = register_authorization(id, REALM, "guess", &d.remote_uri, nonce);
            cseq += 1;
            let _ = u.send_to(&register(cseq, Some(auth)), server).await;
            code = answer(&u, &mut buf).await;
        }
        match code {
            Some((403, _)) => {
                c.refused.fetch_add(1, Ordering::Relaxed);
            }
            Some(_) => {
                c.other.fetch_add(1, Ordering::Relaxed);
            }
            None => {}
        }
        c.guesses.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
