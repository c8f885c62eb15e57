//! Video sources of a field device. Each stream has one [`VideoSource`]; the SDK asks it
//! for a frame at its frame rate and tells it when a receiver needs a keyframe.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fieldlink_media::annexb::{h264_nal_type, nal_units};
use fieldlink_media::{FrameMeta, VideoCodec};

use openh264::formats::YUVBuffer;

use crate::encode::H264Encoder;

use crate::{ErrorCode, SdkError};

/// One encoded access unit (Annex-B).
#[derive(Debug, Clone)]
pub struct EncodedFrame {
    pub codec: VideoCodec,
    pub data: Vec<u8>,
    pub keyframe: bool,
    /// When the picture was taken (the field device's clock).
    pub capture: SystemTime,
}

/// A stream's source: a camera, a file, a test pattern.
pub trait VideoSource: Send + 'static {
    /// Frames per second the SDK asks for.
    fn fps(&self) -> f64;
    /// The next frame; `force_keyframe` when a receiver needs one now. `Ok(None)` skips.
    fn next_frame(&mut self, force_keyframe: bool) -> Result<Option<EncodedFrame>, SdkError>;
    /// The network can carry about `kbps` for this stream now. Sources that encode adapt
    /// (never above their configured bitrate); passthrough sources ignore it.
    fn set_target_kbps(&mut self, _kbps: u32) {}
    /// The highest bitrate the source encodes at, kbit/s (`None`: it does not encode,
    /// e.g. a camera in passthrough). Diagnostics compare what was sent with it.
    fn kbps(&self) -> Option<u32> {
        None
    }
    /// False for sources that deliver frames at their own pace (a camera in passthrough):
    /// the SDK then calls `next_frame` again at once, and the source blocks (briefly,
    /// returning `Ok(None)` when nothing came) until its next frame.
    fn paced(&self) -> bool {
        true
    }
    /// False when the source cannot make a keyframe on request (a camera's own encoder
    /// in passthrough): the server then starts new receivers from its copy of the
    /// stream's last keyframe onwards instead of asking.
    fn keyframe_on_request(&self) -> bool {
        true
    }
}

impl<T: VideoSource + ?Sized> VideoSource for Box<T> {
    fn fps(&self) -> f64 {
        (**self).fps()
    }
    fn next_frame(&mut self, force_keyframe: bool) -> Result<Option<EncodedFrame>, SdkError> {
        (**self).next_frame(force_keyframe)
    }
    fn set_target_kbps(&mut self, kbps: u32) {
        (**self).set_target_kbps(kbps)
    }
    fn kbps(&self) -> Option<u32> {
        (**self).kbps()
    }
    fn paced(&self) -> bool {
        (**self).paced()
    }
    fn keyframe_on_request(&self) -> bool {
        (**self).keyframe_on_request()
    }
}

/// Size, frame rate and bitrate of a stream the SDK encodes: a test pattern, or a camera
/// in transcode mode ([`crate::transcode::TranscodeConfig`]).
#[derive(Debug, Clone, Copy)]
pub struct TestPatternConfig {
    pub width: u32,
    pub height: u32,
    pub fps: f64,
    /// Target bitrate, kbit/s.
    pub kbps: u32,
    /// Frames between periodic keyframes (none while the network holds the target under
    /// 90 % of `kbps`: keyframes then come only when a receiver asks).
    pub gop: u32,
}

impl Default for TestPatternConfig {
    fn default() -> Self {
        TestPatternConfig {
            width: 640,
            height: 360,
            fps: 25.0,
            kbps: 800,
            gop: 50,
        }
    }
}

/// A moving picture with the stream id, the frame counter and the capture time drawn in,
/// encoded with openh264. Every access unit also carries a [`FrameMeta`] SEI with the same
/// numbers, so a receiver can check which stream and frame it got without decoding.
pub struct TestPattern {
    stream_id: u32,
    cfg: TestPatternConfig,
    frame: u64,
    encoder: H264Encoder,
    yuv: Vec<u8>,
    /// Grain added to the luma ([`GRAIN`]), each row from its own offset in this table.
    grain: Vec<i8>,
}

/// Amplitude of the grain on the test pattern's luma, ±levels. A pure slide has nothing
/// new to code but its leading edge: openh264 topped out at ~650 kbit/s for 640x360
/// whatever its target, so behind a 1 Mbit/s link the pattern could never reach the
/// 70 % the adaptation is asked to settle at. Grain, as a camera sensor has, is
/// information that scales with the quantizer: at a low target it is quantized away, at a
/// high one it takes the bits (±2 met every target from 100 to 1500 kbit/s within 3 %).
pub const GRAIN: i8 = 2;
/// Grain values the rows are read from (64 K, whatever the picture's size).
const GRAIN_TABLE: usize = 1 << 16;

