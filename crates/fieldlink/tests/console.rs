//! The web console in a real browser: headless Chromium (Debian's) driven by Playwright
//! (`tests/browser/console.mjs`) against the real server binary and a real
//! `fieldlink field` process, all on 127.0.0.1.
//!
//! Screenshots go to the test's temporary directory, or to `docs/screenshots/` with
//! `FIELDLINK_SCREENSHOTS=docs` (how the README's pictures are made).

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn browser_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/browser")
}

fn chromium() -> String {
    std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

/// Chromium and playwright-core are there (CI must have them; elsewhere the test says
/// it skips).
fn browser_ready() -> bool {
    let ready = std::path::Path::new(&chromium()).exists()
        && browser_dir().join("node_modules/playwright-core").exists();
    if !ready {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install chromium and tests/browser/node_modules"
        );
        eprintln!("chromium or playwright-core missing: browser test skipped (see .ci/run)");
    }
    ready
}

fn screenshot(name: &str) -> String {
    let dir = if std::env::var("FIELDLINK_SCREENSHOTS").as_deref() == Ok("docs") {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/screenshots")
    } else {
        PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
    };
    dir.join(name).to_string_lossy().into_owned()
}

fn scenario(name: &str, s: &TestServer, args: Value) -> Command {
    let scheme = if s.ca.is_some() { "https" } else { "http" };
    let mut c = Command::new("node");
    c.arg(browser_dir().join("console.mjs"))
        .args([name, &format!("{scheme}://{}", s.http), &args.to_string()])
        .env("CHROMIUM", chromium())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// The script's JSON answer; fails the test with its output if it failed.
fn answer(out: std::process::Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stdout.lines().last().unwrap_or("");
    let v: Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("browser script said {stdout:?} / {stderr:?}: {e}"));
    assert_eq!(v["ok"], true, "browser script failed: {v:#}\n{stderr}");
    assert_eq!(v["pageErrors"], json!([]), "{v:#}");
    v
}

fn run(name: &str, s: &TestServer, args: Value) -> Value {
    answer(scenario(name, s, args).output().expect("run node"))
}

/// A field device config: `streams` test patterns of 320x180 at `fps`.
fn field_config(s: &TestServer, streams: u32, fps: u32) -> String {
    let sc: Vec<Value> = (0..streams)
        .map(|_| json!({"fps": fps, "bps": 300, "width": 320, "height": 180}))
        .collect();
    json!({"device_id": "f", "projectid": "p", "password": "fpw", "device_streams": streams,
           "server": s.ws, "streams_config": sc})
    .to_string()
}

fn numbers(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap_or(f64::NAN))
        .collect()
}

