//! Transcode (`protocol: "normal"`, SPEC §7): a camera's H.264 (openh264) or MJPEG
//! (zune-jpeg) is decoded, scaled to the stream's size and encoded again as H.264 at the
//! stream's frame rate and bitrate, which then follows the network like any encoder.

use std::time::{Duration, SystemTime};

use openh264::formats::{YUVBuffer, YUVSource};

use crate::camera::{Camera, CameraCodec, CameraFrame, CameraMsg, RtspCameraConfig};
use crate::encode::{check_size, H264Encoder};
use crate::{EncodedFrame, ErrorCode, Picture, SdkError, VideoSource};

/// What the transcoded stream looks like: the same settings as any stream the SDK
/// encodes (`kbps` is the highest bitrate; adaptation goes down to
/// [`crate::encode::MIN_KBPS`]).
pub type TranscodeConfig = crate::video::TestPatternConfig;

/// A camera transcoded to H.264.
pub struct Transcode {
    camera: Camera,
    cfg: TranscodeConfig,
    encoder: H264Encoder,
    h264: Option<openh264::decoder::Decoder>,
    /// The newest decoded picture and when its frame arrived.
    latest: Option<(Picture, SystemTime)>,
    /// After a gap, H.264 frames wait for a keyframe (a decoder fed a broken reference
    /// chain shows garbage).
    waiting_keyframe: bool,
    /// Why the camera is down, while it is.
    down: Option<String>,
    /// When the last keyframe was forced, and whether a request waits for the spacing.
    last_forced: Option<std::time::Instant>,
    force_pending: bool,
}

/// Forced keyframes are at least this far apart. A camera's detailed picture makes
/// keyframes of tens of KB; on a congested uplink each one overflows the queue, the loss
/// brings another request, and a keyframe at every request starved the link (seen in
/// tests/loss.rs under load). A request inside the spacing waits for it, it is not lost.
const MIN_FORCED_KEYFRAME_GAP: Duration = Duration::from_millis(500);

impl Transcode {
    pub fn start(cam: &RtspCameraConfig, cfg: TranscodeConfig) -> Result<Transcode, SdkError> {
        // openh264 decodes H.264; zune-jpeg MJPEG. No H.265 decoder is built in.
        const ACCEPT: &[CameraCodec] = &[CameraCodec::H264, CameraCodec::Jpeg];
        check_size(cfg.width, cfg.height)?;
        if !(cfg.fps > 0.0 && cfg.fps <= 120.0) {
            return Err(SdkError::new(
                ErrorCode::BadRequest,
                "fps must be in (0, 120]",
            ));
        }
        Ok(Transcode {
            camera: Camera::start(cam, ACCEPT, "normal")?,
            encoder: H264Encoder::new(cfg.fps, cfg.kbps, cfg.gop)?,
            cfg,
            h264: None,
            latest: None,
            waiting_keyframe: true,
            down: None,
            last_forced: None,
            force_pending: false,
        })
    }

    /// The bitrate the encoder targets now, kbit/s.
    pub fn current_kbps(&self) -> u32 {
        self.encoder.current_kbps()
    }

    fn take(&mut self, msg: CameraMsg) {
        match msg {
            CameraMsg::Down(why) => {
                self.down = Some(why);
                self.latest = None;
                self.h264 = None;
                self.waiting_keyframe = true;
            }
            CameraMsg::Frame(f) => {
                self.down = None;
                match self.decode(&f) {
                    Ok(Some(p)) => self.latest = Some((p, f.arrived)),
                    Ok(None) => {}
                    Err(why) => {
                        tracing::debug!(camera = self.camera.name(), "decode: {why}");
                        self.waiting_keyframe = true;
                    }
                }
            }
        }
    }

    fn decode(&mut self, f: &CameraFrame) -> Result<Option<Picture>, String> {
        match f.codec {
            CameraCodec::Jpeg => decode_jpeg(&f.data).map(Some),
            CameraCodec::H264 => {
                if f.gap {
                    self.waiting_keyframe = true;
                }
                if self.waiting_keyframe && !f.keyframe {
                    return Ok(None);
                }
                self.waiting_keyframe = false;
                if self.h264.is_none() {
                    self.h264 = Some(
                        openh264::decoder::Decoder::new().map_err(|e| format!("openh264: {e}"))?,
                    );
                }
                let Some(d) = self.h264.as_mut() else {
                    return Ok(None);
                };
                let yuv = d.decode(&f.data).map_err(|e| e.to_string())?;
                Ok(yuv.map(|y| picture_of(&y)))
            }
            CameraCodec::H265 => Err("no H.265 decoder in this build".into()),
        }
    }
}