impl TestPattern {
    pub fn new(stream_id: u32, cfg: TestPatternConfig) -> Result<TestPattern, SdkError> {
        crate::encode::check_size(cfg.width, cfg.height)?;
        if !(1.0..=120.0).contains(&cfg.fps) {
            return Err(SdkError::new(
                ErrorCode::BadRequest,
                "test pattern fps must be 1..=120",
            ));
        }
        let encoder = H264Encoder::new(cfg.fps, cfg.kbps, cfg.gop)?;
        let n = (cfg.width * cfg.height) as usize;
        // A row is read from any offset below GRAIN_TABLE: one row more stays inside.
        let mut x = 0x2545_F491_u32;
        let span = 2 * GRAIN as u32 + 1;
        let grain = (0..GRAIN_TABLE + cfg.width as usize)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x % span) as i8 - GRAIN
            })
            .collect();
        Ok(TestPattern {
            stream_id,
            cfg,
            frame: 0,
            encoder,
            yuv: vec![0; n + n / 2],
            grain,
        })
    }

    /// The bitrate the encoder targets now, kbit/s.
    pub fn current_kbps(&self) -> u32 {
        self.encoder.current_kbps()
    }

    fn draw(&mut self, capture_ms: u64) {
        let (w, h) = (self.cfg.width as usize, self.cfg.height as usize);
        let t = self.frame as usize;
        let (y_plane, uv) = self.yuv.split_at_mut(w * h);
        // The whole picture slides 4 px a frame (one motion vector): an encoder can go as
        // low as a congested link needs, which bitrate adaptation relies on.
        for y in 0..h {
            // A new offset per row and frame: no motion vector finds the last frame's grain.
            let from = (t.wrapping_mul(0x9E37_79B9) ^ y.wrapping_mul(0x85EB_CA6B)) % GRAIN_TABLE;
            let grain = &self.grain[from..from + w];
            for (x, g) in grain.iter().enumerate() {
                let sx = x + t * 4;
                let v = (sx / 8 + y / 8) % 2 * 96 + 48 + ((sx + y) % 64);
                // v is in 48..=207: the grain cannot wrap.
                y_plane[y * w + x] = (v as i32 + i32::from(*g)) as u8;
            }
        }
        // A tint per stream, so streams are told apart at a glance.
        let (u, v) = (
            [90u8, 200, 60, 180][self.stream_id as usize % 4],
            [200u8, 90, 110, 60][self.stream_id as usize % 4],
        );
        let (up, vp) = uv.split_at_mut(w * h / 4);
        up.fill(u);
        vp.fill(v);
        let scale = (h / 40).max(1);
        let lines = [
            format!("S{}", self.stream_id),
            format!("F{}", self.frame),
            format!("T{}", capture_ms % 100_000_000),
        ];
        for (i, text) in lines.iter().enumerate() {
            draw_text(
                y_plane,
                w,
                h,
                scale * 2,
                scale * 2 + i * scale * 7,
                scale,
                text,
            );
        }
    }
}

/// 3×5 glyphs for `0-9`, `S`, `F`, `T`, one bit per pixel, rows top to bottom.
fn glyph(c: char) -> [u8; 5] {
    match c {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 2],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        'S' => [7, 4, 7, 1, 7],
        'F' => [7, 4, 6, 4, 4],
        'T' => [7, 2, 2, 2, 2],
        _ => [0; 5],
    }
}

fn draw_text(
    y_plane: &mut [u8],
    w: usize,
    h: usize,
    x0: usize,
    y0: usize,
    scale: usize,
    text: &str,
) {
    for (k, c) in text.chars().enumerate() {
        let g = glyph(c);
        for (row, bits) in g.iter().enumerate() {
            // Three glyph columns and one of spacing, all drawn, so text reads on any background.
            for col in 0..4 {
                let on = col < 3 && bits >> (2 - col) & 1 == 1;
                for dy in 0..scale {
                    for dx in 0..scale {
                        let x = x0 + (k * 4 + col) * scale + dx;
                        let y = y0 + row * scale + dy;
                        if x < w && y < h {
                            y_plane[y * w + x] = if on { 235 } else { 16 };
                        }
                    }
                }
            }
        }
    }
}

impl VideoSource for TestPattern {
    fn fps(&self) -> f64 {
        self.cfg.fps
    }

    fn set_target_kbps(&mut self, kbps: u32) {
        self.encoder
            .set_target_kbps(kbps, self.cfg.width, self.cfg.height);
    }
    fn kbps(&self) -> Option<u32> {
        Some(self.cfg.kbps)
    }

