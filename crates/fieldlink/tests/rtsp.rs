//! SPEC §7 IP cameras over RTSP, against a real RTSP server (GStreamer's, see
//! tests/rtsp/camera.py): passthrough keeps the camera's pictures bit-exact (H.264 and
//! H.265) and starts late receivers from the server's cached group of pictures;
//! transcoding from H.264 and MJPEG gives the configured size and bitrate; a wrong
//! password and a camera that goes away are reported, and a camera that comes back plays.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::camera::{contiguous_in, reference, rtsp, vcl_digests, Camera};
use common::*;
use fieldlink_sdk::camera::Passthrough;
use fieldlink_sdk::transcode::{Transcode, TranscodeConfig};
use fieldlink_sdk::{
    Event, Events, FieldDevice, RemoteDevice, StreamState, VideoCodec, VideoFrame,
};

async fn field(s: &TestServer, streams: u32) -> (FieldDevice, Events) {
    let mut c = s.cfg("p/f", "fpw");
    c.streams = streams;
    FieldDevice::connect(c).await.expect("field login")
}

async fn remote(
    s: &TestServer,
    who: &str,
    streams: u32,
    h265: bool,
    decode: bool,
) -> (RemoteDevice, Events) {
    let mut c = s.cfg(who, "rpw");
    c.streams = streams;
    c.h265 = h265;
    c.decode = decode;
    RemoteDevice::connect(c).await.expect("remote login")
}

/// Frames per conn_fd until each of `fds` has `n`, or for `secs` if given.
async fn frames(ev: &mut Events, fds: &[u32], n: usize) -> HashMap<u32, Vec<VideoFrame>> {
    let mut out: HashMap<u32, Vec<VideoFrame>> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while fds.iter().any(|fd| out.get(fd).map_or(0, Vec::len) < n) {
        match tokio::time::timeout_at(deadline, ev.recv()).await {
            Ok(Some(Event::Frame(f))) => out.entry(f.conn_fd).or_default().push(f),
            Ok(Some(_)) => {}
            _ => panic!(
                "frames by conn_fd within 30 s: {:?}",
                out.iter().map(|(k, v)| (*k, v.len())).collect::<Vec<_>>()
            ),
        }
    }
    out
}

async fn state_of(ev: &mut Events, fd: u32, want: StreamState) -> Option<String> {
    match expect_event(ev, &format!("conn_fd {fd} {want:?}"), |e| {
        matches!(e, Event::StreamState { conn_fd, state, .. } if *conn_fd == fd && *state == want)
    })
    .await
    {
        Event::StreamState { reason, .. } => reason,
        _ => unreachable!(),
    }
}

