//! SPEC §11 TLS: the server on HTTPS/WSS with a certificate from a test CA made here; a whole
//! session of SDK devices and the CLI over it; every way verification must fail, with its
//! reason; a reconnect that meets another certificate refuses it.

mod common;

use common::tls::{https_text, make_ca};
use common::*;
use fieldlink_media::FrameMeta;
use fieldlink_sdk::video::TestPattern;
use fieldlink_sdk::{ErrorCode, Event, FieldDevice, Qos, RemoteDevice};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_session_runs_over_wss() {
    let dir = temp_dir("tls-session");
    let ca = make_ca(&dir, "a", &["127.0.0.1", "localhost"]);
    let s = TestServer::start_tls(&ca, "");
    // The admin API answers over HTTPS only (these calls verify against the test CA) ...
    s.standard();
    let (st, v) = s.api("GET", "/api/v1/health", None);
    assert_eq!((st, v["status"].as_str()), (200, Some("ok")), "{v}");
    // ... and plain HTTP on that port gets a readable refusal, not a broken handshake.
    let (st, text) = raw_http_text(&s.http, "GET", "/api/v1/health", "", None);
    assert_eq!(st, 400, "{text}");
    assert!(text.contains("HTTPS only"), "{text}");
    // The console page comes over HTTPS too.
    let (st, page) = https_text(&s.http, &ca.ca, "GET", "/", "", None);
    assert_eq!(st, 200);
    assert!(page.contains("<html"), "{page}");

    let mut fc = s.cfg("p/f", "fpw");
    fc.streams = 1;
    let (field, mut fe) = FieldDevice::connect(fc).await.expect("field over wss");
    field
        .start_video(0, TestPattern::new(0, SMALL_PATTERN).unwrap())
        .unwrap();
    let mut rc = s.cfg("p/r1", "rpw");
    rc.streams = 1;
    let (remote, mut re) = RemoteDevice::connect(rc).await.expect("remote over wss");
    let f = id("p/f");
    remote.connect_streams(&f, &[0], &[0]).await.unwrap();
    // Video plays, and the remote becomes master (auto_permission), in either order.
    let (mut frames, mut master) = (0, false);
    while frames < 10 || !master {
        match expect_event(&mut re, "frames and master", |e| {
            matches!(e, Event::Frame(_) | Event::Permission { .. })
        })
        .await
        {
            Event::Frame(fr) => {
                assert_eq!(FrameMeta::find(&fr.data).map(|m| m.stream_id), Some(0));
                frames += 1;
            }
            Event::Permission {
                self_permission, ..
            } => master = self_permission == fieldlink_sdk::Permission::Master,
            _ => {}
        }
    }
    remote.send(&f, b"over tls", Qos::Reliable).await.unwrap();
    let got = expect_event(&mut fe, "control at field", |e| {
        matches!(e, Event::ControlData { .. })
    })
    .await;
    assert!(matches!(got, Event::ControlData { data, .. } if data == b"over tls"));

    // The CLI: --ca verifies against the test CA; without it the system's roots refuse.
    let ca_arg = ca.ca.to_string_lossy().to_string();
    let out = fieldlink()
        .args(["remote", "--server", &s.ws, "--ca", &ca_arg])
        .args(["--device-id", "p/r2", "--password", "rpw", "--json", "list"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("p/f"), "{stdout}");
    let out = fieldlink()
        .args(["remote", "--server", &s.ws])
        .args(["--device-id", "p/r2", "--password", "rpw", "list"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("TLS_FAILED") && err.contains("127.0.0.1"),
        "{err}"
    );

    // A field device from a vendor-style config.json: "certificate" names the CA, relative
    // to the config file.
    std::fs::copy(&ca.ca, s.dir.join("server-ca.pem")).unwrap();
    let config = serde_json::json!({"device_id": "f", "projectid": "p", "password": "fpw",
        "server": s.ws, "certificate": "./server-ca.pem", "device_streams": 0});
    let (cli_field, out) = start_field(&s, &config.to_string());
    let online = remote.list_fields().await.unwrap();
    assert!(online.iter().any(|i| i.id == f && i.online), "{online:?}");
    interrupt(cli_field);
    drop(out);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_failures_say_why_and_name_the_host() {
    let dir = temp_dir("tls-refused");
    let good = make_ca(&dir, "good", &["127.0.0.1"]);
    let other = make_ca(&dir, "other", &["127.0.0.1"]);
    let misnamed = make_ca(&dir, "misnamed", &["fieldlink.example"]);
    let s = TestServer::start_tls(&good, "");
    s.standard();
    let try_with = |server: &str, ca: Option<&std::path::Path>| {
        let mut c = s.cfg("p/f", "fpw");
        c.server = server.to_string();
        c.server_ca = ca.map(|p| p.to_path_buf());
        FieldDevice::connect(c)
    };
    // Another CA's certificate does not vouch for this server.
    let e = try_with(&s.ws, Some(&other.ca))
        .await
        .err()
        .expect("refused");
    assert_eq!(e.code, ErrorCode::TlsFailed, "{e}");
    assert!(
        e.message.contains("127.0.0.1") && e.message.contains("not signed by a trusted CA"),
        "{e}"
    );
    // The system's roots do not know a test CA.
    let e = try_with(&s.ws, None).await.err().expect("refused");
    assert_eq!(e.code, ErrorCode::TlsFailed, "{e}");
    // A certificate from the right CA for another name.
    let mut named = TestServer::start_tls(&misnamed, "");
    let e = try_with(&named.ws, Some(&misnamed.ca))
        .await
        .err()
        .expect("refused");
    assert_eq!(e.code, ErrorCode::TlsFailed, "{e}");
    assert!(
        e.message.contains("not valid for the name 127.0.0.1"),
        "{e}"
    );
    named.stop();
    // wss:// to a plain server, and an unusable PEM.
    let plain = TestServer::start();
    let e = try_with(&plain.ws.replace("ws://", "wss://"), Some(&good.ca))
        .await
        .err()
        .expect("refused");
    assert_eq!(e.code, ErrorCode::TlsFailed, "{e}");
    assert!(e.message.contains("did not answer in TLS"), "{e}");
    let e = try_with(&s.ws, Some(&dir.join("missing.pem")))
        .await
        .err()
        .expect("refused");
    assert_eq!(e.code, ErrorCode::TlsFailed, "{e}");
    assert!(e.message.contains("missing.pem"), "{e}");
    // The right CA works.
    assert!(try_with(&s.ws, Some(&good.ca)).await.is_ok());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_keeps_verifying() {
    let dir = temp_dir("tls-reconnect");
    let first = make_ca(&dir, "first", &["127.0.0.1"]);
    let mut s = TestServer::start_tls(&first, "");
    s.standard();
    let (_field, mut fe) = s.field("p/f", "fpw").await;
    // The server comes back with a certificate from a CA the device does not trust (as an
    // impostor on the same address would).
    let impostor = make_ca(&dir, "impostor", &["127.0.0.1"]);
    std::fs::copy(&impostor.cert, &first.cert).unwrap();
    std::fs::copy(&impostor.key, &first.key).unwrap();
    s.restart();
    let e = expect_event(&mut fe, "reconnect refused", |e| {
        matches!(e, Event::ReconnectFailed { .. })
    })
    .await;
    let Event::ReconnectFailed { code, message } = e else {
        unreachable!()
    };
    assert_eq!(code, ErrorCode::TlsFailed, "{message}");
    assert!(message.contains("not signed by a trusted CA"), "{message}");
    let _ = std::fs::remove_dir_all(&dir);
}