#[test]
fn grid_of_four_decodes_switches_and_swaps_without_a_gap() {
    if !browser_ready() {
        return;
    }
    // 15 fps, 320x180: four decoders in headless Chromium on a 2-core machine. (Chromium
    // runs with vsync off so that it presents every frame it can.)
    const FPS: u32 = 15;
    let s = TestServer::start();
    s.standard();
    let (mut field, _out) = start_field(&s, &field_config(&s, 4, FPS));
    let v = run(
        "grid",
        &s,
        json!({"device": "p/r1", "password": "rpw", "gwid": "p/f",
               "screenshot": screenshot("console.png")}),
    );
    eprintln!("{v:#}");
    let _ = field.kill();
    assert_eq!(v["errors"], json!([]), "{v:#}");

    // Each of the four windows decodes its own stream: frames keep coming.
    let (before, after) = (
        numbers(&v["decoding"]["before"]),
        numbers(&v["decoding"]["after"]),
    );
    for w in 0..4 {
        let got = after[w] - before[w];
        assert!(
            got >= (2 * FPS) as f64 * 0.5,
            "window {w}: {got} frames in 2 s at {FPS} fps ({v:#})"
        );
    }
    // The switched window plays the new stream (the script waited for its `playing`).
    let (b, a) = (
        v["switched"]["before"].as_f64().unwrap(),
        v["switched"]["after"].as_f64().unwrap(),
    );
    assert!(a - b >= FPS as f64 * 0.5, "switched window: {b} -> {a}");

    // Swapping moved the receivers between windows and interrupted neither.
    assert_eq!(
        v["swap"]["windowsAfter"],
        json!([v["swap"]["windowsBefore"][1], v["swap"]["windowsBefore"][0]]),
        "{v:#}"
    );
    // ... and interrupted none of the four receivers. Per receiver, across the swap: the
    // same RTP stream (ssrc), no packet lost, no keyframe asked for (a restarted stream, or
    // a frame the decoder could not use, makes the receiver send PLI or FIR), every frame
    // received decoded (but the few in flight at the snapshot), decoding and presenting
    // went on, and the media time of the frames shown never went back (a stream starting
    // again). Wall-clock gaps between presented frames, and media-time gaps (capture
    // times: a busy field device spaces them out), depend on this machine's load, not on
    // the swap: they are printed with a failure, not asserted.
    let swap = &v["swap"];
    let context = || format!("swap {:#}, baseline {}", swap, v["baseline"]);
    // The server re-routed nothing: a receiver whose stream is connected again is told
    // `connecting`, then `playing` once a new keyframe is in.
    assert_eq!(swap["statesDuringSwap"], json!([]), "{}", context());
    for fd in 0..4 {
        let (b, a) = (&swap["statsBefore"][fd], &swap["statsAfter"][fd]);
        assert!(
            b.is_object() && a.is_object(),
            "conn_fd {fd}: no video stats ({})",
            context()
        );
        assert_eq!(
            a["ssrc"],
            b["ssrc"],
            "conn_fd {fd}: another RTP stream after the swap ({})",
            context()
        );
        for k in ["packetsLost", "pliCount", "firCount"] {
            assert_eq!(
                a[k],
                b[k],
                "conn_fd {fd}: {k} changed across the swap ({})",
                context()
            );
        }
        let count = |x: &Value, k: &str| x[k].as_f64().unwrap_or(f64::NAN);
        let decoded = count(a, "framesDecoded") - count(b, "framesDecoded");
        assert!(
            decoded >= FPS as f64,
            "conn_fd {fd}: {decoded} frames decoded in the 2 s after the swap ({})",
            context()
        );
        if b["framesReceived"].is_number() {
            let received = count(a, "framesReceived") - count(b, "framesReceived");
            assert!(
                received - decoded <= 2.0,
                "conn_fd {fd}: {received} frames received, {decoded} decoded ({})",
                context()
            );
        }
        let shown = swap["framesAfter"][fd].as_f64().unwrap_or(f64::NAN)
            - swap["framesAtSwap"][fd].as_f64().unwrap_or(f64::NAN);
        assert!(
            shown >= FPS as f64 * 0.5,
            "conn_fd {fd}: {shown} frames shown in the 2 s after the swap ({})",
            context()
        );
        assert_eq!(
            swap["mediaBackwards"][fd],
            json!(0),
            "conn_fd {fd}: the media time went back (its stream started again) ({})",
            context()
        );
    }
    // The stats overlay shows fps, bitrate, loss, RTT and latency.
    for t in v["stats"].as_array().unwrap() {
        let t = t.as_str().unwrap_or("");
        for part in ["fps", "kbit/s", "loss", "rtt", "latency"] {
            assert!(t.contains(part), "overlay {t:?} lacks {part}");
        }
    }
}