fn check_bit_exact(what: &str, got: &[VideoFrame], codec: VideoCodec) {
    let h265 = codec == VideoCodec::H265;
    assert!(got.iter().all(|f| f.codec == codec), "{what}: codec");
    assert!(got[0].keyframe, "{what}: the first frame is not a keyframe");
    let digests: Vec<u64> = got
        .iter()
        .flat_map(|f| vcl_digests(&f.data, h265))
        .collect();
    assert!(
        digests.len() >= got.len(),
        "{what}: frames without picture data"
    );
    let reference = reference(h265);
    if !contiguous_in(&digests, &reference) {
        let at: Vec<Option<usize>> = digests
            .iter()
            .map(|d| reference.iter().position(|r| r == d))
            .collect();
        eprintln!("{what}: positions in the reference: {at:?}");
    }
    assert!(
        contiguous_in(&digests, &reference),
        "{what}: {} frames are not the camera's, in order, without a gap",
        got.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_is_bit_exact_and_late_receivers_start_from_the_cached_gop() {
    let s = TestServer::start();
    s.standard();
    let cam = Camera::start(&[]);
    let (f, _fe) = field(&s, 2).await;
    f.start_video(0, Passthrough::start(&rtsp(cam.url("h264")), 25.0).unwrap())
        .unwrap();
    f.start_video(1, Passthrough::start(&rtsp(cam.url("h265")), 25.0).unwrap())
        .unwrap();
    let gw = id("p/f");

    let (r1, mut e1) = remote(&s, "p/r1", 2, true, false).await;
    r1.connect_streams(&gw, &[0, 1], &[0, 1]).await.unwrap();
    let got = frames(&mut e1, &[0, 1], 100).await;
    check_bit_exact("H.264", &got[&0], VideoCodec::H264);
    check_bit_exact("H.265", &got[&1], VideoCodec::H265);

    // The camera's next keyframe is seconds away (one every 10 s, and at least 100
    // frames have passed since the last): a late receiver that starts at once was
    // started from the server's copy of the group of pictures.
    let since_key = got[&0].iter().rev().take_while(|f| !f.keyframe).count();
    assert!(
        since_key >= 50,
        "{since_key} frames since the last keyframe"
    );
    let (r2, mut e2) = remote(&s, "p/r2", 1, false, true).await;
    let asked = Instant::now();
    r2.connect_streams(&gw, &[0], &[0]).await.unwrap();
    // The `playing` state (signalling) and the first frame (media) may come in either
    // order: collect both.
    let (mut late, mut note, mut waited) = (Vec::new(), None, None);
    let deadline = tokio::time::Instant::now() + WAIT;
    while late.len() < 30 || note.is_none() {
        match tokio::time::timeout_at(deadline, e2.recv()).await {
            Ok(Some(Event::Frame(f))) => {
                waited.get_or_insert(asked.elapsed());
                late.push(f);
            }
            Ok(Some(Event::StreamState {
                state: StreamState::Playing,
                reason,
                ..
            })) => note = Some(reason.unwrap_or_default()),
            Ok(Some(_)) => {}
            _ => panic!(
                "late receiver: {} frames, playing note {note:?}",
                late.len()
            ),
        }
    }
    let (waited, note) = (waited.unwrap_or_default(), note.unwrap_or_default());
    assert!(
        note.contains("passthrough"),
        "playing without the passthrough note: {note:?}"
    );
    eprintln!(
        "late receiver's first frame after {waited:?}, {since_key}+ frames into a 250-frame GOP"
    );
    assert!(
        waited < Duration::from_secs(2),
        "the late receiver waited {waited:?}"
    );
    let late = HashMap::from([(0u32, late)]);
    check_bit_exact("late H.264", &late[&0], VideoCodec::H264);
    assert!(
        late[&0].iter().filter(|f| f.picture.is_some()).count() >= 25,
        "the late receiver cannot decode what it got"
    );

    // H.265 on a receiver that did not negotiate it: a reason that says what to do.
    r2.connect_streams(&gw, &[1], &[0]).await.unwrap();
    let why = state_of(&mut e2, 0, StreamState::Failed)
        .await
        .unwrap_or_default();
    assert!(why.contains("H.265") && why.contains("\"normal\""), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transcoding_gives_the_configured_size_and_bitrate_from_h264_and_mjpeg() {
    let s = TestServer::start();
    s.standard();
    let cam = Camera::start(&["--size", "640x360"]);
    let (f, _fe) = field(&s, 2).await;
    let cfg = TranscodeConfig {
        width: 320,
        height: 180,
        fps: 25.0,
        kbps: 400,
        gop: 50,
    };
    f.start_video(0, Transcode::start(&rtsp(cam.url("h264")), cfg).unwrap())
        .unwrap();
    f.start_video(1, Transcode::start(&rtsp(cam.url("mjpeg")), cfg).unwrap())
        .unwrap();
    let (r, mut re) = remote(&s, "p/r1", 2, false, true).await;
    r.connect_streams(&id("p/f"), &[0, 1], &[0, 1])
        .await
        .unwrap();
    // Let the rate control settle, then measure 10 s.
    frames(&mut re, &[0, 1], 50).await;
    let start = Instant::now();
    let mut bytes = [0usize; 2];
    let mut pictures = [0usize; 2];
    let mut count = [0usize; 2];
    while start.elapsed() < Duration::from_secs(10) {
        if let Ok(Some(Event::Frame(fr))) =
            tokio::time::timeout(Duration::from_millis(200), re.recv()).await
        {
            let i = fr.conn_fd as usize;
            bytes[i] += fr.data.len();
            count[i] += 1;
            if let Some(p) = &fr.picture {
                assert_eq!((p.width, p.height), (320, 180), "decoded size on {i}");
                pictures[i] += 1;
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    for (i, from) in ["H.264", "MJPEG"].iter().enumerate() {
        let kbps = bytes[i] as f64 * 8.0 / secs / 1000.0;
        eprintln!(
            "transcoded from {from}: {kbps:.0} kbit/s (configured 400), {} frames, {} decoded",
            count[i], pictures[i]
        );
        assert!(
            (320.0..=480.0).contains(&kbps),
            "{from}: {kbps:.0} kbit/s is not 400 ± 20%"
        );
        assert!(count[i] >= 200, "{from}: {} frames in 10 s", count[i]);
        assert!(
            pictures[i] + 2 >= count[i],
            "{from}: {} of {} decoded",
            pictures[i],
            count[i]
        );
    }
}

/// A camera that is not there at start, then comes, goes away and comes back: each
/// change reaches the remote (the reason names the camera), the camera is retried by
/// itself, and the device's other stream plays throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_camera_that_is_missing_or_goes_away_is_reported_and_plays_when_back() {
    use fieldlink_sdk::video::TestPattern;
    let s = TestServer::start();
    s.standard();
    let port = free_port();
    let url = format!("rtsp://127.0.0.1:{port}/live");
    let (f, mut fe) = field(&s, 2).await;
    f.start_video(0, Passthrough::start(&rtsp(url.clone()), 25.0).unwrap())
        .unwrap();
    f.start_video(1, TestPattern::new(1, SMALL_PATTERN).unwrap())
        .unwrap();
    let (r, mut re) = remote(&s, "p/r1", 2, false, false).await;
    r.connect_streams(&id("p/f"), &[0, 1], &[0, 1])
        .await
        .unwrap();
    let why = state_of(&mut re, 0, StreamState::Failed)
        .await
        .unwrap_or_default();
    assert!(
        why.contains(&url) && why.contains("nothing listens"),
        "{why}"
    );
    frames(&mut re, &[1], 25).await;

    let mut cam = Camera::start_on(port, &[]);
    state_of(&mut re, 0, StreamState::Playing).await;
    frames(&mut re, &[0, 1], 10).await;

    cam.kill();
    let why = state_of(&mut re, 0, StreamState::Failed)
        .await
        .unwrap_or_default();
    assert!(why.contains(&url), "the reason names the camera: {why}");
    let ev = expect_event(&mut fe, "source failed", |e| {
        matches!(e, Event::SourceState { ok: false, .. })
    })
    .await;
    eprintln!("camera killed: remote sees {why:?}; field: {ev:?}");
    // The other stream does not notice.
    let other = frames(&mut re, &[1], 25).await;
    assert!(
        other.get(&0).is_none_or(Vec::is_empty),
        "frames from a dead camera"
    );

    cam.restart();
    let back = Instant::now();
    state_of(&mut re, 0, StreamState::Connecting).await;
    state_of(&mut re, 0, StreamState::Playing).await;
    frames(&mut re, &[0], 25).await;
    expect_event(&mut fe, "source ok", |e| {
        matches!(e, Event::SourceState { ok: true, .. })
    })
    .await;
    eprintln!("camera back: playing again after {:?}", back.elapsed());
}

/// `fieldlink field` with a camera behind digest authentication: a wrong password is an
/// event naming the camera (and not the password) on the field's output and a `failed`
/// state with the same reason on the remote; the right credentials, given as separate
/// fields and with RTP over UDP (`"protocol": 0`), play. Basic authentication works too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_camera_credentials_are_reported_and_right_ones_play_over_udp() {
    let s = TestServer::start();
    s.standard();
    let cam = Camera::start(&[
        "--auth",
        "digest",
        "--user",
        "admin",
        "--password",
        "s3cret",
    ]);
    let with = |camera: &str| {
        format!(
            r#"{{"device_id":"f","projectid":"p","password":"fpw","server":"{}","device_streams":1,
               "streams_config":[{{"fps":25,"bps":300,"width":320,"height":180,"protocol":"normal",
                 "cameras":[{camera}]}}]}}"#,
            s.ws
        )
    };
    let run = |config: String| {
        let path = s.dir.join("field.json");
        std::fs::write(&path, config).unwrap();
        let mut child = fieldlink()
            .args(["field", "--config"])
            .arg(&path)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let out = lines(&mut child);
        (child, out)
    };
    let url = cam.url("live");
    let wrong = url.replace("rtsp://", "rtsp://admin:guess@");
    let (mut child, out) = run(with(&format!(r#"{{"url":"{wrong}"}}"#)));
    let line = wait_line(&out, "source_state", |v| v["event"] == "source_state");
    let why = line["reason"].as_str().unwrap_or_default().to_string();
    assert_eq!(line["ok"], false, "{line}");
    assert!(
        why.contains("wrong user name or password") && why.contains(&url),
        "{why}"
    );
    assert!(
        !why.contains("guess"),
        "the password is in the reason: {why}"
    );
    let (r, mut re) = remote(&s, "p/r1", 1, false, false).await;
    r.connect_streams(&id("p/f"), &[0], &[0]).await.unwrap();
    let seen = state_of(&mut re, 0, StreamState::Failed)
        .await
        .unwrap_or_default();
    assert!(seen.contains("wrong user name or password"), "{seen}");
    let _ = child.kill();
    let _ = child.wait();

    let (mut child, _out) = run(with(&format!(
        r#"{{"url":"{url}","username":"admin","password":"s3cret","protocol":0}}"#
    )));
    state_of(&mut re, 0, StreamState::Playing).await;
    frames(&mut re, &[0], 25).await;
    let _ = child.kill();
    let _ = child.wait();

    // Basic authentication, with the credentials in the URL.
    let basic = Camera::start(&["--auth", "basic", "--user", "admin", "--password", "s3cret"]);
    let url = basic.url("live").replace("rtsp://", "rtsp://admin:s3cret@");
    let (f, _fe) = field(&s, 1).await;
    f.start_video(0, Passthrough::start(&rtsp(url), 25.0).unwrap())
        .unwrap();
    state_of(&mut re, 0, StreamState::Playing).await;
    frames(&mut re, &[0], 25).await;
}
