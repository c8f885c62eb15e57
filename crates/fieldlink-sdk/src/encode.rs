//! The H.264 encoder behind every source that encodes (test pattern, transcoded camera):
//! openh264 with a target bitrate that follows the network within configured bounds.

use openh264::encoder::{BitRate, Encoder, EncoderConfig, FrameRate, IntraFramePeriod};
use openh264::formats::YUVBuffer;
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

/// An openh264 encoder whose output always lets a receiver start at a keyframe.
pub struct H264Encoder {
    encoder: Encoder,
    params: fieldlink_media::ParamSets,
    max_kbps: u32,
    current_kbps: u32,
    /// openh264 initializes on the first frame; options can be changed only after.
    started: bool,
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
        let config = EncoderConfig::new()
            .bitrate(BitRate::from_bps(kbps.saturating_mul(1000)))
            .max_frame_rate(FrameRate::from_hz(fps as f32))
            .intra_frame_period(IntraFramePeriod::from_num_frames(gop.max(1)))
            // A live source must hold its frame rate; quality gives way instead.
            .skip_frames(false);
        let encoder = Encoder::with_api_config(OpenH264API::from_source(), config)
            .map_err(|e| SdkError::new(ErrorCode::Internal, format!("openh264: {e}")))?;
        Ok(H264Encoder {
            encoder,
            params: Default::default(),
            max_kbps: kbps,
            current_kbps: kbps,
            started: false,
        })
    }

    /// The bitrate the encoder targets now, kbit/s.
    pub fn current_kbps(&self) -> u32 {
        self.current_kbps
    }

    /// Follows the estimate within [100, configured] kbit/s, retuning the running encoder
    /// (no keyframe) when the target moves by more than 10%.
    pub fn set_target_kbps(&mut self, kbps: u32) {
        let want = kbps.clamp(MIN_KBPS.min(self.max_kbps), self.max_kbps);
        if !self.started || want.abs_diff(self.current_kbps) * 10 <= self.current_kbps {
            return; // small moves are noise
        }
        if set_encoder_bitrate(&mut self.encoder, want) {
            self.current_kbps = want;
        }
    }

    /// Encodes one picture: the Annex-B access unit (SPS/PPS before every keyframe) and
    /// whether it is a keyframe, or `None` when the rate control skipped it.
    pub fn encode(
        &mut self,
        yuv: &YUVBuffer,
        force_keyframe: bool,
    ) -> Result<Option<(Vec<u8>, bool)>, SdkError> {
        if force_keyframe {
            self.encoder.force_intra_frame();
        }
        let encoded = self
            .encoder
            .encode(yuv)
            .map_err(|e| SdkError::new(ErrorCode::Internal, format!("openh264 encode: {e}")))?
            .to_vec();
        self.started = true;
        if encoded.is_empty() {
            return Ok(None);
        }
        // A forced keyframe comes without SPS/PPS; receivers starting on it need them.
        let au = self.params.complete(&encoded);
        let keyframe = fieldlink_media::is_h264_keyframe(&au);
        Ok(Some((au, keyframe)))
    }
}
