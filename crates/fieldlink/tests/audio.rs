//! Voice intercom end to end (SPEC §3): tones sent with `fieldlink field --audio-in` and
//! `fieldlink remote ... --audio-in` through the real server, received with `--audio-out`,
//! and measured (frequency, signal-to-noise ratio, gaps); bad external frames refused.

mod common;

use std::process::{Child, Stdio};
use std::time::Duration;

use common::audio::{assert_tone, read_wav, write_tone};
use common::*;
use fieldlink_sdk::audio::tone::fit;
use fieldlink_sdk::ErrorCode;

fn field_config(s: &TestServer, extra: &str) -> String {
    format!(
        r#"{{"device_id":"f","projectid":"p","password":"fpw","device_streams":0,"server":"{}"{extra}}}"#,
        s.ws
    )
}

fn remote(s: &TestServer, extra: &[&str]) -> Child {
    fieldlink()
        .args(["remote", "--server", &s.ws, "--device-id", "p/r1"])
        .args(["--password", "rpw", "--json", "--max-streams", "0"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Uplink, the SPEC's default direction: a 1 kHz tone from a 44.1 kHz stereo file on the
/// field device arrives in the remote's 48 kHz WAV at 1000 ± 5 Hz with SNR ≥ 30 dB.
#[test]
fn a_field_tone_arrives_at_the_remote() {
    let s = TestServer::start();
    s.standard();
    let tone = s.dir.join("tone.wav");
    write_tone(&tone, 44100, 2, 1000.0, 1);
    let (field, _fo) = start_field_with(
        &s,
        &field_config(&s, ""),
        &["--audio-in", tone.to_str().unwrap()],
    );
    let out = s.dir.join("heard.wav");
    let mut r = remote(
        &s,
        &[
            "connect",
            "--gwid",
            "p/f",
            "--duration",
            "6",
            "--audio-out",
            out.to_str().unwrap(),
        ],
    );
    let ro = lines(&mut r);
    wait_line(&ro, "session", |v| v["event"] == "session_open");
    assert!(r.wait().unwrap().success());
    assert_tone("uplink", &read_wav(&out), 1000.0, 30.0);
    interrupt(field);
}

/// Both directions at once: the field device sends 1 kHz and hears the remote's 600 Hz
/// (16 kHz mono file), the remote hears 1 kHz; neither hears itself. Each side's WAV is
/// finalised on SIGINT.
#[test]
fn field_and_remote_talk_both_ways_at_once() {
    let s = TestServer::start();
    s.standard();
    let (up, down) = (s.dir.join("up.wav"), s.dir.join("down.wav"));
    write_tone(&up, 48000, 1, 1000.0, 1);
    write_tone(&down, 16000, 1, 600.0, 1);
    let (field_heard, remote_heard) = (
        s.dir.join("field-heard.wav"),
        s.dir.join("remote-heard.wav"),
    );
    let (field, _fo) = start_field_with(
        &s,
        &field_config(&s, ""),
        &[
            "--audio-in",
            up.to_str().unwrap(),
            "--audio-out",
            field_heard.to_str().unwrap(),
        ],
    );
    let mut r = remote(
        &s,
        &[
            "connect",
            "--gwid",
            "p/f",
            "--audio-in",
            down.to_str().unwrap(),
            "--audio-out",
            remote_heard.to_str().unwrap(),
        ],
    );
    let ro = lines(&mut r);
    wait_line(&ro, "session", |v| v["event"] == "session_open");
    std::thread::sleep(Duration::from_secs(6));
    interrupt(r);
    interrupt(field);
    let at_remote = read_wav(&remote_heard);
    let at_field = read_wav(&field_heard);
    assert_tone("uplink", &at_remote, 1000.0, 30.0);
    assert_tone("downlink", &at_field, 600.0, 30.0);
    // Only the other side: the 1 kHz fit to what the field heard is noise.
    let own = fit(&at_field[at_field.len() - 3 * 48000..], 48000, 1000.0);
    assert!(own.snr_db < 0.0, "the field device hears itself: {own:?}");
}

/// External frames of the wrong size, rate or channel count are errors returned to the
/// caller; a device without external audio says AUDIO_OFF.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_external_frames_are_refused() {
    let s = TestServer::start();
    s.standard();
    let mut fc = s.cfg("p/f", "fpw");
    fc.audio.enable = true;
    fc.audio.external = true;
    let (field, _fe) = fieldlink_sdk::FieldDevice::connect(fc).await.unwrap();
    assert!(field.push_audio(48000, 1, &[0; 480]).is_ok());
    assert!(field.push_audio(44100, 2, &[0; 882]).is_ok());
    for (rate, ch, n) in [
        (48000, 1, 481),
        (48000, 2, 480),
        (22050, 1, 220),
        (8000, 0, 0),
    ] {
        let e = field.push_audio(rate, ch, &vec![0; n]).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadAudioFrame, "{rate} Hz {ch} ch {n}");
        assert!(
            e.message.contains("10 ms")
                || e.message.contains("Hz")
                || e.message.contains("channels")
        );
    }
    let (r, _re) = s.remote("p/r1", "rpw").await;
    let e = r.push_audio(48000, 1, &[0; 480]).unwrap_err();
    assert_eq!(e.code, ErrorCode::AudioOff);
}

/// A private PulseAudio server with one null sink (it keeps real time and records back
/// what is played, as `vsink.monitor`), reached through its own socket only.
struct Pulse {
    child: Child,
    dir: std::path::PathBuf,
    server: String,
}

impl Pulse {
    /// None (and the test skips) where PulseAudio is not installed; CI must have it.
    fn start(dir: &std::path::Path) -> Option<Pulse> {
        if std::process::Command::new("pulseaudio")
            .arg("--version")
            .output()
            .is_err()
        {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must install pulseaudio"
            );
            eprintln!("pulseaudio missing: ALSA device test skipped (see .ci/run)");
            return None;
        }
        let dir = dir.join("pulse");
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("native");
        let child = std::process::Command::new("pulseaudio")
            .args([
                "-n",
                "--daemonize=no",
                "--exit-idle-time=-1",
                "--disallow-exit",
            ])
            .arg(format!(
                "--load=module-native-protocol-unix socket={}",
                socket.display()
            ))
            // At 48 kHz mono, as the devices open it, so PulseAudio resamples nothing (one CI
            // run with its default sink heard 600.14 Hz at 4.5 dB; the cause is not pinned
            // down, and a rate adapting resampler is the likely one).
            .arg("--load=module-null-sink sink_name=vsink rate=48000 channels=1")
            .env("PULSE_RUNTIME_PATH", &dir)
            .env("PULSE_STATE_PATH", &dir)
            .env("HOME", &dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = format!("unix:{}", socket.display());
        let p = Pulse { child, dir, server };
        let deadline = std::time::Instant::now() + WAIT;
        while !p.pactl(&["info"]) {
            assert!(
                std::time::Instant::now() < deadline,
                "PulseAudio did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(p.pactl(&["set-default-sink", "vsink"]));
        assert!(p.pactl(&["set-default-source", "vsink.monitor"]));
        Some(p)
    }

    fn pactl(&self, args: &[&str]) -> bool {
        std::process::Command::new("pactl")
            .args(["--server", &self.server])
            .args(args)
            .env("HOME", &self.dir)
            .output()
            .is_ok_and(|o| o.status.success())
    }
}

impl Drop for Pulse {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// ALSA devices named as the user writes them: the field device plays what the remote
/// says on ALSA "pulse" and captures ALSA "pulse" (the null sink's monitor), so the
/// remote's 600 Hz tone comes back to it through a real-time sound server, the field's
/// playback and capture devices and the platform both ways.
#[test]
fn alsa_devices_play_and_capture_in_real_time() {
    let s = TestServer::start();
    s.standard();
    let Some(pulse) = Pulse::start(&s.dir) else {
        return;
    };
    let tone = s.dir.join("tone.wav");
    write_tone(&tone, 48000, 1, 600.0, 1);
    let cfg = s.dir.join("field.json");
    std::fs::write(
        &cfg,
        field_config(
            &s,
            r#","audio_receive":1,"audio_play":"pulse","audio_record":"pulse""#,
        ),
    )
    .unwrap();
    let mut field = fieldlink()
        .args(["field", "--config"])
        .arg(&cfg)
        .env("PULSE_SERVER", &pulse.server)
        .env("HOME", &pulse.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let fo = lines(&mut field);
    wait_line(&fo, "field ready", |v| v["event"] == "ready");
    let back = s.dir.join("back.wav");
    let mut r = remote(
        &s,
        &[
            "connect",
            "--gwid",
            "p/f",
            "--duration",
            "8",
            "--audio-in",
            tone.to_str().unwrap(),
            "--audio-out",
            back.to_str().unwrap(),
        ],
    );
    let ro = lines(&mut r);
    wait_line(&ro, "session", |v| v["event"] == "session_open");
    assert!(r.wait().unwrap().success());
    interrupt(field);
    let warnings: Vec<_> = fo.try_iter().filter(|v| v["event"] == "warning").collect();
    assert!(warnings.is_empty(), "{warnings:?}");
    // Two device threads and a sound server more in the path: a busy CI machine stalls
    // them for longer than the network path (a 251 ms gap seen in one CI run).
    common::audio::assert_tone_gaps("through ALSA and back", &read_wav(&back), 600.0, 20.0, 300);
}

/// A device name ALSA does not know is a clear warning naming it and listing the
/// devices there are; the device runs on without that side of audio.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_alsa_device_is_named_with_the_ones_there_are() {
    let s = TestServer::start();
    s.standard();
    let mut fc = s.cfg("p/f", "fpw");
    fc.audio.enable = true;
    fc.audio.record = Some("hw:7,3,0".into());
    let (field, mut fe) = fieldlink_sdk::FieldDevice::connect(fc).await.unwrap();
    let w = expect_event(&mut fe, "audio warning", |e| {
        matches!(
            e,
            fieldlink_sdk::Event::Warning {
                code: ErrorCode::AudioDevice,
                ..
            }
        )
    })
    .await;
    let fieldlink_sdk::Event::Warning { message, .. } = w else {
        unreachable!()
    };
    eprintln!("{message}");
    assert!(
        message.contains("\"hw:7,3,0\"") && message.contains("capture"),
        "{message}"
    );
    assert!(
        message.contains("null"),
        "the listing names ALSA's null device: {message}"
    );
    use fieldlink_sdk::audio::AudioDirection;
    let n = field.audio_device_count(AudioDirection::Capture);
    assert!(n > 0);
    let names: Vec<String> = (0..n)
        .filter_map(|i| field.audio_device_name(AudioDirection::Capture, i))
        .collect();
    assert!(names.iter().any(|d| d == "null"), "{names:?}");
    // Selecting by index: one past the end is refused; "null" opens.
    let e = field
        .set_audio_device(AudioDirection::Capture, n)
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::AudioDevice);
    let null = names.iter().position(|d| d == "null").unwrap();
    field
        .set_audio_device(AudioDirection::Capture, null)
        .await
        .unwrap();
    // Everything else goes on: control data still flows.
    let (r, _re) = s.remote("p/r1", "rpw").await;
    r.open_session(&id("p/f")).await.unwrap();
}

/// No remote hears another remote: with two operators in session, what r1 says (600 Hz)
/// reaches the field device, and r2 hears only the field device (1 kHz).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remotes_do_not_hear_each_other() {
    use fieldlink_sdk::audio::{tone::Tone, Playback};
    use fieldlink_sdk::Event;
    let s = TestServer::start();
    s.standard();
    let talker = |cfg: &mut fieldlink_sdk::DeviceConfig| {
        cfg.audio.enable = true;
        cfg.audio.external = true;
        cfg.audio.receive = true;
        cfg.audio.play = Some(Playback::Outside);
    };
    let mut fc = s.cfg("p/f", "fpw");
    talker(&mut fc);
    let (field, mut fe) = fieldlink_sdk::FieldDevice::connect(fc).await.unwrap();
    let mut c1 = s.cfg("p/r1", "rpw");
    talker(&mut c1);
    let (r1, _e1) = fieldlink_sdk::RemoteDevice::connect(c1).await.unwrap();
    let mut c2 = s.cfg("p/r2", "rpw");
    c2.audio.receive = true;
    c2.audio.play = Some(Playback::Outside);
    let (r2, mut e2) = fieldlink_sdk::RemoteDevice::connect(c2).await.unwrap();
    r1.open_session(&id("p/f")).await.unwrap();
    r2.open_session(&id("p/f")).await.unwrap();
    let speak = |input: fieldlink_sdk::AudioInput, hz: f64| {
        tokio::spawn(async move {
            let mut tone = Tone::new(hz, 48000, 10000.0);
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            loop {
                tick.tick().await;
                let _ = input.push(48000, 1, &tone.next_frame());
            }
        })
    };
    let a = speak(field.audio_input(), 1000.0);
    let b = speak(r1.audio_input(), 600.0);
    let collect = |ev: &mut fieldlink_sdk::Events| {
        let mut out = Vec::new();
        while let Some(e) = ev.try_recv() {
            if let Event::MixedAudio(m) = e {
                out.extend(m.samples);
            }
        }
        out
    };
    let _ = (collect(&mut fe), collect(&mut e2));
    tokio::time::sleep(Duration::from_secs(5)).await;
    a.abort();
    b.abort();
    let (at_field, at_r2) = (collect(&mut fe), collect(&mut e2));
    let tail = |v: &[i16]| v[v.len().saturating_sub(3 * 48000)..].to_vec();
    let f = fit(&tail(&at_field), 48000, 600.0);
    let r = fit(&tail(&at_r2), 48000, 1000.0);
    let leak = fit(&tail(&at_r2), 48000, 600.0);
    eprintln!("field hears {f:?}; r2 hears {r:?}; r1's tone at r2 {leak:?}");
    let (fm, rm) = (
        common::audio::median_snr_db(&tail(&at_field), 600.0),
        common::audio::median_snr_db(&tail(&at_r2), 1000.0),
    );
    eprintln!("median SNR of 100 ms windows: field {fm:.1} dB, r2 {rm:.1} dB");
    assert!(fm > 20.0 && (f.hz - 600.0).abs() < 5.0, "{f:?} {fm}");
    assert!(rm > 20.0 && (r.hz - 1000.0).abs() < 5.0, "{r:?} {rm}");
    assert!(leak.snr_db < 0.0, "r2 hears r1: {leak:?}");
}
