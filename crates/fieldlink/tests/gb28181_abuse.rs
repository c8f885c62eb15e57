//! Bad input under load (issue 17): while one source floods the SIP port with garbage,
//! another keeps registering with wrong passwords and 1 000 TCP connections sit idle,
//! good devices still register at once. The garbage source ends up ignored unread, the
//! guessing source banned, the idle connections closed, and a source over the
//! per-address connection limit refused. Every source is a 127.0.0.0/8 address.

mod common;

use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::gb::*;
use fieldlink_gb28181::digest::expected_response;
use fieldlink_gb28181::sip::{self, Dialog, Message, StartLine};

const REALM: &str = "3402000000";

fn local(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, n])
}

/// One REGISTER of device `id` from `socket` to `server` (with `auth`, if given).
fn register(
    socket: &UdpSocket,
    server: SocketAddr,
    dialog: &Dialog,
    cseq: u32,
    auth: Option<String>,
) {
    let mut extra = vec![
        ("Contact", format!("<{}>", dialog.local_uri)),
        ("Expires", "3600".to_string()),
    ];
    if let Some(a) = auth {
        extra.push(("Authorization", a));
    }
    let r = sip::request("REGISTER", dialog, cseq, &sip::branch(), &extra, None);
    socket.send_to(&r, server).unwrap();
}

/// The next answer on `socket` to a REGISTER (other messages, e.g. the platform's
/// queries, are skipped), or None after `wait`.
fn answer(socket: &UdpSocket, wait: Duration) -> Option<Message> {
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 8192];
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        socket
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .ok()?;
        let (n, _) = socket.recv_from(&mut buf).ok()?;
        let Ok(m) = Message::parse(&buf[..n]) else {
            continue;
        };
        if matches!(m.start, StartLine::Response { .. })
            && m.cseq().map(|(_, method)| method) == Some("REGISTER")
        {
            return Some(m);
        }
    }
}

fn code(m: &Message) -> u16 {
    match m.start {
        StartLine::Response { code, .. } => code,
        _ => 0,
    }
}

/// What one registration attempt got.
struct Tried {
    code: u16,
    /// The longest wait for an answer.
    took: Duration,
    /// The first REGISTER was challenged (401) rather than refused at once.
    challenged: bool,
}

/// REGISTER → 401 → REGISTER with digest; None if an answer took longer than 500 ms
/// (SIPp would have retransmitted).
fn register_with_digest(
    server: SocketAddr,
    from: IpAddr,
    id: &str,
    password: &str,
) -> Option<Tried> {
    let socket = UdpSocket::bind(SocketAddr::new(from, 0)).unwrap();
    let me = socket.local_addr().unwrap();
    let dialog = Dialog {
        remote_uri: format!("sip:34020000002000000001@{REALM}"),
        local_uri: format!("sip:{id}@{REALM}"),
        local_tag: sip::new_tag(),
        remote_tag: None,
        call_id: sip::new_call_id(from),
        via: me,
        transport: "UDP",
    };
    let limit = Duration::from_millis(500);
    let t = Instant::now();
    register(&socket, server, &dialog, 1, None);
    let challenge = answer(&socket, limit)?;
    let first = t.elapsed();
    if code(&challenge) != 401 {
        return Some(Tried {
            code: code(&challenge),
            took: first,
            challenged: false,
        });
    }
    let h = challenge.header("www-authenticate").unwrap_or_default();
    let nonce = sip::challenge_param(h, "nonce").unwrap_or_default();
    let uri = &dialog.remote_uri;
    let resp = expected_response(id, REALM, password, "REGISTER", uri, nonce, None);
    let auth = format!(
        "Digest username=\"{id}\",realm=\"{REALM}\",nonce=\"{nonce}\",uri=\"{uri}\",response=\"{resp}\",algorithm=MD5"
    );
    let t = Instant::now();
    register(&socket, server, &dialog, 2, Some(auth));
    let done = answer(&socket, limit)?;
    Some(Tried {
        code: code(&done),
        took: first.max(t.elapsed()),
        challenged: true,
    })
}

