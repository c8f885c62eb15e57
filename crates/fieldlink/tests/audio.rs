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
