//! `GET /metrics` on a real server process: behind the admin token, Prometheus text that an
//! independent Prometheus text parser (`prometheus-parse`) reads, and whose gauges and
//! counters follow what real devices (SDK over WebSocket and WebRTC) do.

mod common;

use std::time::Duration;

use common::metrics::{scrape, scrape_until, value};
use common::*;
use fieldlink_sdk::video::TestPattern;
use fieldlink_sdk::{DeviceConfig, ErrorCode, Event, FieldDevice, Permission, Qos, RemoteDevice};

fn control(samples: &[prometheus_parse::Sample], qos: &str, outcome: &str) -> f64 {
    value(
        samples,
        "fieldlink_control_messages_total",
        &[("qos", qos), ("outcome", outcome)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_the_token_parse_and_follow_devices() {
    let s = TestServer::start();
    s.standard();
    let (status, _) = raw_http_text(&s.http, "GET", "/metrics", "", None);
    assert_eq!(status, 401, "metrics without the admin token");
    let (status, _) = raw_http_text(&s.http, "GET", "/metrics", "", Some("wrong"));
    assert_eq!(status, 401, "metrics with a wrong token");

    let m = scrape(&s);
    for role in ["field", "remote"] {
        assert_eq!(
            value(&m, "fieldlink_devices_online", &[("role", role)]),
            0.0
        );
    }
    assert_eq!(value(&m, "fieldlink_sessions", &[]), 0.0);
    assert_eq!(
        value(&m, "fieldlink_video_frames_forwarded_total", &[]),
        0.0
    );

    // A refused login is counted by its real reason, which the device is not told.
    let bad = RemoteDevice::connect(DeviceConfig::new(s.ws.clone(), id("p/r1"), "nope")).await;
    assert_eq!(bad.err().map(|e| e.code), Some(ErrorCode::LoginFailed));
    let m = scrape(&s);
    assert_eq!(
        value(
            &m,
            "fieldlink_logins_refused_total",
            &[("code", "WRONG_PASSWORD")]
        ),
        1.0
    );

    // A field device with one stream, a remote watching it.
    let mut fc = s.cfg("p/f", "fpw");
    fc.streams = 1;
    let (field, mut fev) = FieldDevice::connect(fc).await.expect("field login");
    field
        .start_video(0, TestPattern::new(0, SMALL_PATTERN).expect("test pattern"))
        .expect("start video");
    let mut rc = s.cfg("p/r1", "rpw");
    rc.streams = 1;
    let (remote, mut rev) = RemoteDevice::connect(rc).await.expect("remote login");
    let gwid = id("p/f");
    remote
        .connect_streams(&gwid, &[0], &[0])
        .await
        .expect("connect streams");
    expect_event(&mut rev, "a frame", |e| matches!(e, Event::Frame(_))).await;
    let m = scrape_until(&s, "receiver playing", |m| {
        value(m, "fieldlink_receivers_playing", &[]) == 1.0
    })
    .await;
    assert_eq!(
        value(&m, "fieldlink_devices_online", &[("role", "field")]),
        1.0
    );
    assert_eq!(
        value(&m, "fieldlink_devices_online", &[("role", "remote")]),
        1.0
    );
    assert_eq!(value(&m, "fieldlink_sessions", &[]), 1.0);
    assert!(value(&m, "fieldlink_keyframe_requests_total", &[]) >= 1.0);
    let frames = value(&m, "fieldlink_video_frames_forwarded_total", &[]);
    let bytes = value(&m, "fieldlink_video_bytes_forwarded_total", &[]);
    assert!(
        frames >= 1.0 && bytes > frames,
        "{frames} frames, {bytes} bytes"
    );
    // Counters move on as video flows.
    scrape_until(&s, "more frames forwarded", |m| {
        value(m, "fieldlink_video_frames_forwarded_total", &[]) >= frames + 10.0
    })
    .await;
    // RTP packets come from the send statistics (once a second): at least one per frame.
    let m = scrape_until(&s, "packets counted", |m| {
        value(m, "fieldlink_video_packets_forwarded_total", &[]) >= frames
    })
    .await;
    // Receivers' repair requests are counted too (how many depends on the machine's
    // loopback; `value` fails if the counter is missing).
    assert!(value(&m, "fieldlink_nacks_received_total", &[]) >= 0.0);

    // Control data: the remote is master (automatic permission); 5 reliable messages each
    // way, one lossy from the field, and one malformed frame the server refuses.
    let deadline = tokio::time::Instant::now() + WAIT;
    while remote.permission(&gwid) != Permission::Master {
        assert!(tokio::time::Instant::now() < deadline, "no master");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = scrape(&s);
    for i in 0..5u8 {
        remote.send(&gwid, &[i], Qos::Reliable).await.expect("send");
        field.send(&[i], Qos::Reliable).await.expect("field send");
    }
    field.send(b"lossy", Qos::Lossy).await.expect("field send");
    remote
        .send_raw_frame(vec![1, 2, 3], Qos::Reliable)
        .await
        .expect("raw send");
    let mut got = 0;
    while got < 5 {
        expect_event(&mut fev, "control data", |e| {
            matches!(e, Event::ControlData { .. })
        })
        .await;
        got += 1;
    }
    let m = scrape_until(&s, "control counters", |m| {
        control(m, "1", "forwarded") >= control(&before, "1", "forwarded") + 10.0
            && control(m, "1", "refused") >= control(&before, "1", "refused") + 1.0
    })
    .await;
    assert!(control(&m, "0", "forwarded") >= control(&before, "0", "forwarded") + 1.0);
    assert_eq!(control(&m, "1", "rate_limited"), 0.0);

    // The remote leaves: the gauges follow.
    remote.close().await;
    scrape_until(&s, "remote gone", |m| {
        value(m, "fieldlink_devices_online", &[("role", "remote")]) == 0.0
            && value(m, "fieldlink_sessions", &[]) == 0.0
            && value(m, "fieldlink_receivers_playing", &[]) == 0.0
    })
    .await;
    field.close().await;
}

/// `--metrics-listen`: a second address with `/metrics` and nothing else, no token needed;
/// the main address keeps it behind the token.
#[test]
fn metrics_on_their_own_address_need_no_token() {
    let s = TestServer::start_with("", &["--metrics-listen", "127.0.0.1:0"]);
    let addr = s
        .metrics
        .clone()
        .expect("metrics address in the ready line");
    assert_ne!(addr, s.http);
    let (status, body) = raw_http_text(&addr, "GET", "/metrics", "", None);
    assert_eq!(status, 200, "{body}");
    let parsed = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .expect("Prometheus text");
    assert_eq!(value(&parsed.samples, "fieldlink_sessions", &[]), 0.0);
    // Nothing else is served there.
    let (status, _) = raw_http_text(&addr, "GET", "/api/v1/projects", "", Some(TOKEN));
    assert_eq!(status, 404);
    let (status, _) = raw_http_text(&s.http, "GET", "/metrics", "", None);
    assert_eq!(status, 401, "the main address still wants the token");
}