#[test]
fn good_devices_register_through_garbage_guessing_and_idle_connections() {
    let (s, sip) = gb_server("", &[]);
    let server: SocketAddr = sip.parse().unwrap();
    let stop = Arc::new(AtomicBool::new(false));

    // 127.0.0.2: garbage, as fast as one thread sends it.
    let garbage = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let u = UdpSocket::bind(SocketAddr::new(local(2), 0)).unwrap();
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let junk: Vec<u8> = (0..200)
                    .map(|i| (i as u8).wrapping_mul(sent as u8 | 1))
                    .collect();
                let _ = u.send_to(&junk, server);
                let _ = u.send_to(b"REGISTER sip:x SIP/2.0\r\nVia: nonsense\r\n\r\n", server);
                sent += 2;
                if sent.is_multiple_of(32) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            sent
        })
    };
    // 127.0.0.3: one device id, wrong passwords, again and again.
    let guessing = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut codes = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if let Some(t) =
                    register_with_digest(server, local(3), "34020000001329999999", "guess")
                {
                    codes.push((t.code, t.challenged));
                }
            }
            codes
        })
    };
    // 127.0.0.4..7: 1 000 idle TCP connections (250 each); 127.0.0.8: one over the
    // per-address limit of 256.
    let mut idle = Vec::new();
    for n in 4..8u8 {
        for _ in 0..250 {
            let sock =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            sock.bind(&SocketAddr::new(local(n), 0).into()).unwrap();
            sock.connect(&server.into()).unwrap();
            idle.push(TcpStream::from(sock));
        }
    }
    let mut over = Vec::new();
    for _ in 0..257 {
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.bind(&SocketAddr::new(local(8), 0).into()).unwrap();
        sock.connect(&server.into()).unwrap();
        over.push(TcpStream::from(sock));
    }
    let opened = Instant::now();

    // Good devices, one after another, from 127.0.0.1.
    let mut slowest = Duration::ZERO;
    for i in 0..200 {
        let id = format!("340200000013200{i:05}");
        let r = register_with_digest(server, local(1), &id, "12345678");
        let t = r.unwrap_or_else(|| panic!("device {i}: an answer took over 500 ms"));
        assert_eq!(t.code, 200, "device {i}");
        slowest = slowest.max(t.took);
    }
    eprintln!("200 good devices registered; slowest answer {slowest:?}");

    // The 257th connection from 127.0.0.8 was closed at once (its read ends); the first
    // is still open.
    let ends = |c: &TcpStream, wait: Duration| {
        let mut c = c;
        c.set_read_timeout(Some(wait)).unwrap();
        matches!(c.read(&mut [0u8; 16]), Ok(0))
    };
    assert!(
        ends(&over[256], Duration::from_secs(2)),
        "the 257th connection from one address was not refused"
    );
    assert!(
        !ends(&over[0], Duration::from_millis(200)),
        "the first connection was closed early"
    );

    // The idle ones are closed after the first-message timeout (10 s).
    std::thread::sleep(Duration::from_secs(11).saturating_sub(opened.elapsed()));
    let closed = idle
        .iter()
        .filter(|c| ends(c, Duration::from_secs(2)))
        .count();
    assert_eq!(
        closed,
        idle.len(),
        "idle SIP-over-TCP connections left open"
    );

    stop.store(true, Ordering::Relaxed);
    let sent = garbage.join().unwrap();
    let codes = guessing.join().unwrap();
    // Every guess was refused, and the guesser was banned: its later tries get 403
    // without a challenge.
    assert!(codes.iter().all(|(c, _)| *c == 403), "{codes:?}");
    let banned = codes.iter().filter(|(_, challenged)| !challenged).count();
    assert!(
        banned >= 5 && !codes.last().is_some_and(|(_, ch)| *ch),
        "{codes:?}"
    );
    // The garbage source was ignored unread.
    let ignored = common::metrics::value(
        &common::metrics::scrape(&s),
        "fieldlink_gb28181_sip_ignored_total",
        &[],
    );
    eprintln!("garbage sent {sent}, ignored unread {ignored}");
    assert!(ignored > sent as f64 / 2.0, "{ignored} of {sent} ignored");
}
