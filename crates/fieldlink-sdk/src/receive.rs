//! Per-receiver frame accounting (pure): frames received, decoded and dropped, and the
//! rule that after a loss the receiver waits for a keyframe instead of handing undecodable
//! frames to the application.

/// What to do with one received frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Admit {
    /// Hand the frame to the application (and the decoder/recorder).
    pub deliver: bool,
    /// Ask the sender for a keyframe now.
    pub request_keyframe: bool,
}

/// Counters of one receiver (conn_fd) since it was connected to its current stream.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct FrameCounts {
    /// Access units that arrived complete.
    pub received: u64,
    /// Pictures the decoder produced (when the SDK decodes).
    pub decoded: u64,
    /// Frames that could not be used: lost in the network (at least one per gap), broken
    /// (decode error), or discarded while waiting for a keyframe after either.
    pub dropped: u64,
    awaiting_keyframe: bool,
}

impl FrameCounts {
    /// One frame arrived. `contiguous` is false when packets were lost before it that
    /// nothing repaired.
    pub fn admit(&mut self, contiguous: bool, keyframe: bool) -> Admit {
        self.received += 1;
        let mut request_keyframe = false;
        if !contiguous {
            self.dropped += 1; // the frame (or more) that went missing
            if !keyframe && !self.awaiting_keyframe {
                request_keyframe = true;
            }
            self.awaiting_keyframe = true;
        }
        if keyframe {
            self.awaiting_keyframe = false;
        }
        if self.awaiting_keyframe {
            self.dropped += 1;
            return Admit {
                deliver: false,
                request_keyframe,
            };
        }
        Admit {
            deliver: true,
            request_keyframe,
        }
    }

    /// The decoder rejected a delivered frame: later frames wait for a keyframe.
    /// Returns whether to ask for one (not already waiting).
    pub fn decode_failed(&mut self) -> bool {
        self.dropped += 1;
        !std::mem::replace(&mut self.awaiting_keyframe, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clean_stream_delivers_every_frame() {
        let mut c = FrameCounts::default();
        assert!(c.admit(true, true).deliver);
        for _ in 0..10 {
            let a = c.admit(true, false);
            assert!(a.deliver && !a.request_keyframe);
        }
        assert_eq!((c.received, c.dropped), (11, 0));
    }

    #[test]
    fn a_gap_holds_frames_until_the_next_keyframe_and_asks_once() {
        let mut c = FrameCounts::default();
        c.admit(true, true);
        let a = c.admit(false, false);
        assert_eq!(
            a,
            Admit {
                deliver: false,
                request_keyframe: true
            }
        );
        let a = c.admit(true, false);
        assert!(!a.deliver && !a.request_keyframe);
        // A second gap while waiting does not ask again.
        assert!(!c.admit(false, false).request_keyframe);
        assert!(c.admit(true, true).deliver);
        assert!(c.admit(true, false).deliver);
        // lost: gap 1 (missing + held), held, gap 2 (missing + held)
        assert_eq!(c.dropped, 5);
        assert_eq!(c.received, 6);
    }

    #[test]
    fn a_gap_right_before_a_keyframe_costs_only_the_lost_frame() {
        let mut c = FrameCounts::default();
        c.admit(true, true);
        let a = c.admit(false, true);
        assert!(a.deliver && !a.request_keyframe);
        assert_eq!(c.dropped, 1);
    }

    #[test]
    fn a_decode_error_waits_for_a_keyframe() {
        let mut c = FrameCounts::default();
        c.admit(true, true);
        assert!(c.decode_failed());
        assert!(!c.decode_failed());
        assert!(!c.admit(true, false).deliver);
        assert!(c.admit(true, true).deliver);
        assert_eq!(c.dropped, 3);
    }
}