#[test]
fn master_hands_over_between_two_browsers() {
    if !browser_ready() {
        return;
    }
    let s = TestServer::start();
    s.standard();
    let (mut field, out) = start_field(&s, &field_config(&s, 1, 15));
    let report = "report-from-field-42";
    let mut node = scenario(
        "handover",
        &s,
        json!({"a": ["p/r1", "rpw"], "b": ["p/r2", "rpw"], "gwid": "p/f", "report": report,
               "screenshot": screenshot("console-control.png")}),
    )
    .spawn()
    .expect("run node");

    // What reaches the field device's command line from the consoles.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut control = Vec::new();
    while !control
        .iter()
        .any(|c: &Value| c["text"].as_str().is_some_and(|t| t.contains("ArrowUp")))
    {
        if let Ok(Some(_)) = node.try_wait() {
            let v = answer(node.wait_with_output().expect("node"));
            panic!("the browsers stopped before keyboard input reached the field device: {v:#}; field got {control:?}");
        }
        assert!(
            Instant::now() < deadline,
            "no keyboard input reached the field device; got {control:?}"
        );
        match out.recv_timeout(Duration::from_millis(200)) {
            Ok(v) if v["event"] == "control_data" => control.push(v),
            _ => {}
        }
    }
    writeln!(field.stdin.as_mut().unwrap(), "{report}").unwrap();
    let v = answer(node.wait_with_output().expect("node"));
    eprintln!("{v:#}");
    let _ = field.kill();

    // A was master and B saw it; after B's request A is a guest who cannot send.
    let t = |x: &Value| x.as_str().unwrap_or("").to_string();
    assert!(t(&v["step1"]["a"]).contains("master: p/r1 (you)"), "{v:#}");
    assert!(t(&v["step1"]["b"]).contains("master: p/r1"), "{v:#}");
    assert_eq!(v["step1"]["bSendDisabled"], true);
    assert!(t(&v["step2"]["b"]).contains("master: p/r2 (you)"), "{v:#}");
    assert!(t(&v["step2"]["a"]).contains("master: p/r2"), "{v:#}");
    for k in ["aSendDisabled", "aTextDisabled", "aInputDisabled"] {
        assert_eq!(v["step2"][k], true, "{k}: {v:#}");
    }
    // Only the master's data arrived: the one-off message, then keyboard input JSON.
    assert!(control.iter().all(|c| c["from"] == "p/r2"), "{control:?}");
    assert_eq!(control[0]["text"], "hello from B", "{control:?}");
    assert_eq!(control[0]["qos"], 1);
    let input: Value = serde_json::from_str(control.last().unwrap()["text"].as_str().unwrap())
        .expect("input message is JSON");
    assert_eq!(input["keys"], json!(["ArrowUp"]), "{input}");
    // The report shows in both consoles' logs (the script waited for it in each).
    assert!(t(&v["reportLog"]["a"]).contains(report));
    assert!(t(&v["reportLog"]["b"]).contains(report));

    // The audit log has both grants.
    let (st, audit) = s.api("GET", "/api/v1/projects/p/audit?field_id=p/f", None);
    assert_eq!(st, 200);
    let masters: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["master"].as_str())
        .collect();
    assert_eq!(masters, ["p/r1", "p/r2"], "{audit}");
}

#[test]
fn admin_creates_a_keyed_project_whose_generated_password_logs_in() {
    if !browser_ready() {
        return;
    }
    let s = TestServer::start();
    let v = run(
        "admin",
        &s,
        json!({"token": TOKEN, "project": "acme", "device": "op7",
               "screenshot": screenshot("admin.png")}),
    );
    eprintln!("{v:#}");
    // The project exists with the key the page generated; the device takes only
    // key-derived passwords; the generated one logged the console in.
    let (st, p) = s.api("GET", "/api/v1/projects/acme", None);
    assert_eq!(st, 200);
    assert_eq!(p["Mode"], 1);
    let key = v["key"].as_str().unwrap();
    assert_eq!(p["Key"], key);
    assert!(
        key.len() == 32
            && key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    );
    let (_, d) = s.api("GET", "/api/v1/projects/acme/devices/op7", None);
    assert_eq!(d["key_password_only"], true, "{d}");
    let pw = v["password"].as_str().unwrap();
    let expire: u64 = pw.rsplit('_').next().unwrap().parse().unwrap();
    assert_eq!(
        pw,
        fieldlink_auth::device_password(key, "acme/op7", expire),
        "the page's password is the SPEC §8 derivation"
    );
    assert_eq!(v["loggedInAs"], "acme/op7");
    assert!(
        v["wrongToken"]
            .as_str()
            .unwrap()
            .contains("wrong admin token"),
        "{v:#}"
    );
}

