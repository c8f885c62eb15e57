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
