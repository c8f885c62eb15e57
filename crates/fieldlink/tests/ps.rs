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

/// Our muxer's output read by the independent `mpeg-pes` crate: the video PES payloads
/// are exactly our access units.
#[test]
fn our_ps_mux_is_read_by_the_mpeg_pes_crate() {
    let cfg = TestPatternConfig {
        width: 320,
        height: 180,
        fps: 25.0,
        kbps: 300,
        gop: 25,
    };
    let mut tp = TestPattern::new(0, cfg).unwrap();
    let (mut ps, mut es) = (Vec::new(), Vec::new());
    for i in 0..50u64 {
        let f = tp.next_frame(false).unwrap().unwrap();
        ps.extend(mux_video(&f.data, i * 3600, f.keyframe, stream_type::H264));
        es.extend_from_slice(&f.data);
    }
    assert_eq!(mpeg_pes_view(&ps), es, "video payload differs");
}

/// Video PES payloads as the `mpeg-pes` crate parses them, each PES found by its start
/// code `00 00 01 E0` (never inside H.264 data: 0xE0 is not a valid NAL header).
fn mpeg_pes_view(ps: &[u8]) -> Vec<u8> {
    let mut payload = Vec::new();
    let mut at = 0;
    while let Some(i) = ps[at..].windows(4).position(|w| w == [0, 0, 1, 0xE0]) {
        let p = mpeg_pes::PesPacket::parse(&ps[at + i..]).expect("mpeg-pes parses the PES");
        payload.extend_from_slice(p.payload);
        at += i + 6 + usize::from(p.pes_packet_length);
    }
    payload
}

/// A program stream made by GStreamer's `mpegpsmux` (x264 video) is read by our demuxer
/// frame by frame: as many frames as ffprobe counts, the same bytes the `mpeg-pes` crate
/// finds, and the access units written out as Annex-B are read by ffprobe again.
#[test]
fn gstreamer_mpegpsmux_output_is_read_by_our_demuxer() {
    if Command::new("gst-launch-1.0")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install GStreamer (gstreamer1.0-tools, -plugins-bad, -plugins-ugly)"
        );
        eprintln!("gst-launch-1.0 missing: GStreamer cross-check skipped");
        return;
    }
    let dir = std::env::temp_dir().join(format!("fieldlink-gst-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gst.mpg");
    let out = Command::new("gst-launch-1.0")
        .args([
            "-q",
            "videotestsrc",
            "num-buffers=50",
            "!",
            "video/x-raw,width=320,height=240,framerate=25/1",
            "!",
            "x264enc",
            "key-int-max=25",
            "!",
            "h264parse",
            "!",
            "mpegpsmux",
            "!",
            "filesink",
        ])
        .arg(format!("location={}", file.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ps = std::fs::read(&file).unwrap();
    let count = |path: &std::path::Path, format: &str| -> u64 {
        let out = Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-f",
                format,
                "-count_frames",
                "-show_entries",
            ])
            .args(["stream=nb_read_frames", "-of", "json"])
            .arg(path)
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["streams"][0]["nb_read_frames"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    };
    let frames_ffprobe = count(&file, "mpeg");
    assert_eq!(frames_ffprobe, 50);

    let mut d = Demuxer::new();
    let mut frames = Vec::new();
    for chunk in ps.chunks(1400) {
        frames.extend(d.push(chunk).unwrap().into_iter().filter(|f| f.video));
    }
    frames.extend(d.flush());
    assert_eq!(d.video_type(), stream_type::H264);
    assert_eq!(
        frames.len() as u64,
        frames_ffprobe,
        "frames from our demuxer"
    );
    assert!(fieldlink_media::is_h264_keyframe(&frames[0].data));
    let ours: Vec<u8> = frames.iter().flat_map(|f| f.data.iter().copied()).collect();
    assert_eq!(
        ours,
        mpeg_pes_view(&ps),
        "our demuxer and the mpeg-pes crate disagree"
    );
    let es = dir.join("back.h264");
    std::fs::write(&es, &ours).unwrap();
    assert_eq!(count(&es, "h264"), 50, "re-read as Annex-B");
    let _ = std::fs::remove_dir_all(&dir);
}