#[test]
fn login_failures_are_explained() {
    if !browser_ready() {
        return;
    }
    let s = TestServer::start();
    s.standard();
    let now_min = now_minutes();
    let expired = fieldlink_auth::device_password(KEY, "p/r1", now_min - 5);
    let v = run(
        "logins",
        &s,
        json!({"tries": [["p/r1", "not-the-password"], ["p/r1", expired], ["p/nobody", "x"],
                         ["p/f", "fpw"]],
               "screenshot": screenshot("login-error.png")}),
    );
    eprintln!("{v:#}");
    let results = v["results"].as_array().unwrap();
    // A wrong password, an unknown device and a field device's id read the same (SPEC §11:
    // no enumeration); only the expired key-derived password says so.
    let expect = [
        "Check the device id",
        "has expired",
        "Check the device id",
        "Check the device id",
    ];
    for (r, want) in results.iter().zip(expect) {
        let m = r["message"].as_str().unwrap_or("");
        assert!(m.starts_with("Login failed: "), "{m:?}");
        assert!(m.contains(want), "{m:?} lacks {want:?}");
        assert_eq!(r["loginShown"], true, "the login form stays: {r}");
        assert_eq!(r["operateShown"], false, "{r}");
    }
    assert_eq!(results.len(), 4);
    let same = |i: usize| results[i]["message"].as_str().unwrap_or("").to_string();
    assert_eq!(same(0), same(2));
    assert_eq!(same(0), same(3));
}

#[test]
fn failures_are_explained_in_the_console() {
    if !browser_ready() {
        return;
    }
    let s = TestServer::start();
    s.project("p", json!({"Mode": 1, "Key": KEY, "WhitelistEnable": 1}));
    s.device("p", "f", "field", "fpw");
    s.device("p", "g", "field", "gpw");
    s.device("p", "r1", "remote", "rpw");
    let (st, v) = s.api(
        "POST",
        "/api/v1/projects/p/whitelist",
        Some(json!({"remote_id": "r1", "field_id": "f"})),
    );
    assert_eq!(st, 201, "{v}");
    let (mut field, _out) = start_field(&s, &field_config(&s, 1, 15));
    let now_min = now_minutes();
    let code = |expire| fieldlink_auth::session_code(KEY, "p/r1", "p/g", expire);
    let v = run(
        "failures",
        &s,
        json!({"device": "p/r1", "password": "rpw", "online": "p/f", "offline": "p/g",
               "expired_code": code(now_min - 1), "code": code(now_min + 60)}),
    );
    eprintln!("{v:#}");
    let _ = field.kill();
    let m = &v["messages"];
    let has = |k: &str, want: &str| {
        let t = m[k].as_str().unwrap_or("");
        assert!(t.contains(want), "{k}: {t:?} lacks {want:?}");
    };
    has("notWhitelisted", "not on the project's whitelist");
    has("expiredCode", "has expired");
    has("offlineBanner", "(offline)");
    has("offlineMaster", "offline");
    has("offlineWindow", "offline");
    has("outOfRange", "stream id does not exist");
    has("outOfRangeWindow", "empty");
}

#[test]
fn a_gb28181_camera_shows_in_admin_and_plays_in_the_console() {
    if !browser_ready() {
        return;
    }
    let (s, sip) = common::gb::gb_server("", &[]);
    let gb_id = "34020000001320000007";
    let mut cam = common::gb::gb_device(
        &sip,
        &["--id", gb_id, "--channels", "2", "--audio-tone", "1000"],
    );
    let cam_out = lines(&mut cam.0);
    wait_line(&cam_out, "gb-device registered", |v| {
        v["event"] == "registered"
    });
    let v = run(
        "gb",
        &s,
        json!({"token": TOKEN, "device": "p/r1", "password": "rpw", "gb_id": gb_id,
               "gwid": format!("p/{gb_id}"), "screenshot": screenshot("admin-gb28181.png")}),
    );
    eprintln!("{v:#}");
    drop(cam);
    assert_eq!(v["gbChannels"], 2, "{v:#}");
    assert!(v["gbRow"].as_str().unwrap().contains("127.0.0.1"), "{v:#}");
    assert!(
        v["frames"].as_f64().unwrap() >= 20.0,
        "a GB28181 channel decoded {} frames in 2 s",
        v["frames"]
    );
    // The channel's G.711 reaches the browser as PCMA and is heard.
    let party = format!("p/{gb_id} #1");
    assert!(
        v["cameraParties"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == &json!(party)),
        "{}",
        v["cameraParties"]
    );
    assert!(
        v["cameraAudio"]["inbound"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["packets"].as_u64() > Some(20)),
        "{}",
        v["cameraAudio"]
    );
    let heard = numbers(&v["cameraHeard"]);
    assert!(
        heard.iter().cloned().fold(0.0, f64::max) > 0.05,
        "the camera's audio is not heard: {heard:?}"
    );
}