    fn next_frame(&mut self, force_keyframe: bool) -> Result<Option<EncodedFrame>, SdkError> {
        let capture = SystemTime::now();
        let capture_us = capture
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_micros() as u64;
        self.draw(capture_us / 1000);
        let yuv = YUVBuffer::from_vec(
            self.yuv.clone(),
            self.cfg.width as usize,
            self.cfg.height as usize,
        );
        let encoded = self.encoder.encode(&yuv, force_keyframe)?;
        let meta = FrameMeta {
            stream_id: self.stream_id,
            frame: self.frame,
            capture_unix_us: capture_us,
        };
        let Some((encoded, keyframe)) = encoded else {
            // Skipped (the frame dropper): the next frame sent takes its number, so a
            // gap in the numbers is a frame lost on the way.
            return Ok(None);
        };
        self.frame += 1;
        let data = insert_before_first_slice(&encoded, &meta.to_annexb_nal());
        Ok(Some(EncodedFrame {
            codec: VideoCodec::H264,
            data,
            keyframe,
            capture,
        }))
    }
}

/// Puts `nal` (with its start code) before the first slice, after any parameter sets, as
/// H.264 orders SEI.
fn insert_before_first_slice(au: &[u8], nal: &[u8]) -> Vec<u8> {
    let pos = (0..au.len().saturating_sub(4))
        .find(|&i| au[i..i + 4] == [0, 0, 0, 1] && matches!(au[i + 4] & 0x1f, 1 | 5))
        .unwrap_or(0);
    let mut out = Vec::with_capacity(au.len() + nal.len());
    out.extend_from_slice(&au[..pos]);
    out.extend_from_slice(nal);
    out.extend_from_slice(&au[pos..]);
    out
}

/// An H.264 Annex-B file played in a loop at a fixed frame rate. Keyframe requests cannot
/// be honoured; the file's own keyframes are what receivers start on.
pub struct AnnexBFile {
    frames: Vec<(Vec<u8>, bool)>,
    next: usize,
    fps: f64,
}

impl AnnexBFile {
    pub fn open(path: &std::path::Path, fps: f64) -> Result<AnnexBFile, SdkError> {
        let bytes = std::fs::read(path).map_err(|e| {
            SdkError::new(ErrorCode::BadRequest, format!("{}: {e}", path.display()))
        })?;
        let frames = split_access_units(&bytes);
        if frames.is_empty() {
            return Err(SdkError::new(
                ErrorCode::BadRequest,
                format!("{}: no H.264 access units found", path.display()),
            ));
        }
        if !frames.iter().any(|f| f.1) {
            return Err(SdkError::new(
                ErrorCode::BadRequest,
                format!("{}: no keyframe (IDR) in the file", path.display()),
            ));
        }
        if !(1.0..=120.0).contains(&fps) {
            return Err(SdkError::new(ErrorCode::BadRequest, "fps must be 1..=120"));
        }
        Ok(AnnexBFile {
            frames,
            next: 0,
            fps,
        })
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }
}

/// Groups an Annex-B stream into access units: a new one starts at an access unit
/// delimiter, a parameter set or SEI after a picture, or a slice with first_mb_in_slice 0.
pub fn split_access_units(bytes: &[u8]) -> Vec<(Vec<u8>, bool)> {
    let mut out: Vec<(Vec<u8>, bool)> = Vec::new();
    let mut cur: Vec<u8> = Vec::new();
    let (mut has_vcl, mut key) = (false, false);
    for nal in nal_units(bytes) {
        let t = h264_nal_type(nal).unwrap_or(0);
        let vcl = matches!(t, 1 | 5);
        let first_slice = vcl && nal.get(1).is_some_and(|b| b & 0x80 != 0);
        let starts_au = matches!(t, 6..=9) || first_slice;
        if has_vcl && starts_au {
            out.push((std::mem::take(&mut cur), key));
            has_vcl = false;
            key = false;
        }
        cur.extend_from_slice(&[0, 0, 0, 1]);
        cur.extend_from_slice(nal);
        has_vcl |= vcl;
        key |= t == 5;
    }
    if has_vcl {
        out.push((cur, key));
    }
    out
}

impl VideoSource for AnnexBFile {
    fn fps(&self) -> f64 {
        self.fps
    }

