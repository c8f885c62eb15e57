//! Annex-B byte streams: NAL units separated by `00 00 01` or `00 00 00 01` start codes.

/// The NAL units of an Annex-B access unit, without their start codes.
pub fn nal_units(data: &[u8]) -> Vec<&[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut out = Vec::with_capacity(starts.len());
    for (k, &s) in starts.iter().enumerate() {
        let mut end = starts.get(k + 1).map_or(data.len(), |&n| n - 3);
        // A four-byte start code leaves one zero behind; trailing zeros are not payload.
        while end > s && data[end - 1] == 0 {
            end -= 1;
        }
        if end > s {
            out.push(&data[s..end]);
        }
    }
    out
}

/// H.264 NAL unit type (low five bits of the first byte).
pub fn h264_nal_type(nal: &[u8]) -> Option<u8> {
    nal.first().map(|b| b & 0x1f)
}

/// True if the access unit holds an IDR slice (H.264 NAL type 5).
pub fn is_h264_keyframe(data: &[u8]) -> bool {
    nal_units(data).iter().any(|n| h264_nal_type(n) == Some(5))
}

/// True if the access unit holds an IRAP picture (H.265 NAL types 16..=21).
pub fn is_h265_keyframe(data: &[u8]) -> bool {
    nal_units(data).iter().any(|n| {
        n.first()
            .is_some_and(|b| (16..=21).contains(&((b >> 1) & 0x3f)))
    })
}

/// Remembers an H.264 stream's parameter sets and puts them before every keyframe that
/// lacks them, so a receiver can start decoding at any keyframe (encoders and cameras
/// often send SPS/PPS only once).
#[derive(Debug, Clone, Default)]
pub struct ParamSets {
    sps: Option<Vec<u8>>,
    pps: Option<Vec<u8>>,
}

impl ParamSets {
    /// Learns SPS/PPS from `au`; returns `au` with them prepended if it is a keyframe
    /// without them.
    pub fn complete(&mut self, au: &[u8]) -> Vec<u8> {
        let nals = nal_units(au);
        let (mut has_sps, mut has_pps, mut idr) = (false, false, false);
        for n in &nals {
            match h264_nal_type(n) {
                Some(7) => {
                    has_sps = true;
                    self.sps = Some(n.to_vec());
                }
                Some(8) => {
                    has_pps = true;
                    self.pps = Some(n.to_vec());
                }
                Some(5) => idr = true,
                _ => {}
            }
        }
        if !idr || (has_sps && has_pps) {
            return au.to_vec();
        }
        let mut out = Vec::with_capacity(au.len() + 64);
        for ps in [&self.sps, &self.pps].into_iter().flatten() {
            out.extend_from_slice(&[0, 0, 0, 1]);
            out.extend_from_slice(ps);
        }
        out.extend_from_slice(au);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_both_start_code_lengths() {
        let au = [
            0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3, 0, 0, 0, 1, 0x65, 9, 9,
        ];
        let nals = nal_units(&au);
        assert_eq!(
            nals,
            vec![&[0x67, 1, 2][..], &[0x68, 3][..], &[0x65, 9, 9][..]]
        );
        assert!(is_h264_keyframe(&au));
        assert!(!is_h264_keyframe(&[0, 0, 1, 0x41, 1]));
        assert!(nal_units(&[]).is_empty());
        assert!(nal_units(&[0, 0, 1]).is_empty());
        assert!(is_h265_keyframe(&[0, 0, 1, 19 << 1, 1]));
    }

    #[test]
    fn parameter_sets_are_put_before_bare_keyframes() {
        let mut ps = ParamSets::default();
        let first = [
            0, 0, 0, 1, 0x67, 1, 0, 0, 0, 1, 0x68, 2, 0, 0, 0, 1, 0x65, 9,
        ];
        assert_eq!(ps.complete(&first), first.to_vec());
        let p = [0, 0, 0, 1, 0x41, 7];
        assert_eq!(ps.complete(&p), p.to_vec());
        let bare_idr = [0, 0, 0, 1, 0x65, 8];
        let fixed = ps.complete(&bare_idr);
        let types: Vec<u8> = nal_units(&fixed).iter().map(|n| n[0] & 0x1f).collect();
        assert_eq!(types, [7, 8, 5]);
    }
}
