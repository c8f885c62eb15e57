//! Media helpers with no I/O: Annex-B NAL unit splitting, keyframe detection for H.264 and
//! H.265, RTP packetization of access units, and the fieldlink frame-metadata SEI (stream id, frame counter, capture time)
//! that the test-pattern source puts in every access unit.

pub mod annexb;
pub mod fmp4;
pub mod g711;
pub mod packetize;
pub mod ps;
pub mod sei;

pub use annexb::{access_units, is_h264_keyframe, is_h265_keyframe, nal_units, ParamSets};
pub use sei::{FrameMeta, SeiError};

/// Share of sent bytes that retransmissions may take before a sender drops queued resends.
/// str0m's default (0.15) gives up repairs at ~10% loss, which the product must survive;
/// at 0.5 a sender still cannot spend most of a congested link on repairs.
pub const RTX_RATIO_CAP: f32 = 0.5;

/// How long sent video packets stay available for retransmission, and how many.
pub const RTX_CACHE: (usize, std::time::Duration) = (2000, std::time::Duration::from_secs(3));

/// The video codecs fieldlink carries end to end (Annex-B access units).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum VideoCodec {
    #[default]
    H264,
    H265,
}

impl VideoCodec {
    /// True if `au` can start decoding (H.264 IDR, H.265 IRAP).
    pub fn is_keyframe(self, au: &[u8]) -> bool {
        match self {
            VideoCodec::H264 => is_h264_keyframe(au),
            VideoCodec::H265 => is_h265_keyframe(au),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            VideoCodec::H264 => "H.264",
            VideoCodec::H265 => "H.265",
        }
    }
}