    fn next_frame(&mut self, _force_keyframe: bool) -> Result<Option<EncodedFrame>, SdkError> {
        let (data, keyframe) = self.frames[self.next].clone();
        self.next = (self.next + 1) % self.frames.len();
        Ok(Some(EncodedFrame {
            codec: VideoCodec::H264,
            data,
            keyframe,
            capture: SystemTime::now(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_pattern_encodes_keyframes_on_request_with_metadata() {
        let mut tp = TestPattern::new(
            3,
            TestPatternConfig {
                width: 160,
                height: 96,
                fps: 25.0,
                kbps: 300,
                gop: 1000,
            },
        )
        .unwrap();
        let first = tp.next_frame(false).unwrap().unwrap();
        assert!(first.keyframe, "the first frame is a keyframe");
        let second = tp.next_frame(false).unwrap().unwrap();
        assert!(!second.keyframe);
        let forced = tp.next_frame(true).unwrap().unwrap();
        assert!(forced.keyframe, "forced keyframe");
        let meta = FrameMeta::find(&forced.data).unwrap();
        assert_eq!((meta.stream_id, meta.frame), (3, 2));
        // The encoded stream splits back into the same access units.
        let mut all = first.data.clone();
        all.extend(&second.data);
        all.extend(&forced.data);
        let aus = split_access_units(&all);
        assert_eq!(
            aus.iter().map(|a| a.1).collect::<Vec<_>>(),
            [true, false, true]
        );
        assert!(TestPattern::new(
            0,
            TestPatternConfig {
                width: 15,
                ..Default::default()
            }
        )
        .is_err());
    }
}

#[cfg(test)]
mod rate_tests {
    use super::*;

    /// The bitrate of frames 25..125 at `target` kbit/s (no keyframe in them).
    fn kbps_at(target: u32) -> usize {
        let cfg = TestPatternConfig {
            width: 640,
            height: 360,
            fps: 25.0,
            kbps: 1500,
            gop: 1000,
        };
        let mut tp = TestPattern::new(0, cfg).unwrap();
        tp.set_target_kbps(target);
        let mut bytes = 0;
        for i in 0..125 {
            if let Some(f) = tp.next_frame(false).unwrap() {
                if i >= 25 {
                    assert!(!f.keyframe);
                    bytes += f.data.len();
                }
            }
        }
        bytes * 8 / 4 / 1000
    }

    #[test]
    fn the_test_pattern_fills_the_target_it_is_given() {
        // Without grain openh264 made ~650 kbit/s of this picture for any target above
        // that: the pattern could not fill a 1 Mbit/s link.
        for target in [300, 1200] {
            let got = kbps_at(target);
            assert!(
                got * 100 >= target as usize * 90 && got * 100 <= target as usize * 110,
                "{got} kbit/s for a target of {target}"
            );
        }
    }
}

#[cfg(test)]
mod decode_tests {
    use super::*;

    #[test]
    fn test_pattern_decodes_frame_by_frame() {
        let mut tp = TestPattern::new(
            1,
            TestPatternConfig {
                width: 160,
                height: 96,
                fps: 25.0,
                kbps: 200,
                gop: 50,
            },
        )
        .unwrap();
        let mut dec = openh264::decoder::Decoder::new().unwrap();
        let mut ok = 0;
        for _ in 0..5 {
            tp.next_frame(false).unwrap();
        }
        // A decoder that starts at a forced keyframe decodes everything from there.
        for i in 0..30 {
            let f = tp.next_frame(i == 0).unwrap().unwrap();
            match dec.decode(&f.data) {
                Ok(Some(_)) => ok += 1,
                Ok(None) => eprintln!("frame {i}: no picture"),
                Err(e) => eprintln!("frame {i}: {e}"),
            }
        }
        assert_eq!(ok, 30);
    }
}

#[cfg(test)]
mod record_tests {
    use super::*;
    use fieldlink_media::fmp4::{SegmentOut, Segmenter};

    #[test]
    fn segments_start_on_keyframes_and_hold_the_target_duration() {
        let mut tp = TestPattern::new(
            0,
            TestPatternConfig {
                width: 160,
                height: 96,
                fps: 25.0,
                kbps: 200,
                gop: 25,
            },
        )
        .unwrap();
        // Two seconds per segment at 25 fps with a keyframe every second.
        let mut seg = Segmenter::new(2 * 90_000);
        let mut outs = Vec::new();
        for i in 0..130u64 {
            let f = tp.next_frame(false).unwrap().unwrap();
            outs.extend(seg.push(&f.data, i * 3600));
        }
        outs.extend(seg.finish());
        let closes: Vec<(u32, u64)> = outs
            .iter()
            .filter_map(|o| match o {
                SegmentOut::Close { index, duration } => Some((*index, *duration)),
                _ => None,
            })
            .collect();
        assert_eq!(closes.iter().map(|c| c.0).collect::<Vec<_>>(), [1, 2, 3]);
        // Every full segment lasts the target, or at most one GOP (1 s) more.
        for (i, d) in &closes[..2] {
            assert!((2 * 90_000..3 * 90_000).contains(d), "segment {i}: {d}");
        }
        let total: u64 = closes.iter().map(|c| c.1).sum();
        assert_eq!(total, 130 * 3600, "no frame lost or duplicated");
        // Each segment opens with ftyp and moov.
        for o in &outs {
            if let SegmentOut::Open { bytes, .. } = o {
                assert_eq!(&bytes[4..8], b"ftyp");
                assert!(bytes.windows(4).any(|w| w == b"avcC"));
            }
        }
    }
}
