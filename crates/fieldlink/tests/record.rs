//! SPEC §2 recording: `record_config` per connected stream writes fragmented MP4 segments
//! with the requested names and lengths, each readable on its own (checked with ffprobe).

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use fieldlink_sdk::record::{RecordConfig, RecordSettings};
use fieldlink_sdk::video::{TestPattern, TestPatternConfig};
use fieldlink_sdk::{Event, FieldDevice, RemoteDevice, StreamState};
use serde_json::Value;

fn ffprobe(path: &std::path::Path) -> Option<Value> {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_format",
            "-show_streams",
            "-count_frames",
            "-of",
            "json",
        ])
        .arg(path)
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "ffprobe {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_config_writes_playable_segments() {
    let has_ffprobe = Command::new("ffprobe").arg("-version").output().is_ok();
    assert!(
        has_ffprobe || std::env::var_os("CI").is_none(),
        "CI must install ffmpeg (ffprobe)"
    );
    let s = TestServer::start();
    s.standard();
    let mut fc = s.cfg("p/f", "fpw");
    fc.streams = 2;
    let (field, _fe) = FieldDevice::connect(fc).await.unwrap();
    for i in 0..2 {
        // A keyframe every second: segments end within one second of the target.
        let tp = TestPatternConfig {
            width: 320,
            height: 180,
            fps: 25.0,
            kbps: 300,
            gop: 25,
        };
        field
            .start_video(i, TestPattern::new(i, tp).unwrap())
            .unwrap();
    }
    let dir = s.dir.join("rec");
    let mut rc = s.cfg("p/r1", "rpw");
    rc.streams = 2;
    rc.record = Some(RecordSettings {
        dir: dir.clone(),
        segment_secs: 60,
    });
    let (r, mut re) = RemoteDevice::connect(rc).await.unwrap();
    let cfg = RecordConfig::parse(
        r#"{"file_names":[{"file":"test","duration":2},{"file":"test01","duration":2}]}"#,
    )
    .unwrap();
    r.connect_streams_recorded(&id("p/f"), &[0, 1], &[0, 1], Some(&cfg))
        .await
        .unwrap();
    expect_event(&mut re, "playing", |e| {
        matches!(
            e,
            Event::StreamState {
                state: StreamState::Playing,
                ..
            }
        )
    })
    .await;
    drain(&mut re, Duration::from_millis(7500)).await;
    r.disconnect_all().await.unwrap();
    // The next frame event closes the recordings; closing the device does too.
    r.close().await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    for base in ["test", "test01"] {
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().to_string()))
            .filter(|n| n.starts_with(&format!("{base}_")) && n.ends_with(".mp4"))
            .collect();
        files.sort();
        assert!(files.len() >= 3, "{base}: {files:?}");
        assert_eq!(
            &files[..3],
            [
                format!("{base}_0001.mp4"),
                format!("{base}_0002.mp4"),
                format!("{base}_0003.mp4")
            ]
        );
        if !has_ffprobe {
            eprintln!("ffprobe missing: segment contents not checked");
            continue;
        }
        // Every complete segment: H.264 320x180, 2 s to 3 s long (target + at most one GOP).
        for f in &files[..files.len() - 1] {
            let v = ffprobe(&dir.join(f)).unwrap();
            let st = &v["streams"][0];
            assert_eq!(
                (
                    st["codec_name"].as_str(),
                    st["width"].as_u64(),
                    st["height"].as_u64()
                ),
                (Some("h264"), Some(320), Some(180)),
                "{f}: {v}"
            );
            let d: f64 = v["format"]["duration"].as_str().unwrap().parse().unwrap();
            assert!((2.0..3.05).contains(&d), "{f}: duration {d}");
            let frames: u64 = st["nb_read_frames"].as_str().unwrap().parse().unwrap();
            assert!((48..=77).contains(&frames), "{f}: {frames} frames");
        }
    }
}

/// Recordings carry the field device's audio next to its video: ffprobe lists an H.264
/// and an Opus stream in each complete segment, and ffmpeg decodes the Opus back to the
/// field's 1 kHz tone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recordings_carry_the_field_devices_audio() {
    if Command::new("ffprobe").arg("-version").output().is_err() {
        assert!(std::env::var_os("CI").is_none(), "CI must install ffmpeg");
        eprintln!("ffmpeg missing: test skipped");
        return;
    }
    let s = TestServer::start();
    s.standard();
    let mut fc = s.cfg("p/f", "fpw");
    fc.streams = 1;
    fc.audio.enable = true;
    fc.audio.external = true;
    let (field, _fe) = FieldDevice::connect(fc).await.unwrap();
    let tp = TestPatternConfig {
        width: 320,
        height: 180,
        fps: 25.0,
        kbps: 300,
        gop: 25,
    };
    field
        .start_video(0, TestPattern::new(0, tp).unwrap())
        .unwrap();
    let input = field.audio_input();
    let pusher = tokio::spawn(async move {
        let mut tone = fieldlink_sdk::audio::tone::Tone::new(1000.0, 48000, 10000.0);
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        loop {
            tick.tick().await;
            let _ = input.push(48000, 1, &tone.next_frame());
        }
    });
    let dir = s.dir.join("rec");
    let mut rc = s.cfg("p/r1", "rpw");
    rc.streams = 1;
    rc.audio.receive = true;
    rc.audio.play = Some(fieldlink_sdk::audio::Playback::Outside);
    rc.record = Some(RecordSettings {
        dir: dir.clone(),
        segment_secs: 2,
    });
    let (r, mut re) = RemoteDevice::connect(rc).await.unwrap();
    r.connect_streams(&id("p/f"), &[0], &[0]).await.unwrap();
    drain(&mut re, Duration::from_millis(7000)).await;
    r.close().await;
    pusher.abort();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "mp4"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "{files:?}");
    // The first segment may open before the first audio packet; the next ones have it.
    for f in &files[1..files.len() - 1] {
        let v = ffprobe(f).unwrap();
        let codecs: Vec<&str> = v["streams"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|s| s["codec_name"].as_str())
            .collect();
        assert_eq!(codecs, ["h264", "opus"], "{}: {v}", f.display());
        let audio = &v["streams"][1];
        let packets: u64 = audio["nb_read_frames"].as_str().unwrap().parse().unwrap();
        assert!(packets >= 150, "{}: {packets} audio packets", f.display());
        let pcm = Command::new("ffmpeg")
            .args(["-v", "error", "-i"])
            .arg(f)
            .args([
                "-map", "0:a", "-f", "s16le", "-ac", "1", "-ar", "48000", "-",
            ])
            .output()
            .unwrap();
        assert!(
            pcm.status.success(),
            "{}",
            String::from_utf8_lossy(&pcm.stderr)
        );
        let samples: Vec<i16> = pcm
            .stdout
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect();
        assert!(samples.len() >= 48000 * 3 / 2, "{} samples", samples.len());
        // A segment's decoder starts mid-stream: Opus's predictors settle in ~200 ms.
        let fit = fieldlink_sdk::audio::tone::fit(&samples[24000..], 48000, 1000.0);
        eprintln!(
            "{}: {codecs:?}, {packets} audio packets, {fit:?}",
            f.display()
        );
        assert!(
            (fit.hz - 1000.0).abs() < 1.0 && fit.snr_db > 30.0,
            "{fit:?}"
        );
    }
}
