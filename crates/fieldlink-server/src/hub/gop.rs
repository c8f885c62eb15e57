//! What the server knows of one stream of a field device beyond its packets: whether its
//! source works, whether it can make a keyframe on request, and (when it cannot: a camera
//! in passthrough) a copy of the frames since its last keyframe, so that a new receiver
//! starts at once instead of waiting for the camera's next keyframe.

use std::sync::Arc;

use str0m::format::PayloadParams;

/// A cached group of pictures is dropped past this size (a camera with a very long GOP):
/// new receivers then wait for the next keyframe, as with any other source.
pub const MAX_GOP_BYTES: usize = 8 << 20;
pub const MAX_GOP_FRAMES: usize = 600;

/// One cached access unit with its source time (90 kHz) and payload parameters.
#[derive(Debug, Clone)]
pub struct CachedFrame {
    pub data: Arc<[u8]>,
    pub in_t: u64,
    pub params: PayloadParams,
}

/// The frames from the last keyframe on, bounded by [`MAX_GOP_BYTES`]/[`MAX_GOP_FRAMES`].
#[derive(Default)]
pub struct GopCache {
    frames: Vec<CachedFrame>,
    bytes: usize,
}

impl GopCache {
    /// Adds a frame; a keyframe starts a new group. Frames before the first keyframe, or
    /// past the bounds, are not kept.
    pub fn push(&mut self, keyframe: bool, frame: CachedFrame) {
        if keyframe {
            self.frames.clear();
            self.bytes = 0;
        } else if self.frames.is_empty() {
            return;
        }
        self.bytes += frame.data.len();
        self.frames.push(frame);
        if self.bytes > MAX_GOP_BYTES || self.frames.len() > MAX_GOP_FRAMES {
            self.clear();
        }
    }

    pub fn clear(&mut self) {
        self.frames.clear();
        self.bytes = 0;
    }

    /// The cached frames, keyframe first (empty when there is no usable group).
    pub fn frames(&self) -> &[CachedFrame] {
        &self.frames
    }
}

/// The server's view of one field stream's source (SPEC §7 cameras).
pub struct SourceInfo {
    /// Why the source does not work now (from the field device), if it does not.
    pub failed: Option<String>,
    /// False for a camera in passthrough: keyframe requests cannot be honoured.
    pub keyframe_on_request: bool,
    /// Kept only while `keyframe_on_request` is false.
    pub gop: GopCache,
}

impl Default for SourceInfo {
    fn default() -> Self {
        SourceInfo {
            failed: None,
            keyframe_on_request: true,
            gop: GopCache::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use str0m::format::{Codec, CodecSpec, FormatParams};
    use str0m::media::Frequency;

    fn frame(n: usize) -> CachedFrame {
        let params = PayloadParams::new(
            96.into(),
            None,
            CodecSpec {
                codec: Codec::H264,
                clock_rate: Frequency::NINETY_KHZ,
                channels: None,
                format: FormatParams::default(),
            },
        );
        CachedFrame {
            data: vec![0u8; n].into(),
            in_t: n as u64,
            params,
        }
    }

    #[test]
    fn a_group_starts_at_a_keyframe_and_is_bounded() {
        let mut g = GopCache::default();
        g.push(false, frame(10));
        assert!(g.frames().is_empty(), "nothing before the first keyframe");
        g.push(true, frame(100));
        g.push(false, frame(20));
        assert_eq!(g.frames().len(), 2);
        g.push(true, frame(30));
        assert_eq!(g.frames().len(), 1, "a keyframe starts a new group");
        assert_eq!(g.frames()[0].in_t, 30);
        g.push(false, frame(MAX_GOP_BYTES));
        assert!(g.frames().is_empty(), "too large: dropped");
        g.push(false, frame(5));
        assert!(g.frames().is_empty(), "and stays empty until a keyframe");
        g.push(true, frame(1));
        for _ in 0..MAX_GOP_FRAMES {
            g.push(false, frame(1));
        }
        assert!(g.frames().is_empty(), "too many frames: dropped");
    }
}
