//! Session diagnostics (SPEC §6) end to end: a real server process, SDK field and remote
//! devices over WebSocket and WebRTC, the GStreamer RTSP camera, and the `fieldlink remote
//! diag` command. Each diagnosis measures for the real 10 s window.

mod common;

use std::time::{Duration, Instant};

use common::camera::{rtsp, Camera};
use common::gb::{gb_device, gb_server, wait_listed};
use common::*;
use fieldlink_proto::diag::{Report, OK};
use fieldlink_sdk::camera::Passthrough;
use fieldlink_sdk::video::{TestPattern, TestPatternConfig};
use fieldlink_sdk::{ErrorCode, Event, Events, FieldDevice, Quality, RemoteDevice, StreamState};

const PATTERN: TestPatternConfig = TestPatternConfig {
    width: 320,
    height: 240,
    fps: 25.0,
    kbps: 300,
    gop: 50,
};

async fn field(s: &TestServer, streams: u32) -> (FieldDevice, Events) {
    let mut fc = s.cfg("p/f", "fpw");
    fc.streams = streams;
    FieldDevice::connect(fc).await.expect("field login")
}

/// Remote `p/r1` with `receivers` conn_fds, decoding; `h265` also negotiated.
async fn remote(s: &TestServer, receivers: u32, h265: bool, mode: &str) -> (RemoteDevice, Events) {
    let mut rc = s.cfg("p/r1", "rpw");
    rc.streams = receivers;
    rc.decode = true;
    rc.h265 = h265;
    rc.mode = mode.into();
    RemoteDevice::connect(rc).await.expect("remote login")
}

async fn until_playing(re: &mut Events, conn_fds: &[u32]) {
    let mut playing = Vec::new();
    while !conn_fds.iter().all(|fd| playing.contains(fd)) {
        if let Event::StreamState { conn_fd, .. } = expect_event(re, "playing", |e| {
            matches!(
                e,
                Event::StreamState {
                    state: StreamState::Playing,
                    ..
                }
            )
        })
        .await
        {
            playing.push(conn_fd);
        }
    }
}