/// Copies a decoded picture out of the decoder's strided buffers.
pub(crate) fn picture_of(yuv: &impl YUVSource) -> Picture {
    let (w, h) = yuv.dimensions();
    let (sy, su, sv) = yuv.strides();
    let plane = |p: &[u8], stride: usize, w: usize, h: usize| -> Vec<u8> {
        let mut out = Vec::with_capacity(w * h);
        for r in 0..h {
            out.extend_from_slice(&p[r * stride..r * stride + w]);
        }
        out
    };
    Picture {
        width: w,
        height: h,
        y: plane(yuv.y(), sy, w, h),
        u: plane(yuv.u(), su, w / 2, h / 2),
        v: plane(yuv.v(), sv, w / 2, h / 2),
    }
}

/// One JPEG to I420 (zune-jpeg gives full-resolution YCbCr; chroma is averaged 2×2).
pub fn decode_jpeg(data: &[u8]) -> Result<Picture, String> {
    use zune_core::colorspace::ColorSpace;
    use zune_core::options::DecoderOptions;
    let opts = DecoderOptions::default()
        .jpeg_set_out_colorspace(ColorSpace::YCbCr)
        .set_max_width(8192)
        .set_max_height(8192);
    let mut d = zune_jpeg::JpegDecoder::new_with_options(std::io::Cursor::new(data), opts);
    let px = d.decode().map_err(|e| format!("JPEG: {e:?}"))?;
    let (w, h) = d.dimensions().ok_or("JPEG without size")?;
    // Even sizes only (I420); an odd last row/column is dropped.
    let (w, h) = (w & !1, h & !1);
    let stride = d.dimensions().map_or(w, |(sw, _)| sw) * 3;
    if w == 0 || h == 0 || px.len() < stride * h {
        return Err(format!("JPEG: {} bytes for {w}x{h}", px.len()));
    }
    let mut y = vec![0u8; w * h];
    let (mut u, mut v) = (vec![0u8; w * h / 4], vec![0u8; w * h / 4]);
    for r in 0..h {
        let row = &px[r * stride..];
        for c in 0..w {
            y[r * w + c] = row[c * 3];
        }
    }
    for r in 0..h / 2 {
        let (a, b) = (&px[2 * r * stride..], &px[(2 * r + 1) * stride..]);
        for c in 0..w / 2 {
            let avg = |k: usize| {
                let i = 2 * c * 3 + k;
                ((a[i] as u16 + a[i + 3] as u16 + b[i] as u16 + b[i + 3] as u16 + 2) / 4) as u8
            };
            u[r * (w / 2) + c] = avg(1);
            v[r * (w / 2) + c] = avg(2);
        }
    }
    Ok(Picture {
        width: w,
        height: h,
        y,
        u,
        v,
    })
}

/// Bilinear scaling of one plane (16.16 fixed point), `w×h` to `ow×oh`.
pub(crate) fn scale_plane(src: &[u8], w: usize, h: usize, ow: usize, oh: usize, out: &mut Vec<u8>) {
    if w == ow && h == oh {
        out.extend_from_slice(&src[..w * h]);
        return;
    }
    let fx = ((w.max(1) as u64) << 16) / ow.max(1) as u64;
    let fy = ((h.max(1) as u64) << 16) / oh.max(1) as u64;
    for oy in 0..oh {
        // Sample at pixel centres.
        let sy = ((oy as u64 * fy) + fy / 2).saturating_sub(1 << 15);
        let (y0, wy) = ((sy >> 16) as usize, (sy & 0xffff) as u32);
        let y1 = (y0 + 1).min(h - 1);
        let (r0, r1) = (&src[y0.min(h - 1) * w..], &src[y1 * w..]);
        for ox in 0..ow {
            let sx = ((ox as u64 * fx) + fx / 2).saturating_sub(1 << 15);
            let (x0, wx) = ((sx >> 16) as usize, (sx & 0xffff) as u32);
            let x0 = x0.min(w - 1);
            let x1 = (x0 + 1).min(w - 1);
            let top = r0[x0] as u32 * (65536 - wx) + r0[x1] as u32 * wx;
            let bot = r1[x0] as u32 * (65536 - wx) + r1[x1] as u32 * wx;
            let v = ((top as u64 * (65536 - wy) as u64 + bot as u64 * wy as u64) >> 32) as u8;
            out.push(v);
        }
    }
}

/// A picture scaled to `ow×oh`, as one I420 buffer.
pub fn scale_i420(p: &Picture, ow: usize, oh: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(ow * oh * 3 / 2);
    scale_plane(&p.y, p.width, p.height, ow, oh, &mut out);
    let (cw, ch) = (p.width / 2, p.height / 2);
    scale_plane(&p.u, cw, ch, ow / 2, oh / 2, &mut out);
    scale_plane(&p.v, cw, ch, ow / 2, oh / 2, &mut out);
    out
}

