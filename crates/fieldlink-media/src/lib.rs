//! Media helpers with no I/O: Annex-B NAL unit splitting, keyframe detection for H.264 and
//! H.265, and the fieldlink frame-metadata SEI (stream id, frame counter, capture time)
//! that the test-pattern source puts in every access unit.

pub mod annexb;
pub mod fmp4;
pub mod ps;
pub mod sei;

pub use annexb::{is_h264_keyframe, nal_units, ParamSets};
pub use sei::{FrameMeta, SeiError};
