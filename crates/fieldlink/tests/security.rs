//! SPEC §11: a failed login does not tell what exists (same answer, same time), and every
//! size limit is said to the sender before the close (WebSocket signalling, admin API
//! bodies, SIP over TCP).

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::gb::gb_server;
use common::*;
use fieldlink_auth::device_password;
use fieldlink_proto::signal::MAX_SIGNAL_BYTES;
use fieldlink_proto::{ClientMsg, Role, PROTOCOL_VERSION};
use fieldlink_sdk::{ErrorCode, FieldDevice};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_look_the_same_and_take_the_same_time() {
    // No throttle in the way: every try must reach the password check.
    let s = TestServer::start_with(
        "[login]\ndevice_free_failures = 100000\naddress_free_failures = 100000\n",
        &[],
    );
    s.standard();
    s.device("p", "keyonly", "field", "USEPROJECTKEYPWD");
    let later = now_minutes() + 60;
    let unregistered = device_password(KEY, "p/nobody", later);
    // (what is wrong, device id, password), each logging in as a field device.
    let cases: [(&str, &str, &str); 6] = [
        ("wrong password", "p/f", "nope"),
        ("unknown device", "p/nobody", "fpw"),
        ("unknown project", "nosuch/f", "fpw"),
        ("wrong role", "p/r1", "rpw"),
        ("key-derived only", "p/keyonly", "fpw"),
        ("may not auto-register", "p/nobody", &unregistered),
    ];
    const TRIES: usize = 15;
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    let mut answers = std::collections::HashSet::new();
    // Round robin, so that machine load falls on every case alike.
    for _ in 0..TRIES {
        for (i, (_, dev, pw)) in cases.iter().enumerate() {
            let cfg = s.cfg(dev, pw);
            let t = Instant::now();
            let e = FieldDevice::connect(cfg).await.err().expect("refused");
            times[i].push(t.elapsed().as_secs_f64() * 1000.0);
            answers.insert((e.code, e.message));
        }
    }
    assert_eq!(
        answers.len(),
        1,
        "every refusal must read the same: {answers:?}"
    );
    let (code, message) = answers.into_iter().next().unwrap();
    assert_eq!(code, ErrorCode::LoginFailed, "{message}");

    let medians: Vec<f64> = times
        .iter_mut()
        .map(|t| {
            t.sort_by(f64::total_cmp);
            t[t.len() / 2]
        })
        .collect();
    for ((what, ..), m) in cases.iter().zip(&medians) {
        eprintln!("{what}: median {m:.1} ms");
    }
    let (lo, hi) = medians
        .iter()
        .fold((f64::MAX, 0f64), |(lo, hi), &m| (lo.min(m), hi.max(m)));
    // A case that skipped the password hash would take a fraction of the others' time
    // (the hash is most of a login's cost).
    assert!(
        hi / lo < 1.5,
        "medians differ too much to be indistinguishable: {medians:?}"
    );
    // The metrics (behind the admin token) still tell the reasons apart.
    let (_, m) = raw_http_text(&s.http, "GET", "/metrics", "", Some(TOKEN));
    for reason in [
        "WRONG_PASSWORD",
        "UNKNOWN_DEVICE",
        "UNKNOWN_PROJECT",
        "WRONG_ROLE",
        "KEY_PASSWORD_REQUIRED",
    ] {
        assert!(m.contains(&format!("code=\"{reason}\"")), "{reason} in {m}");
    }
}

fn login_text(device: &str, password: &str) -> String {
    serde_json::to_string(&ClientMsg::Login {
        req: Some(0),
        version: PROTOCOL_VERSION,
        device_id: device.parse().unwrap(),
        password: password.into(),
        role: Role::Field,
        auto_permission: true,
        mode: "public".into(),
    })
    .unwrap()
}

/// Sends `msgs`, then reads until the server closes: the JSON messages it sent and the
/// close code.
async fn exchange(ws_url: &str, msgs: Vec<String>) -> (Vec<Value>, Option<u16>) {
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
    for m in msgs {
        ws.send(Message::text(m)).await.unwrap();
    }
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => got.push(serde_json::from_str(&t).unwrap()),
            Ok(Some(Ok(Message::Close(c)))) => return (got, c.map(|c| u16::from(c.code))),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => {
                eprintln!("client: {e}");
                return (got, None);
            }
            Ok(None) => return (got, None),
            Err(_) => panic!("the server did not close; it said {got:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_are_told_the_limit_before_the_close() {
    let s = TestServer::start();
    s.standard();
    let big = "x".repeat(MAX_SIGNAL_BYTES + 10);
    let limit = MAX_SIGNAL_BYTES.to_string();
    // Signalling, after login and as the first message.
    for msgs in [
        vec![login_text("p/f", "fpw"), big.clone()],
        vec![big.clone()],
    ] {
        let (said, close) = exchange(&s.ws, msgs).await;
        let err = said.last().expect("an answer");
        assert_eq!(err["name"], "TOO_LARGE", "{said:?}");
        assert!(err["message"].as_str().unwrap().contains(&limit), "{err}");
        assert_eq!(close, Some(1009), "{said:?} {close:?}");
    }
    // A message just under the limit is read (and refused for what it is, not its size).
    let (said, _) = exchange(&s.ws, vec!["y".repeat(MAX_SIGNAL_BYTES - 10)]).await;
    assert_eq!(said.last().unwrap()["name"], "NOT_LOGGED_IN", "{said:?}");

    // Admin API bodies.
    let body = json!({"id": "q", "pad": "z".repeat(100_000)}).to_string();
    let (st, v) = raw_http(&s.http, "POST", "/api/v1/projects", &body, Some(TOKEN));
    assert_eq!((st, v["name"].as_str()), (413, Some("TOO_LARGE")), "{v}");
    assert!(v["message"].as_str().unwrap().contains("65536"), "{v}");
}

#[test]
fn an_oversized_sip_message_over_tcp_gets_513_naming_the_limit() {
    let (_s, sip) = gb_server("", &[]);
    let mut tcp = std::net::TcpStream::connect(&sip).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    let len = fieldlink_gb28181::sip::MAX_MESSAGE + 1;
    write!(
        tcp,
        "REGISTER sip:34020000002000000001@3402000000 SIP/2.0\r\n\
         Via: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bK-big\r\n\
         From: <sip:34020000001320000009@3402000000>;tag=big\r\n\
         To: <sip:34020000001320000009@3402000000>\r\n\
         Call-ID: big@127.0.0.1\r\nCSeq: 1 REGISTER\r\nMax-Forwards: 70\r\n\
         Content-Type: Application/MANSCDP+xml\r\nContent-Length: {len}\r\n\r\n<Query>"
    )
    .unwrap();
    let mut answer = Vec::new();
    let started = Instant::now();
    let _ = tcp.read_to_end(&mut answer); // ends when the platform closes
    assert!(started.elapsed() < Duration::from_secs(5));
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("SIP/2.0 513 "), "{answer}");
    assert!(answer.contains("Call-ID: big@127.0.0.1"), "{answer}");
    assert!(
        answer.contains(&fieldlink_gb28181::sip::MAX_MESSAGE.to_string()),
        "{answer}"
    );
}