#[test]
fn quality_bars_and_a_readable_diagnosis_in_the_console() {
    if !browser_ready() {
        return;
    }
    let s = TestServer::start();
    s.standard();
    // The field device is carried over two loopback addresses (two "modems", redundant
    // mode): the report and the console show both paths.
    let mut cfg: Value = serde_json::from_str(&field_config(&s, 1, 25)).unwrap();
    cfg["network_bind"] = json!(["127.0.0.1", "127.0.0.2"]);
    cfg["media_trans_mode"] = json!(1);
    let (mut field, _out) = start_field(&s, &cfg.to_string());
    let v = run(
        "diagnose",
        &s,
        json!({"device": "p/r1", "password": "rpw", "gwid": "p/f",
               "screenshot": screenshot("console-diagnosis.png")}),
    );
    let _ = field.kill();
    let _ = field.wait();
    eprintln!("{v:#}");
    assert_eq!(v["quality"], "excellent", "{v:#}");
    assert_eq!(v["bars"], "excellent", "{v:#}");
    assert!(
        v["measuring"].as_str().unwrap_or("").contains("measuring"),
        "{v:#}"
    );
    assert_eq!(v["kind"], 1, "{v:#}");
    // The browser measured its side: the report has both, all "ok".
    let remote = &v["report"]["result"][0]["remote"];
    assert_eq!(remote["video_decode"], "ok", "{v:#}");
    assert!(remote["fps"].as_f64().unwrap_or(0.0) > 20.0, "{v:#}");
    assert_eq!(
        v["report"]["result"][0]["field"]["video_capture"], "ok",
        "{v:#}"
    );
    for side in ["field", "remote"] {
        let part = v["report"]["result"][0][side]
            .as_object()
            .expect("both sides");
        for (k, val) in part {
            if val.is_string() {
                assert_eq!(val, "ok", "{side}.{k}: {v:#}");
            }
        }
    }
    // Shown as a table, not JSON; what is flagged (a number, if the machine is busy) is
    // a figure with its cause, never a check.
    let text = v["text"].as_str().unwrap_or("");
    assert!(text.contains("✓ ok") && !text.contains('{'), "{text}");
    let paths = v["report"]["field_paths"].as_array().expect("field_paths");
    assert_eq!(paths.len(), 2, "{v:#}");
    for (i, p) in paths.iter().enumerate() {
        assert_eq!(p["path"], i, "{p}");
        assert_eq!(p["local"], format!("127.0.0.{}", i + 1), "{p}");
        assert_eq!(
            (&p["state"], &p["check"]),
            (&json!("up"), &json!("ok")),
            "{p}"
        );
        // Redundant: each path carries (nearly) every byte.
        assert!(p["share_pct"].as_f64().unwrap_or(0.0) > 80.0, "{p}");
    }
    assert!(
        text.contains("network paths of the field device") && text.contains("127.0.0.2"),
        "{text}"
    );
    for cell in v["badCells"].as_array().expect("cells") {
        let c = cell.as_str().unwrap_or("");
        assert!(
            c.contains('(') && c.chars().next().is_some_and(|ch| ch.is_ascii_digit()),
            "{c}"
        );
    }
}

/// The raw HTTP response to `GET path`.
fn get(s: &TestServer, path: &str) -> String {
    use std::io::Read;
    let mut c = std::net::TcpStream::connect(&s.http).unwrap();
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        s.http
    )
    .unwrap();
    let mut r = String::new();
    c.read_to_string(&mut r).unwrap();
    r
}

