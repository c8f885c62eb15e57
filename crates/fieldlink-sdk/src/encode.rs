//! The H.264 encoder behind every source that encodes (test pattern, transcoded camera):
//! openh264 with a target bitrate that follows the network within configured bounds, and
//! a smaller picture when the target is too low for the configured one.

use std::time::{Duration, Instant};

use openh264::encoder::{
    BitRate, Encoder, EncoderConfig, FrameRate, IntraFramePeriod, RateControlMode,
};
use openh264::formats::{YUVBuffer, YUVSource};
use openh264::OpenH264API;

use crate::{ErrorCode, SdkError};

/// Lowest bitrate an encoding source adapts down to, kbit/s.
pub const MIN_KBPS: u32 = 100;

/// Picture sizes the encoder takes: even, 16x16..4096x2304.
pub fn check_size(w: u32, h: u32) -> Result<(), SdkError> {
    if w < 16 || h < 16 || !w.is_multiple_of(2) || !h.is_multiple_of(2) || w > 4096 || h > 2304 {
        return Err(SdkError::new(
            ErrorCode::BadRequest,
            format!("picture size {w}x{h}: must be even, 16x16..4096x2304"),
        ));
    }
    Ok(())
}

/// Bits per pixel below which the picture steps down to half its width and height, and
/// at or above which (at the larger size) it steps back up. openh264 cannot go much
/// below ~0.04 bit/pixel (its quantizer's limit): a lower target is then met only by
/// skipping frames, and the keyframes stay large (640x360: ~20 KB, 160 ms of a 1 Mbit/s
/// link). Half the size has a quarter of the pixels, so the gap between the two is the
/// hysteresis: after a step in either direction the picture is well inside its band.
pub const BPP_DOWN: f64 = 0.07;
pub const BPP_UP: f64 = 0.11;
/// Steps at most to a quarter of the configured width and height.
pub const MAX_LEVEL: u32 = 2;
/// No further step within this time of the last (each one costs a keyframe).
pub const LADDER_HOLD: Duration = Duration::from_secs(4);

/// Output beyond the target that the encoder lets stand, in seconds of the target: more
/// and the next frames are skipped (not encoded) until it has drained, as libWebRTC's
/// frame dropper does. A keyframe is 5–10 predicted frames: behind a link the source
/// fills to 85 %, its excess drains at the remaining 15 %, and every frame in those
/// seconds arrives late (seen behind a 400 kbit/s `tc tbf`: 2–6 s of late frames after
/// each keyframe). Skipping the frames after it drains that excess at the link's rate.
pub const MAX_DEBT_SECS: f64 = 0.1;

/// The picture-size ladder: level `n` encodes at the configured size / 2^n.
#[derive(Debug, Default)]
pub struct Ladder {
    level: u32,
    changed: Option<Instant>,
}

impl Ladder {
    pub fn level(&self) -> u32 {
        self.level
    }

    /// The level for a target of `kbps` at `now` for a `w×h` picture at `fps`.
    pub fn follow(&mut self, kbps: u32, w: u32, h: u32, fps: f64, now: Instant) -> u32 {
        if self
            .changed
            .is_some_and(|t| now.duration_since(t) < LADDER_HOLD)
        {
            return self.level;
        }
        let bpp = |level: u32| {
            let pixels = f64::from(w >> level) * f64::from(h >> level) * fps.max(1.0);
            f64::from(kbps) * 1000.0 / pixels
        };
        let smallest_ok = |level: u32| (w >> level) >= 64 && (h >> level) >= 64;
        let before = self.level;
        if self.level < MAX_LEVEL && bpp(self.level) < BPP_DOWN && smallest_ok(self.level + 1) {
            self.level += 1;
        } else if self.level > 0 && bpp(self.level - 1) >= BPP_UP {
            self.level -= 1;
        }
        if self.level != before {
            self.changed = Some(now);
        }
        self.level
    }
}

/// An openh264 encoder whose output always lets a receiver start at a keyframe.
pub struct H264Encoder {
    encoder: Encoder,
    fps: f64,
    gop: u32,
    params: fieldlink_media::ParamSets,
    max_kbps: u32,
    current_kbps: u32,
    /// openh264 initializes on the first frame; options can be changed only after.
    started: bool,
    ladder: Ladder,
    /// The ladder level `encoder` was made for.
    level: u32,
    /// Bits sent beyond the target so far ([`MAX_DEBT_SECS`]).
    debt_bits: f64,
}

/// Changes a running encoder's target bitrate (openh264 `ENCODER_OPTION_BITRATE`), which
/// the safe API of the openh264 crate does not offer.
fn set_encoder_bitrate(encoder: &mut Encoder, kbps: u32) -> bool {
    let mut info = openh264_sys2::SBitrateInfo {
        iLayer: openh264_sys2::SPATIAL_LAYER_ALL,
        iBitrate: kbps.saturating_mul(1000).min(i32::MAX as u32) as std::os::raw::c_int,
    };
    // SAFETY: the encoder was initialized by its first encode (callers check); the option
    // reads an `SBitrateInfo` through the pointer during the call only, and `info` outlives
    // it. The bitrate is not a parameter the crate relies on.
    let rc = unsafe {
        encoder.raw_api().set_option(
            openh264_sys2::ENCODER_OPTION_BITRATE,
            std::ptr::from_mut(&mut info).cast(),
        )
    };
    rc == 0
}

