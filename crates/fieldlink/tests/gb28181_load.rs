//! The GB28181 platform under load it must shrug off (issue 17): bad input — while one
//! source floods the SIP port with garbage, another keeps registering with wrong
//! passwords and 1 000 TCP connections sit idle, good devices still register at once (the
//! garbage source ends up ignored unread, the guessing source banned, the idle
//! connections closed, a source over the per-address connection limit refused) — and a
//! store that hangs, which delays no SIP answer. Every source is a 127.0.0.0/8 address.

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::gb::*;

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

/// The SIP path never waits on the store: with the server's database held locked by
/// another connection (every write waits, then fails), 200 new devices register and then
/// register again with every answer within 500 ms, and three cameras come online and
/// join the hub; once the lock goes, the cameras' records are stored. (WebSocket logins
/// do wait for the store: they read the device's record.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_store_delays_no_sip_answer() {
    use sqlx::Connection;
    let (s, sip) = gb_server("", &[]);
    let server: SocketAddr = sip.parse().unwrap();
    sqlx::any::install_default_drivers();
    let url = format!("sqlite://{}", s.dir.join("data/fieldlink.db").display());
    let mut lock = sqlx::AnyConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut lock)
        .await
        .unwrap();
    let locked = Instant::now();

    let cameras: Vec<KillOnDrop> = (1..=3)
        .map(|n| gb_device(&sip, &["--id", &format!("3402000000132000010{n}")]))
        .collect();
    let slowest = tokio::task::spawn_blocking(move || {
        let mut slowest = Duration::ZERO;
        for pass in 0..2 {
            for i in 0..200 {
                let id = format!("340200000013200{i:05}");
                let t =
                    register_with_digest(server, local(1), &id, "12345678").unwrap_or_else(|| {
                        panic!("pass {pass}, device {i}: an answer took over 500 ms")
                    });
                assert_eq!(t.code, 200, "pass {pass}, device {i}");
                slowest = slowest.max(t.took);
            }
        }
        slowest
    })
    .await
    .unwrap();
    eprintln!("400 registrations with the store locked; slowest answer {slowest:?}");
    // The cameras are online, their catalogs in and they are field devices in the hub
    // (the admin view of GB28181 devices reads no store).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, list) = s.api("GET", "/api/v1/gb28181/devices", None);
        let joined = list.as_array().map_or(0, |l| {
            l.iter()
                .filter(|d| d["online"] == true && d["field_id"].is_string())
                .count()
        });
        if joined == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "cameras not in the hub: {list}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Held past one busy timeout (5 s), so the store's writes failed at least once.
    tokio::time::sleep(Duration::from_secs(6).saturating_sub(locked.elapsed())).await;
    sqlx::query("COMMIT").execute(&mut lock).await.unwrap();
    drop(lock);

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, list) = s.api("GET", "/api/v1/projects/p/devices", None);
        let stored = (1..=3)
            .filter(|n| {
                let want = format!("3402000000132000010{n}");
                list.as_array()
                    .is_some_and(|l| l.iter().any(|d| d["device_id"] == want.as_str()))
            })
            .count();
        if stored == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "camera records not stored: {list}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(cameras);
}