#[test]
fn pages_and_assets_are_served_from_the_binary() {
    let s = TestServer::start();
    let page = get(&s, "/").to_ascii_lowercase();
    assert!(page.starts_with("http/1.1 200"), "{page}");
    assert!(page.contains("content-security-policy: default-src 'self'"));
    assert!(page.contains("/assets/console.js"));
    let admin = get(&s, "/admin");
    assert!(admin.contains("/assets/admin.js"), "{admin}");
    for (name, ty) in [
        ("console.js", "text/javascript"),
        ("signal.js", "text/javascript"),
        ("control.js", "text/javascript"),
        ("voice.js", "text/javascript"),
        ("diagnosis.js", "text/javascript"),
        ("common.js", "text/javascript"),
        ("admin.js", "text/javascript"),
        ("style.css", "text/css"),
    ] {
        let r = get(&s, &format!("/assets/{name}")).to_ascii_lowercase();
        assert!(r.starts_with("http/1.1 200"), "{name}: {r}");
        assert!(r.contains(&format!("content-type: {ty}")), "{name}");
    }
    assert!(get(&s, "/assets/../Cargo.toml").starts_with("HTTP/1.1 404"));
    assert!(get(&s, "/assets/nothing.js").starts_with("HTTP/1.1 404"));
    let old = get(&s, "/watch").to_ascii_lowercase();
    assert!(
        old.starts_with("http/1.1 308") && old.contains("location: /"),
        "{old}"
    );
}

/// Voice in the browser: the console hears the field device's 1 kHz tone (level meter,
/// WebRTC audio counters), talks with the ` key from Chromium's fake microphone (a
/// 600 Hz file) and the field device's `--audio-out` gets that tone; a page whose
/// microphone is blocked says so instead of staying silent.
#[test]
fn the_console_hears_the_field_device_and_talks_to_it() {
    if !browser_ready() {
        return;
    }
    let s = TestServer::start();
    s.standard();
    let (up, mic, heard) = (
        s.dir.join("up.wav"),
        s.dir.join("mic.wav"),
        s.dir.join("field-heard.wav"),
    );
    common::audio::write_tone(&up, 48000, 1, 1000.0, 1);
    common::audio::write_tone(&mic, 48000, 1, 600.0, 1);
    let (field, fo) = start_field_with(
        &s,
        &field_config(&s, 1, 10),
        &[
            "--audio-in",
            up.to_str().unwrap(),
            "--audio-out",
            heard.to_str().unwrap(),
        ],
    );
    let v = run(
        "voice",
        &s,
        json!({"device": "p/r1", "password": "rpw", "device2": "p/r2", "password2": "rpw",
               "gwid": "p/f", "fake_audio": mic, "talk_ms": 8000}),
    );
    // The admin API says which parties have audio on.
    let (st, list) = s.api("GET", "/api/v1/projects/p/devices", None);
    assert_eq!(st, 200);
    let f = list
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device_id"] == "f")
        .unwrap();
    assert_eq!(f["audio"], json!({"send": true, "receive": true}), "{f}");
    interrupt(field);
    let jitter = fo.try_iter().filter(|l| l["event"] == "audio_stats").last();
    eprintln!("field's audio lines: {jitter:?}");
    eprintln!(
        "console voice: heard {} · said {} · before {} · after {} · {:?}",
        v["heard"], v["said"], v["statsBefore"], v["statsAfter"], v["deniedNote"]
    );
    let heard_levels = numbers(&v["heard"]);
    assert!(
        heard_levels.iter().cloned().fold(0.0, f64::max) > 0.05,
        "the field device is not heard: {heard_levels:?}"
    );
    let inbound = v["statsBefore"]["inbound"].as_array().unwrap();
    // (Its audio energy counter stays 0: the <audio> element is muted, WebAudio plays.)
    assert!(
        inbound.iter().any(|r| r["packets"].as_u64() > Some(100)),
        "{inbound:?}"
    );
    // The console says whom it hears (the server names the party on each line).
    assert_eq!(v["parties"][0], "p/f", "{}", v["parties"]);
    assert!(v["partiesText"].as_str().unwrap_or("").contains("p/f"));
    assert_eq!(v["talking"], true);
    assert!(v["said"].as_f64() > Some(0.01), "{}", v["said"]);
    let outbound = v["statsAfter"]["outbound"].as_array().unwrap();
    assert!(
        outbound.iter().any(|r| r["packets"].as_u64() > Some(200)),
        "{outbound:?}"
    );
    let samples = common::audio::read_wav(&heard);
    // Chromium's fake microphone runs on its own clock (about 200 ppm off here) and
    // loops its file with a phase jump: one fit over seconds is a poor measure of it,
    // 100 ms windows are what a listener hears.
    // In one of two runs here the first 2 s of talk had silences of 120 and 200 ms
    // (cause not found: the browser's capture start-up on a loaded machine, or its
    // sending); what follows is measured from 2.5 s into the talk.
    let start = samples
        .iter()
        .position(|s| s.unsigned_abs() > 3000)
        .expect("the console's tone reached the field device");
    let samples = &samples[start + 120_000..];
    // A stall in the browser's sending shows as a gap: one of 70 ms was seen in CI (this
    // test alone on 2 cores, with Chromium, node, the server and the field CLI).
    common::audio::assert_tone_gaps("console to field", samples, 600.0, 6.0, 150);
    let local = common::audio::median_snr_db(&samples[..4 * 48000], 600.0);
    eprintln!("console to field: median SNR of 100 ms windows {local:.1} dB");
    assert!(local >= 30.0, "{local}");
    let note = v["deniedNote"].as_str().unwrap_or("");
    assert!(note.contains("blocked"), "{note:?}");
}