/// Waits (up to 20 s) for the diagnosis; returns its type and report.
async fn diagnosis(re: &mut Events) -> (i32, Report) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::time::timeout_at(deadline, re.recv()).await {
            Ok(Some(Event::Diagnosis { kind, report, .. })) => return (kind, report),
            Ok(Some(_)) => {}
            Ok(None) => panic!("events ended before the diagnosis"),
            Err(_) => panic!("no diagnosis within 20 s"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_session_is_ok_with_figures_near_the_configured_ones() {
    let s = TestServer::start();
    s.standard();
    let (f, _fe) = field(&s, 2).await;
    for i in 0..2 {
        f.start_video(i, TestPattern::new(i, PATTERN).unwrap())
            .unwrap();
    }
    let (r, mut re) = remote(&s, 2, false, "public").await;
    r.open_session(&id("p/f")).await.unwrap();

    // No receiver connected yet: refused at once, with its own code.
    let t = Instant::now();
    let e = r.diag_request(&id("p/f")).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::NotConnected, "{e}");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());

    r.connect_streams(&id("p/f"), &[0, 1], &[0, 1])
        .await
        .unwrap();
    until_playing(&mut re, &[0, 1]).await;
    // Every playing receiver is scored every 2 s; on loopback it is excellent.
    for fd in [0, 1] {
        let q = expect_event(
            &mut re,
            "a quality score",
            |e| matches!(e, Event::Quality(q) if q.conn_fd == fd),
        )
        .await;
        let Event::Quality(q) = q else { unreachable!() };
        assert_eq!(q.level, Quality::Excellent, "{q:?}");
    }
    let asked = Instant::now();
    r.diag_request(&id("p/f")).await.unwrap();
    let busy = r.diag_request(&id("p/f")).await.unwrap_err();
    assert_eq!(busy.code, ErrorCode::DiagBusy);
    let (kind, rep) = diagnosis(&mut re).await;
    let took = asked.elapsed();
    let json = serde_json::to_string_pretty(&rep).unwrap();
    eprintln!("healthy diagnosis after {took:?}:\n{json}");
    assert_eq!(kind, 1, "{json}");
    assert!(
        took >= Duration::from_secs(10) && took < Duration::from_secs(14),
        "{took:?}"
    );
    assert_eq!(
        (
            &*rep.remote_mqtt_connect,
            &*rep.diag_error,
            &*rep.remote_mode
        ),
        (OK, OK, OK)
    );
    assert_eq!(rep.device_id, "p/f");
    assert_eq!(rep.result.len(), 2, "{json}");
    for (i, st) in rep.result.iter().enumerate() {
        assert_eq!((st.stream_id, st.conn_fd), (i as u32, i as u32));
        let fs = st.field.as_ref().expect("field part");
        let rs = st.remote.as_ref().expect("remote part");
        for v in [
            &fs.signal_connect,
            &fs.media_connect,
            &fs.part.video_capture,
            &fs.part.video_encode,
            &fs.part.video_transfer,
            &rs.signal_connect,
            &rs.media_connect,
            &rs.part.video_transfer,
            &rs.part.video_decode,
        ] {
            assert_eq!(v, OK, "{json}");
        }
        for p in [fs.part.fps, rs.part.fps] {
            assert!((22.0..=26.0).contains(&p), "fps {p}: {json}");
        }
        // The test pattern is cheap to encode: any positive rate up to the configured one.
        assert!(fs.part.bps > 20_000 && fs.part.bps < 400_000, "{json}");
        assert!(rs.part.bps > 20_000, "{json}");
        assert!(fs.part.lost < 1.0 && rs.part.lost < 1.0, "{json}");
        for rtt in [fs.part.rtt, rs.part.rtt] {
            assert!(rtt.is_some_and(|r| r < 100.0), "{json}");
        }
        assert!(rs.part.latency.is_some_and(|l| l < 150.0), "{json}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_camera_is_the_named_cause_and_the_other_stream_stays_ok() {
    let s = TestServer::start();
    s.standard();
    let mut cam = Camera::start(&[]);
    let url = cam.url("h264");
    let (f, mut fe) = field(&s, 2).await;
    f.start_video(0, Passthrough::start(&rtsp(url.clone()), 25.0).unwrap())
        .unwrap();
    f.start_video(1, TestPattern::new(1, PATTERN).unwrap())
        .unwrap();
    let (r, mut re) = remote(&s, 2, false, "public").await;
    r.connect_streams(&id("p/f"), &[0, 1], &[0, 1])
        .await
        .unwrap();
    until_playing(&mut re, &[0, 1]).await;
    cam.kill();
    expect_event(&mut fe, "the camera's failure", |e| {
        matches!(
            e,
            Event::SourceState {
                stream_id: 0,
                ok: false,
                ..
            }
        )
    })
    .await;
    // The receiver of the stopped camera is scored as lost.
    let q = expect_event(
        &mut re,
        "conn_fd 0 lost",
        |e| matches!(e, Event::Quality(q) if q.conn_fd == 0 && q.level == Quality::Lost),
    )
    .await;
    let Event::Quality(q) = q else { unreachable!() };
    assert_eq!(
        q.cause.as_deref(),
        Some("no frames: the source sends nothing")
    );
    r.diag_request(&id("p/f")).await.unwrap();
    let (kind, rep) = diagnosis(&mut re).await;
    let json = serde_json::to_string_pretty(&rep).unwrap();
    eprintln!("camera stopped:\n{json}");
    assert_eq!(kind, 1, "the diagnosis itself worked: {json}");
    let cam0 = rep.result[0].field.as_ref().expect("field part 0");
    assert!(
        cam0.part
            .video_capture
            .starts_with("no input frames from camera")
            && cam0.part.video_capture.contains(&url),
        "{json}"
    );
    let remote0 = rep.result[0].remote.as_ref().expect("remote part 0");
    assert!(
        remote0.part.video_transfer.starts_with("no video received"),
        "{json}"
    );
    let other = rep.result[1].field.as_ref().expect("field part 1");
    assert_eq!(
        (&*other.part.video_capture, &*other.part.video_transfer),
        (OK, OK),
        "{json}"
    );
    let other = rep.result[1].remote.as_ref().expect("remote part 1");
    assert_eq!(
        (&*other.part.video_transfer, &*other.part.video_decode),
        (OK, OK),
        "{json}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_cannot_decode_and_a_mode_mismatch_are_named() {
    let s = TestServer::start();
    s.standard();
    let cam = Camera::start(&[]);
    let (f, _fe) = field(&s, 1).await;
    // H.265 in passthrough: the SDK's built-in decoder is H.264 only.
    f.start_video(0, Passthrough::start(&rtsp(cam.url("h265")), 25.0).unwrap())
        .unwrap();
    let (r, mut re) = remote(&s, 1, true, "private").await;
    r.connect_streams(&id("p/f"), &[0], &[0]).await.unwrap();
    until_playing(&mut re, &[0]).await;
    r.diag_request(&id("p/f")).await.unwrap();
    let (kind, rep) = diagnosis(&mut re).await;
    let json = serde_json::to_string_pretty(&rep).unwrap();
    eprintln!("not decoding:\n{json}");
    assert_eq!(kind, 1, "{json}");
    let rs = rep.result[0].remote.as_ref().expect("remote part");
    assert!(
        rs.part
            .video_decode
            .starts_with("receiver not decoding: 0 frames decoded of "),
        "{json}"
    );
    assert_eq!(rs.part.video_transfer, OK, "{json}");
    assert!(rep.remote_mode.contains("mismatch"), "{json}");
    drop(cam);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_field_going_offline_mid_diagnosis_fails_it_at_once() {
    let s = TestServer::start();
    s.standard();
    let (f, _fe) = field(&s, 1).await;
    f.start_video(0, TestPattern::new(0, PATTERN).unwrap())
        .unwrap();
    let (r, mut re) = remote(&s, 1, false, "public").await;
    r.connect_streams(&id("p/f"), &[0], &[0]).await.unwrap();
    until_playing(&mut re, &[0]).await;
    r.diag_request(&id("p/f")).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let gone = Instant::now();
    f.close().await;
    let (kind, rep) = diagnosis(&mut re).await;
    let json = serde_json::to_string_pretty(&rep).unwrap();
    assert_eq!(kind, ErrorCode::FieldOffline.code(), "{json}");
    assert!(rep.diag_error.contains("offline"), "{json}");
    assert!(
        gone.elapsed() < Duration::from_secs(3),
        "{:?}",
        gone.elapsed()
    );
    // Offline now: refused at once.
    let e = r.diag_request(&id("p/f")).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::FieldOffline, "{e}");
}

#[test]
fn the_cli_prints_one_json_object_and_exits_by_the_type() {
    let s = TestServer::start();
    s.standard();
    let (mut field, _lines) = start_field(
        &s,
        &format!(
            r#"{{"device_id":"f","projectid":"p","password":"fpw","cloud_mode":"public","server":"{}",
                "streams_config":[{{"fps":25,"bps":300,"width":320,"height":240}}]}}"#,
            s.ws
        ),
    );
    let out = fieldlink()
        .args([
            "remote",
            "--server",
            &s.ws,
            "--device-id",
            "p/r1",
            "--password",
            "rpw",
        ])
        .args(["diag", "--gwid", "p/f"])
        .output()
        .unwrap();
    let _ = field.kill();
    let _ = field.wait();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&text).expect("one JSON object");
    assert_eq!(v["type"], 1, "{text}");
    assert_eq!(v["gwid"], "p/f", "{text}");
    assert_eq!(
        v["report"]["result"][0]["field"]["video_capture"], OK,
        "{text}"
    );
    assert_eq!(
        v["report"]["result"][0]["remote"]["video_decode"], OK,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gb28181_camera_is_measured_by_what_reaches_the_server() {
    let (s, sip) = gb_server("", &[]);
    let gb_id = "34020000001320000009";
    let mut cam = gb_device(&sip, &["--id", gb_id, "--channels", "1"]);
    let cam_out = lines(&mut cam.0);
    wait_line(&cam_out, "gb-device registered", |v| {
        v["event"] == "registered"
    });
    let gwid = id(&format!("p/{gb_id}"));
    let (r, mut re) = remote(&s, 1, false, "public").await;
    wait_listed(&r, &gwid).await;
    r.connect_streams(&gwid, &[0], &[0]).await.unwrap();
    until_playing(&mut re, &[0]).await;
    r.diag_request(&gwid).await.unwrap();
    let (kind, rep) = diagnosis(&mut re).await;
    drop(cam);
    let json = serde_json::to_string_pretty(&rep).unwrap();
    eprintln!("GB28181 camera:\n{json}");
    assert_eq!(kind, 1, "{json}");
    assert!(rep.diag_error.contains("GB28181"), "{json}");
    let f = &rep.result[0].field.as_ref().expect("field side").part;
    assert_eq!(f.video_capture, OK, "{json}");
    assert!(f.fps > 15.0 && f.bps > 10_000, "{json}");
    let rs = &rep.result[0].remote.as_ref().expect("remote side").part;
    assert!(rs.fps > 15.0, "{json}");
}
