//! Our MPEG-PS muxer's output, made from real H.264 (openh264), is read by ffprobe as a
//! program stream with the right codec, size and frame count, and our demuxer gives back
//! the same access units.

use std::process::Command;

use fieldlink_media::ps::{mux_video, stream_type, Demuxer};
use fieldlink_sdk::video::{TestPattern, TestPatternConfig};
use fieldlink_sdk::VideoSource;
use serde_json::Value;

#[test]
fn ps_mux_is_read_by_ffprobe_and_by_our_demuxer() {
    let cfg = TestPatternConfig {
        width: 320,
        height: 180,
        fps: 25.0,
        kbps: 300,
        gop: 25,
    };
    let mut tp = TestPattern::new(0, cfg).unwrap();
    let mut aus = Vec::new();
    let mut ps = Vec::new();
    for i in 0..50u64 {
        let f = tp.next_frame(false).unwrap().unwrap();
        ps.extend(mux_video(&f.data, i * 3600, f.keyframe, stream_type::H264));
        aus.push(f.data);
    }
    let mut d = Demuxer::new();
    let mut back = Vec::new();
    for chunk in ps.chunks(1400) {
        back.extend(d.push(chunk).unwrap());
    }
    back.extend(d.flush());
    assert_eq!(back.len(), 50);
    assert!(
        back.iter().zip(&aus).all(|(f, a)| &f.data == a),
        "demuxed access units differ"
    );

    let has_ffprobe = Command::new("ffprobe").arg("-version").output().is_ok();
    if !has_ffprobe {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install ffmpeg (ffprobe)"
        );
        eprintln!("ffprobe missing: PS file not checked");
        return;
    }
    let path = std::env::temp_dir().join(format!("fieldlink-ps-{}.ps", std::process::id()));
    std::fs::write(&path, &ps).unwrap();
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-f",
            "mpeg",
            "-show_streams",
            "-count_frames",
            "-of",
            "json",
        ])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let st = &v["streams"][0];
    assert_eq!(
        (
            st["codec_name"].as_str(),
            st["width"].as_u64(),
            st["height"].as_u64()
        ),
        (Some("h264"), Some(320), Some(180)),
        "{v}"
    );
    let frames: u64 = st["nb_read_frames"].as_str().unwrap().parse().unwrap();
    assert_eq!(frames, 50, "{v}");
}