/// A HOME whose NSS database (what Chromium on Linux trusts besides its built-in roots)
/// holds the test CA `ca`.
fn home_trusting(dir: &std::path::Path, ca: &std::path::Path) -> PathBuf {
    let db = dir.join("home/.pki/nssdb");
    std::fs::create_dir_all(&db).unwrap();
    let db_arg = format!("sql:{}", db.display());
    let st = Command::new("certutil")
        .args(["-d", &db_arg, "-N", "--empty-password"])
        .status()
        .expect("certutil (libnss3-tools, installed by .ci/run)");
    assert!(st.success());
    let st = Command::new("certutil")
        .args([
            "-d",
            &db_arg,
            "-A",
            "-t",
            "C,,",
            "-n",
            "fieldlink test CA",
            "-i",
        ])
        .arg(ca)
        .status()
        .unwrap();
    assert!(st.success());
    dir.join("home")
}

#[test]
fn the_console_works_over_https_with_a_private_ca() {
    if !browser_ready() {
        return;
    }
    let dir = common::temp_dir("console-tls");
    let ca = common::tls::make_ca(&dir, "console", &["127.0.0.1"]);
    let s = TestServer::start_tls(&ca, "");
    s.standard();
    // The field device verifies the server with the same CA (config.json "certificate").
    std::fs::copy(&ca.ca, s.dir.join("ca.pem")).unwrap();
    let mut config: Value = serde_json::from_str(&field_config(&s, 1, 15)).unwrap();
    config["certificate"] = json!("ca.pem");
    let (mut field, _out) = start_field(&s, &config.to_string());
    let out = scenario(
        "https",
        &s,
        json!({"device": "p/r1", "password": "rpw", "gwid": "p/f"}),
    )
    .env("HOME", home_trusting(&dir, &ca.ca))
    .output()
    .expect("run node");
    // Without the CA in its trust store, Chromium refuses the page.
    let empty_home = dir.join("untrusting");
    std::fs::create_dir_all(&empty_home).unwrap();
    let refused = scenario("https", &s, json!({"device": "p/r1", "password": "rpw"}))
        .env("HOME", &empty_home)
        .output()
        .expect("run node");
    let refused = String::from_utf8_lossy(&refused.stdout);
    assert!(refused.contains("ERR_CERT_AUTHORITY_INVALID"), "{refused}");
    let _ = field.kill();
    let _ = field.wait();
    let v = answer(out);
    assert_eq!(v["protocol"], "https:", "{v:#}");
    assert!(numbers(&v["frames"])[0] > 5.0, "{v:#}");
    let _ = std::fs::remove_dir_all(&dir);
}