impl H264Encoder {
    /// `kbps`: the configured (highest) bitrate; `gop`: frames between periodic keyframes.
    pub fn new(fps: f64, kbps: u32, gop: u32) -> Result<H264Encoder, SdkError> {
        Ok(H264Encoder {
            encoder: Self::openh264(fps, kbps, gop)?,
            fps,
            gop,
            params: Default::default(),
            max_kbps: kbps,
            current_kbps: kbps,
            started: false,
            ladder: Ladder::default(),
            level: 0,
            debt_bits: 0.0,
        })
    }

    fn openh264(fps: f64, kbps: u32, gop: u32) -> Result<Encoder, SdkError> {
        let config = EncoderConfig::new()
            .bitrate(BitRate::from_bps(kbps.saturating_mul(1000)))
            .max_frame_rate(FrameRate::from_hz(fps as f32))
            .intra_frame_period(IntraFramePeriod::from_num_frames(gop.max(1)))
            // The bitrate is a budget: the crate's default (quality mode) overshot a
            // 200 kbit/s target by 2x. When even the coarsest quantizer does not fit it
            // (after a keyframe, or a target below what the picture size allows), the
            // rate control skips a frame rather than queue at the bottleneck.
            .rate_control_mode(RateControlMode::Bitrate)
            .skip_frames(true)
            // Keyframes only when due or asked for: scene-change detection made one every
            // ~16 frames of a moving picture (each 5x a predicted frame).
            .scene_change_detect(false);
        Encoder::with_api_config(OpenH264API::from_source(), config)
            .map_err(|e| SdkError::new(ErrorCode::Internal, format!("openh264: {e}")))
    }

    /// The bitrate the encoder targets now, kbit/s.
    pub fn current_kbps(&self) -> u32 {
        self.current_kbps
    }

    /// How many times smaller than the configured picture, per side, it is encoded now.
    pub fn downscale(&self) -> u32 {
        1 << self.level
    }

    /// Follows the estimate within [100, configured] kbit/s, retuning the running encoder
    /// (no keyframe) when the target moves by more than 10%, and choosing the picture
    /// size for it ([`Ladder`]) for a configured `w×h`.
    pub fn set_target_kbps(&mut self, kbps: u32, w: u32, h: u32) {
        let want = kbps.clamp(MIN_KBPS.min(self.max_kbps), self.max_kbps);
        self.ladder.follow(want, w, h, self.fps, Instant::now());
        if !self.started || want.abs_diff(self.current_kbps) * 10 <= self.current_kbps {
            return; // small moves are noise
        }
        if set_encoder_bitrate(&mut self.encoder, want) {
            self.current_kbps = want;
        }
    }

    /// Encodes one picture of the configured size (scaled down to the ladder's size
    /// first): the Annex-B access unit (SPS/PPS before every keyframe) and whether it is
    /// a keyframe, or `None` when the rate control skipped it.
    pub fn encode(
        &mut self,
        yuv: &YUVBuffer,
        force_keyframe: bool,
    ) -> Result<Option<(Vec<u8>, bool)>, SdkError> {
        let level = self.ladder.level();
        if level != self.level {
            // A new size is a new encoder (its first frame a keyframe with new SPS/PPS;
            // decoders follow). It starts at the configured bitrate, the highest its
            // rate control then allows, and is retuned to the target after that frame.
            self.encoder = Self::openh264(self.fps, self.max_kbps, self.gop)?;
            self.level = level;
            self.started = false;
        }
        let scaled;
        let input = if level == 0 {
            yuv
        } else {
            let (w, h) = yuv.dimensions();
            let (ow, oh) = ((w >> level) & !1, (h >> level) & !1);
            let mut out = Vec::with_capacity(ow * oh * 3 / 2);
            crate::transcode::scale_plane(yuv.y(), w, h, ow, oh, &mut out);
            crate::transcode::scale_plane(yuv.u(), w / 2, h / 2, ow / 2, oh / 2, &mut out);
            crate::transcode::scale_plane(yuv.v(), w / 2, h / 2, ow / 2, oh / 2, &mut out);
            scaled = YUVBuffer::from_vec(out, ow, oh);
            &scaled
        };
        let budget = f64::from(self.current_kbps) * 1000.0;
        self.debt_bits = (self.debt_bits - budget / self.fps.max(1.0)).max(0.0);
        if self.debt_bits > budget * MAX_DEBT_SECS && !force_keyframe {
            return Ok(None);
        }
        if force_keyframe {
            self.encoder.force_intra_frame();
        }
        let encoded = self
            .encoder
            .encode(input)
            .map_err(|e| SdkError::new(ErrorCode::Internal, format!("openh264 encode: {e}")))?
            .to_vec();
        if !self.started {
            self.started = true;
            if self.current_kbps != self.max_kbps {
                set_encoder_bitrate(&mut self.encoder, self.current_kbps);
            }
        }
        if encoded.is_empty() {
            return Ok(None);
        }
        self.debt_bits += encoded.len() as f64 * 8.0;
        // A forced keyframe comes without SPS/PPS; receivers starting on it need them.
        let au = self.params.complete(&encoded);
        let keyframe = fieldlink_media::is_h264_keyframe(&au);
        Ok(Some((au, keyframe)))
    }
}
