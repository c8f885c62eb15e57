//! The GB28181 platform on 127.0.0.1: against SIPp (`sip-tester`), a real SIP peer —
//! REGISTER with digest (401, then 200), a GB2312 MANSCDP keepalive answered 200, a wrong
//! password answered 403, unregistering with `Expires: 0` — and end to end with the
//! simulated camera `fieldlink gb-device`: its channels play on remote receivers.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::gb::*;
use common::*;
use fieldlink_sdk::{Event, StreamState};

fn scenario(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sipp")
        .join(name)
}

/// A SIPp command running `file` as device `id` with `password` from local `port`.
fn sipp_cmd(server: &str, file: &str, id: &str, password: &str, tcp: bool, port: u16) -> Command {
    let mut c = Command::new("sipp");
    c.arg(server)
        .arg("-sf")
        .arg(scenario(file))
        .args(["-t", if tcp { "t1" } else { "u1" }])
        .args(["-s", id, "-au", id, "-ap", password])
        .args(["-i", "127.0.0.1", "-p", &port.to_string()])
        .args(["-nostdin", "-timeout", "20", "-timeout_error"]);
    c
}

/// Runs one SIPp call of `file` as device `id` with `password`; returns whether it passed,
/// with SIPp's output for the failure message.
fn sipp(server: &str, file: &str, id: &str, password: &str, tcp: bool) -> (bool, String) {
    let out = sipp_cmd(server, file, id, password, tcp, free_port())
        .args(["-m", "1"])
        .output()
        .expect("sipp (Debian package sip-tester) must be installed");
    (
        out.status.success(),
        format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn sipp_registers_keeps_alive_is_refused_with_a_wrong_password_and_unregisters() {
    let s = TestServer::start_with("", &["--sip-listen", "127.0.0.1:0", "--log-sip"]);
    let sip = s.sip.clone().expect("the ready line names the SIP address");
    for tcp in [false, true] {
        let via = if tcp { "TCP" } else { "UDP" };
        let dev = "34020000001320000001";
        let (ok, log) = sipp(&sip, "register.xml", dev, "12345678", tcp);
        assert!(ok, "{via}: register + keepalive failed:\n{log}");
        let (ok, log) = sipp(
            &sip,
            "register_wrong_password.xml",
            dev,
            "not-the-password",
            tcp,
        );
        assert!(ok, "{via}: a wrong password must get 403:\n{log}");
        let (ok, log) = sipp(&sip, "unregister.xml", dev, "12345678", tcp);
        assert!(ok, "{via}: unregister failed:\n{log}");
        // The wrong-password scenario against the right password fails (the check can fail).
        let (ok, _) = sipp(&sip, "register_wrong_password.xml", dev, "12345678", tcp);
        assert!(!ok, "{via}: the right password must not get 403");
    }
}

/// `fieldlink gb-device` with 2 channels registers; a remote device lists it, connects both
/// channels to two conn_fds and gets each channel's own frames (the test pattern's stream
/// id is the channel index); disconnecting sends BYE after the linger; a stopped device goes
/// offline after the keepalive timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gb28181_camera_plays_on_remote_receivers_over_udp() {
    camera_plays("udp", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gb28181_camera_plays_over_tcp_passive() {
    camera_plays("tcp-passive", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gb28181_camera_plays_over_tcp_active() {
    camera_plays("tcp-active", false).await;
}

async fn camera_plays(mode: &str, then_offline: bool) {
    use fieldlink_media::FrameMeta;
    let (s, sip) = gb_server(
        &format!("linger_secs = 1\nkeepalive_misses = 3\nmedia_mode = \"{mode}\"\n"),
        &["--sip-keepalive-secs", "1"],
    );
    let mut dev = gb_device(&sip, &["--channels", "2", "--keepalive-secs", "1"]);
    let dev_out = lines(&mut dev.0);
    let wait_dev = |what: &str, pred: &dyn Fn(&serde_json::Value) -> bool| {
        wait_line(&dev_out, &format!("gb-device: {what}"), pred)
    };
    wait_dev("registered", &|v| v["event"] == "registered");

    let mut rc = s.cfg("p/r1", "rpw");
    rc.streams = 2;
    let (r, mut ev) = fieldlink_sdk::RemoteDevice::connect(rc).await.unwrap();
    // The camera shows up as a field device of the project once its catalog is in.
    let gwid = id("p/34020000001320000001");
    wait_listed(&r, &gwid).await;
    r.connect_streams(&gwid, &[0, 1], &[0, 1]).await.unwrap();
    let want_mode = match mode {
        "udp" => "Udp",
        "tcp-passive" => "TcpPassive",
        _ => "TcpActive",
    };
    for _ in 0..2 {
        let v = wait_dev("invite", &|v| v["event"] == "invite");
        assert_eq!(v["mode"], want_mode, "{v}");
    }
    // Each receiver gets its own channel's frames.
    let mut seen = [0u32; 2];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.iter().any(|n| *n < 10) {
        let e = tokio::time::timeout_at(deadline, ev.recv())
            .await
            .unwrap_or_else(|_| panic!("frames per conn_fd: {seen:?}"))
            .unwrap();
        if let Event::Frame(f) = e {
            let meta = FrameMeta::find(&f.data).expect("test-pattern metadata");
            assert_eq!(
                meta.stream_id, f.conn_fd,
                "conn_fd {} got channel {}",
                f.conn_fd, meta.stream_id
            );
            seen[f.conn_fd as usize] += 1;
        }
    }
    // /metrics: the camera online, both INVITEs sent and accepted, its frames forwarded.
    let m = common::metrics::scrape(&s);
    let value = |name: &str, labels: &[(&str, &str)]| common::metrics::value(&m, name, labels);
    assert_eq!(value("fieldlink_gb28181_devices_online", &[]), 1.0);
    for outcome in ["sent", "accepted"] {
        assert_eq!(
            value("fieldlink_gb28181_invites_total", &[("outcome", outcome)]),
            2.0,
            "INVITEs {outcome}"
        );
    }
    assert!(value("fieldlink_video_frames_forwarded_total", &[]) >= 20.0);
    // Both calls reached their first frame: one time-to-first-frame each.
    assert_eq!(
        value("fieldlink_gb28181_invite_first_frame_seconds_count", &[]),
        2.0
    );
    // PTZ from the admin API, and from the master remote as control data: the camera gets
    // DeviceControl with the GB28181 PTZCmd for the right channel.
    let (code, body) = s.api(
        "POST",
        "/api/v1/gb28181/devices/34020000001320000001/ptz",
        Some(serde_json::json!({"channel": 1, "command": "left", "speed": 128})),
    );
    assert_eq!(code, 202, "{body}");
    let v = wait_dev("ptz", &|v| v["event"] == "ptz");
    assert_eq!(v["channel"], "34020000001310000002");
    assert_eq!(v["cmd"], "A50F010280000037");
    if r.permission(&gwid) != fieldlink_sdk::Permission::Master {
        r.request_permission(&gwid, fieldlink_sdk::Permission::Master)
            .await
            .unwrap();
        expect_event(&mut ev, "master", |e| {
            matches!(
                e,
                Event::Permission {
                    self_permission: fieldlink_sdk::Permission::Master,
                    ..
                }
            )
        })
        .await;
    }
    r.send(
        &gwid,
        br#"{"ptz":"stop","channel":0}"#,
        fieldlink_sdk::Qos::Reliable,
    )
    .await
    .unwrap();
    let v = wait_dev("ptz from the master", &|v| v["event"] == "ptz");
    assert_eq!(v["channel"], "34020000001310000001");
    assert_eq!(v["cmd"], "A50F0100000000B5");
    // Disconnecting the receivers hangs the channels up (after the 1 s linger).
    r.disconnect_all().await.unwrap();
    for _ in 0..2 {
        wait_dev("bye", &|v| v["event"] == "bye");
    }
    if !then_offline {
        return;
    }
    // A device that stops is offline after its keepalives stop (3 × 1 s here).
    drop(dev);
    r.connect_streams(&gwid, &[0], &[0]).await.unwrap();
    expect_event(&mut ev, "the camera offline", |e| {
        matches!(
            e,
            Event::StreamState {
                state: StreamState::Failed,
                ..
            }
        ) || matches!(e, Event::Presence { online: false, .. })
    })
    .await;
    let (_, list) = s.api("GET", "/api/v1/gb28181/devices", None);
    assert_eq!(list[0]["online"], false, "{list}");
    // Presence and the channel list are stored: after a restart the camera is still
    // listed (offline, with its channels) before it registers again.
    drop(r);
    let mut s = s;
    s.restart();
    let (_, list) = s.api("GET", "/api/v1/gb28181/devices", None);
    assert_eq!(list[0]["id"], "34020000001320000001", "{list}");
    assert_eq!(list[0]["online"], false);
    assert_eq!(list[0]["channels"][1]["name"], "通道2");
}

/// A device's own password set through the admin API: the default one is refused (403),
/// the device's own registers.
#[test]
fn a_device_password_from_the_admin_api() {
    let s = TestServer::start_with("", &["--sip-listen", "127.0.0.1:0"]);
    let sip = s.sip.clone().unwrap();
    let dev = "34020000001320000009";
    let (code, body) = s.api(
        "PUT",
        &format!("/api/v1/gb28181/devices/{dev}"),
        Some(serde_json::json!({"password": "own-secret", "media_mode": "tcp-active"})),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["own_password"], true);
    let (code, _) = s.api(
        "PUT",
        "/api/v1/gb28181/devices/123",
        Some(serde_json::json!({"password": "x"})),
    );
    assert_eq!(code, 400);
    let (ok, log) = sipp(&sip, "register_wrong_password.xml", dev, "12345678", false);
    assert!(ok, "the default password must now get 403:\n{log}");
    let (ok, log) = sipp(&sip, "register.xml", dev, "own-secret", false);
    assert!(ok, "the device's own password must register:\n{log}");
}

/// A SIPp camera: registers (UAC), then from the same port answers the platform's Catalog
/// query, refuses its catalog SUBSCRIBE (489, as many cameras do: the platform plays on),
/// answers its INVITE when a remote watches the channel, and its BYE when the remote leaves.
/// The Catalog query reaches the SIPp server side only by the platform's retransmission
/// (the UAC had already exited when it was first sent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sipp_camera_answers_invite_and_bye() {
    let (s, sip) = gb_server("linger_secs = 1\n", &[]);
    let dev = "34020000001320000001";
    let port = free_port();
    let out = sipp_cmd(&sip, "register.xml", dev, "12345678", false, port)
        .args(["-m", "1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let uas = KillOnDrop(
        sipp_cmd(&sip, "camera_uas.xml", dev, "12345678", false, port)
            .args(["-m", "5"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut rc = s.cfg("p/r1", "rpw");
    rc.streams = 1;
    let (r, _ev) = fieldlink_sdk::RemoteDevice::connect(rc).await.unwrap();
    let gwid = id(&format!("p/{dev}"));
    wait_listed(&r, &gwid).await;
    r.connect_streams(&gwid, &[0], &[0]).await.unwrap();
    // The call is up (the INVITE was accepted) once the admin API says the channel plays.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, list) = s.api("GET", "/api/v1/gb28181/devices", None);
        if list[0]["channels"][0]["playing"] == true {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no call: {list}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    r.disconnect_all().await.unwrap();
    // SIPp ends successfully only after 5 calls went through its scenario: the Catalog,
    // DeviceInfo and DeviceStatus queries, the catalog SUBSCRIBE it refused, and the
    // INVITE whose BYE it answered.
    let mut uas = uas;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(st) = uas.0.try_wait().unwrap() {
            break st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "SIPp camera did not finish"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut err = String::new();
    if let Some(mut e) = uas.0.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    assert!(status.success(), "SIPp camera failed: {err}");
}

/// SPEC §10 with H.265: a channel whose PS map says H.265 (a real x265 stream from
/// `gb-device --video`) plays bit-exact on a receiver that negotiated H.265; one that did
/// not fails with a reason that names the codec and the way out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h265_channel_plays_where_h265_was_negotiated_and_fails_elsewhere() {
    use common::camera::{annexb, contiguous_in, reference, vcl_digests};
    let (s, sip) = gb_server("linger_secs = 1\n", &[]);
    let file = annexb(true);
    let _dev = gb_device(&sip, &["--video", file.to_str().unwrap()]);
    let gwid = id("p/34020000001320000001");

    let mut rc = s.cfg("p/r1", "rpw");
    rc.streams = 1;
    rc.h265 = true;
    let (r1, mut e1) = fieldlink_sdk::RemoteDevice::connect(rc).await.unwrap();
    wait_listed(&r1, &gwid).await;
    r1.connect_streams(&gwid, &[0], &[0]).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 50 {
        if let Event::Frame(f) =
            expect_event(&mut e1, "an H.265 frame", |e| matches!(e, Event::Frame(_))).await
        {
            got.push(f);
        }
    }
    assert!(got
        .iter()
        .all(|f| f.codec == fieldlink_sdk::VideoCodec::H265));
    assert!(got[0].keyframe, "the first frame is a keyframe");
    let digests: Vec<u64> = got
        .iter()
        .flat_map(|f| vcl_digests(&f.data, true))
        .collect();
    assert!(digests.len() >= got.len(), "frames without picture data");
    assert!(
        contiguous_in(&digests, &reference(true)),
        "the {} frames are not the camera's, in order, without a gap",
        got.len()
    );

    let mut rc = s.cfg("p/r2", "rpw");
    rc.streams = 1;
    let (r2, mut e2) = fieldlink_sdk::RemoteDevice::connect(rc).await.unwrap();
    r2.connect_streams(&gwid, &[0], &[0]).await.unwrap();
    let reason = failed_on(&mut e2, 0).await;
    assert!(
        reason.contains("H.265") && reason.contains("--h265"),
        "{reason}"
    );
}

/// A channel in a codec the SFU does not carry (the map says MPEG-4 video, 0x10): the
/// receiver fails with a reason that names it, instead of waiting forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_codec_the_platform_cannot_carry_fails_with_a_clear_reason() {
    let (s, sip) = gb_server("linger_secs = 1\n", &[]);
    let _dev = gb_device(&sip, &["--stream-type", "16"]);
    let mut rc = s.cfg("p/r1", "rpw");
    rc.streams = 1;
    rc.h265 = true;
    let (r, mut ev) = fieldlink_sdk::RemoteDevice::connect(rc).await.unwrap();
    let gwid = id("p/34020000001320000001");
    wait_listed(&r, &gwid).await;
    r.connect_streams(&gwid, &[0], &[0]).await.unwrap();
    let reason = failed_on(&mut ev, 0).await;
    assert!(reason.contains("0x10"), "{reason}");
}

/// `n` frames on conn_fd `fd` (others are skipped).
async fn frames_on(ev: &mut fieldlink_sdk::Events, fd: u32, n: usize) {
    for _ in 0..n {
        expect_event(
            ev,
            &format!("a frame on conn_fd {fd}"),
            |e| matches!(e, Event::Frame(f) if f.conn_fd == fd),
        )
        .await;
    }
}

/// The reason of the next `Failed` state of conn_fd `fd`.
async fn failed_on(ev: &mut fieldlink_sdk::Events, fd: u32) -> String {
    let e = expect_event(ev, &format!("conn_fd {fd} failed"), |e| {
        matches!(e, Event::StreamState { conn_fd, state: StreamState::Failed, .. } if *conn_fd == fd)
    })
    .await;
    let Event::StreamState { reason, .. } = e else {
        unreachable!()
    };
    reason.unwrap_or_default()
}

/// SPEC §10 catalog changes: the platform subscribes to the device's catalog. A channel
/// the device deletes ends its receiver with a reason and is hung up while the other
/// plays on; one added back plays again; OFF shows in the admin view; and a change the
/// platform was not told of is found by the device's next REGISTER; a subscription the
/// device ends is asked for again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_changes_reach_the_receivers() {
    let (s, sip) = gb_server("linger_secs = 1\n", &[]);
    let mut dev = gb_device(&sip, &["--channels", "2", "--commands"]);
    let lines = DeviceLines::of(&mut dev);
    let wait = |what: &[&str]| tokio::task::block_in_place(|| lines.wait(what));
    let mut rc = s.cfg("p/r1", "rpw");
    rc.streams = 2;
    let (r, mut ev) = fieldlink_sdk::RemoteDevice::connect(rc).await.unwrap();
    let gwid = id("p/34020000001320000001");
    wait_listed(&r, &gwid).await;
    wait(&[r#""event":"subscribed""#]);
    r.connect_streams(&gwid, &[0, 1], &[0, 1]).await.unwrap();
    frames_on(&mut ev, 0, 10).await;
    frames_on(&mut ev, 1, 10).await;

    // Deleted, and the device said so (NOTIFY).
    command(&mut dev, "del 1");
    wait(&[r#""event":"notify_answered""#, r#""code":200"#]);
    let reason = failed_on(&mut ev, 1).await;
    assert!(
        reason.contains("34020000001310000002") && reason.contains("removed"),
        "{reason}"
    );
    wait(&[r#""event":"bye""#]);
    frames_on(&mut ev, 0, 25).await; // the other channel plays on

    // Back: it plays again.
    command(&mut dev, "add 1");
    wait(&[r#""event":"notify_answered""#, r#""code":200"#]);
    r.connect_streams(&gwid, &[1], &[1]).await.unwrap();
    frames_on(&mut ev, 1, 10).await;

    // OFF is shown.
    command(&mut dev, "off 0");
    wait(&[r#""event":"notify_answered""#, r#""code":200"#]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, list) = s.api("GET", "/api/v1/gb28181/devices", None);
        let ch = &list[0]["channels"];
        if ch[0]["status"] == "OFF" && ch[1]["status"] == "ON" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{list}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Deleted without a word: the next REGISTER refreshes the catalog.
    command(&mut dev, "del 1 quiet");
    command(&mut dev, "register");
    let reason = failed_on(&mut ev, 1).await;
    assert!(reason.contains("removed"), "{reason}");
    frames_on(&mut ev, 0, 10).await;

    // The device ends the subscription with a NOTIFY without a body (RFC 6665): answered
    // 200, and the platform subscribes again.
    command(&mut dev, "unsubscribe");
    wait(&[r#""event":"unsubscribed""#]);
    wait(&[r#""event":"notify_answered""#, r#""code":200"#]);
    wait(&[r#""event":"subscribed""#]);
}

/// SPEC §10 "always on": a device set so in the admin API has its channels pulled as soon
/// as it registers, with no viewer.
#[test]
fn an_always_on_device_is_pulled_without_viewers() {
    let (s, sip) = gb_server("", &[]);
    let (code, body) = s.api(
        "PUT",
        "/api/v1/gb28181/devices/34020000001320000001",
        Some(serde_json::json!({"always_on": true})),
    );
    assert_eq!(
        (code, body["always_on"].as_bool()),
        (200, Some(true)),
        "{body}"
    );
    let mut dev = gb_device(&sip, &["--channels", "2"]);
    let lines = DeviceLines::of(&mut dev);
    // Both channels pulled, with no viewer.
    for channel in ["34020000001310000001", "34020000001310000002"] {
        lines.wait(&[r#""event":"invite""#, channel]);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, list) = s.api("GET", "/api/v1/gb28181/devices", None);
        let d = &list[0];
        if d["always_on"] == true
            && d["channels"][0]["playing"] == true
            && d["channels"][1]["playing"] == true
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{d}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A camera channel's G.711 audio (A-law and µ-law, a 1 kHz tone in its PS) reaches the
/// remote watching that channel: forwarded as PCMA/PCMU, decoded in the SDK into the
/// mixed audio that `remote watch --audio-out` writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_camera_channels_g711_audio_reaches_its_viewer() {
    for law in ["a", "u"] {
        let (s, sip) = gb_server("linger_secs = 1\n", &[]);
        let _dev = gb_device(&sip, &["--audio-tone", "1000", "--audio-law", law]);
        let (r2, _e2) = s.remote("p/r2", "rpw").await;
        let gwid = id("p/34020000001320000001");
        wait_listed(&r2, &gwid).await;
        let out = s.dir.join("camera.wav");
        let watch = fieldlink()
            .args(["remote", "--server", &s.ws, "--device-id", "p/r1"])
            .args(["--password", "rpw", "--json", "--max-streams", "1", "watch"])
            .args(["--gwid", "p/34020000001320000001", "--streams", "0"])
            .args(["--conn-fds", "0", "--duration", "7", "--audio-out"])
            .arg(&out)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(watch.success(), "{law}-law: remote watch failed");
        let samples = common::audio::read_wav(&out);
        // G.711 is 8-bit log PCM: about 38 dB for a tone at this level.
        common::audio::assert_tone(&format!("G.711{law} camera"), &samples, 1000.0, 30.0);
    }
}
