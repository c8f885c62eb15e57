//! The fieldlink frame-metadata SEI: an H.264 `user_data_unregistered` SEI message (NAL type
//! 6, payload type 5) with our UUID and a fixed body:
//! `stream_id u32 | frame counter u64 | capture time, UNIX microseconds u64` (big-endian).
//! Decoders ignore it; tests and the SDK read it to know which stream and frame a picture is.

/// Identifies our SEI among other user data.
pub const UUID: [u8; 16] = *b"fieldlink-meta01";
const BODY: usize = 4 + 8 + 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameMeta {
    pub stream_id: u32,
    pub frame: u64,
    pub capture_unix_us: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeiError {
    #[error("not a fieldlink metadata SEI")]
    NotOurs,
}

/// Inserts emulation-prevention bytes (`00 00 0x` with x <= 3 becomes `00 00 03 0x`).
fn escape(rbsp: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rbsp.len() + 4);
    let mut zeros = 0;
    for &b in rbsp {
        if zeros >= 2 && b <= 3 {
            out.push(3);
            zeros = 0;
        }
        out.push(b);
        zeros = if b == 0 { zeros + 1 } else { 0 };
    }
    out
}

fn unescape(ebsp: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ebsp.len());
    let mut zeros = 0;
    for &b in ebsp {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        out.push(b);
        zeros = if b == 0 { zeros + 1 } else { 0 };
    }
    out
}

impl FrameMeta {
    /// The SEI NAL unit with a 4-byte start code, ready to prepend to an access unit.
    pub fn to_annexb_nal(&self) -> Vec<u8> {
        let mut rbsp = vec![5u8, (UUID.len() + BODY) as u8];
        rbsp.extend_from_slice(&UUID);
        rbsp.extend_from_slice(&self.stream_id.to_be_bytes());
        rbsp.extend_from_slice(&self.frame.to_be_bytes());
        rbsp.extend_from_slice(&self.capture_unix_us.to_be_bytes());
        rbsp.push(0x80); // rbsp_trailing_bits
        let mut nal = vec![0, 0, 0, 1, 0x06];
        nal.extend(escape(&rbsp));
        nal
    }

    /// Reads our SEI from one NAL unit (without start code).
    pub fn from_nal(nal: &[u8]) -> Result<FrameMeta, SeiError> {
        if nal.first().map(|b| b & 0x1f) != Some(6) {
            return Err(SeiError::NotOurs);
        }
        let rbsp = unescape(&nal[1..]);
        let want = UUID.len() + BODY;
        if rbsp.len() < 2 + want || rbsp[0] != 5 || rbsp[1] as usize != want || rbsp[2..18] != UUID
        {
            return Err(SeiError::NotOurs);
        }
        let b = &rbsp[18..18 + BODY];
        let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| (u64::from(u32_at(i)) << 32) | u64::from(u32_at(i + 4));
        Ok(FrameMeta {
            stream_id: u32_at(0),
            frame: u64_at(4),
            capture_unix_us: u64_at(12),
        })
    }

    /// Finds our SEI in an Annex-B access unit.
    pub fn find(access_unit: &[u8]) -> Option<FrameMeta> {
        crate::nal_units(access_unit)
            .into_iter()
            .find_map(|n| FrameMeta::from_nal(n).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_with_zero_runs() {
        let m = FrameMeta {
            stream_id: 0,
            frame: 0,
            capture_unix_us: 3,
        };
        let nal = m.to_annexb_nal();
        // Zeros in the body force emulation prevention.
        assert!(nal[5..].windows(3).any(|w| w == [0, 0, 3]));
        let mut au = nal.clone();
        au.extend_from_slice(&[0, 0, 0, 1, 0x65, 0x88, 0x84]);
        assert_eq!(FrameMeta::find(&au), Some(m));
    }

    proptest! {
        #[test]
        fn round_trip_any(stream_id in any::<u32>(), frame in any::<u64>(), t in any::<u64>()) {
            let m = FrameMeta { stream_id, frame, capture_unix_us: t };
            prop_assert_eq!(FrameMeta::find(&m.to_annexb_nal()), Some(m));
        }

        #[test]
        fn parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = FrameMeta::from_nal(&bytes);
            let _ = FrameMeta::find(&bytes);
        }
    }
}