impl VideoSource for Transcode {
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

    /// Decodes what the camera sent since the last call and encodes the newest picture,
    /// so the output holds the configured frame rate whatever the camera's.
    fn next_frame(&mut self, force_keyframe: bool) -> Result<Option<EncodedFrame>, SdkError> {
        let msgs: Vec<CameraMsg> = self.camera.drain().collect();
        for m in msgs {
            self.take(m);
        }
        if self.latest.is_none() && self.down.is_none() {
            // Starting: wait a little for the camera's first picture.
            if let Some(m) = self.camera.recv(Duration::from_millis(20)) {
                self.take(m);
            }
        }
        if let Some(why) = &self.down {
            return Err(SdkError::new(ErrorCode::SourceFailed, why.clone()));
        }
        let Some((pic, arrived)) = &self.latest else {
            return Ok(None);
        };
        let (w, h) = (self.cfg.width as usize, self.cfg.height as usize);
        let yuv = YUVBuffer::from_vec(scale_i420(pic, w, h), w, h);
        let capture = *arrived;
        let now = std::time::Instant::now();
        let mut force = force_keyframe || self.force_pending;
        if force
            && self
                .last_forced
                .is_some_and(|t| now - t < MIN_FORCED_KEYFRAME_GAP)
        {
            (force, self.force_pending) = (false, true);
        } else if force {
            (self.last_forced, self.force_pending) = (Some(now), false);
        }
        Ok(self
            .encoder
            .encode(&yuv, force)?
            .map(|(data, keyframe)| EncodedFrame {
                codec: fieldlink_media::VideoCodec::H264,
                data,
                keyframe,
                capture,
            }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_keeps_flat_areas_and_edges() {
        let (w, h) = (64, 32);
        // Left half black, right half white.
        let y: Vec<u8> = (0..w * h)
            .map(|i| if i % w < w / 2 { 0 } else { 255 })
            .collect();
        let p = Picture {
            width: w,
            height: h,
            y,
            u: vec![128; w * h / 4],
            v: vec![64; w * h / 4],
        };
        let out = scale_i420(&p, 32, 16);
        assert_eq!(out.len(), 32 * 16 * 3 / 2);
        assert_eq!(out[0], 0);
        assert_eq!(out[31], 255);
        assert!(out[32 * 16..32 * 16 + 128].iter().all(|&u| u == 128));
        assert!(out[32 * 16 + 128..].iter().all(|&v| v == 64));
        let up = scale_i420(&p, 128, 64);
        assert_eq!(up.len(), 128 * 64 * 3 / 2);
        assert_eq!((up[0], up[127]), (0, 255));
        assert_eq!(scale_i420(&p, 64, 32)[..w * h], p.y[..]);
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert!(check_size(1920, 1080).is_ok());
        for (w, h) in [(15, 16), (17, 16), (8192, 1080), (0, 0)] {
            assert!(check_size(w, h).is_err(), "{w}x{h}");
        }
    }

    #[test]
    fn broken_jpegs_are_errors_not_panics() {
        assert!(decode_jpeg(&[]).is_err());
        assert!(decode_jpeg(&[0xff, 0xd8, 0xff, 0xe0, 0, 16]).is_err());
    }

    /// A 64x48 JPEG (ffmpeg's testsrc2, 4:2:0), as an MJPEG camera sends them.
    const SMALL: &[u8] = include_bytes!("../testdata/small.jpg");

    #[test]
    fn a_real_jpeg_decodes_to_i420() {
        let p = decode_jpeg(SMALL).unwrap();
        assert_eq!((p.width, p.height), (64, 48));
        assert_eq!(
            (p.y.len(), p.u.len(), p.v.len()),
            (64 * 48, 32 * 24, 32 * 24)
        );
        // testsrc2 is colourful: the planes are not flat.
        assert!(p.y.iter().max() > p.y.iter().min());
        assert!(p.u.iter().max() > p.u.iter().min());
    }

    proptest::proptest! {
        /// A camera's JPEG is untrusted: a real one with bytes changed, or cut short,
        /// gives a picture or an error, never a panic.
        #[test]
        fn damaged_jpegs_decode_or_fail(
            edits in proptest::collection::vec((0usize..4096, proptest::num::u8::ANY), 1..16),
            cut in 0usize..4096,
        ) {
            let mut j = SMALL.to_vec();
            for (at, b) in edits {
                let n = j.len();
                j[at % n] = b;
            }
            let _ = decode_jpeg(&j);
            let _ = decode_jpeg(&SMALL[..cut.min(SMALL.len())]);
        }
    }
}
