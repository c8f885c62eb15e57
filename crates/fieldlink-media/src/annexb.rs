//! Annex-B byte streams: NAL units separated by `00 00 01` or `00 00 00 01` start codes.

/// The NAL units of an Annex-B access unit, without their start codes.
pub fn nal_units(data: &[u8]) -> Vec<&[u8]> {
    // memchr's searcher: this runs on every frame the server forwards.
    let starts: Vec<usize> = memchr::memmem::find_iter(data, &[0, 0, 1])
        .map(|i| i + 3)
        .collect();
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

/// Splits an Annex-B elementary stream (a `.h264`/`.h265` file) into access units, each
/// with its start codes. A new access unit begins at an access unit delimiter, a
/// parameter set or prefix SEI, or a slice that is the first of its picture, once the
/// current one holds picture data (ITU-T H.264 7.4.1.2.3, H.265 7.4.2.4.4).
pub fn access_units(data: &[u8], h265: bool) -> Vec<&[u8]> {
    // (start of the start code, first byte of the NAL unit) for every NAL unit.
    let mut nals = Vec::new();
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            let code = if i > 0 && data[i - 1] == 0 { i - 1 } else { i };
            nals.push((code, i + 3));
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut out = Vec::new();
    let mut au_start = None;
    let mut has_picture = false;
    for &(code, nal) in &nals {
        let (vcl, first_slice, opens) = classify(&data[nal..], h265);
        if has_picture && (opens || (vcl && first_slice)) {
            if let Some(s) = au_start {
                out.push(&data[s..code]);
            }
            au_start = Some(code);
            has_picture = false;
        }
        au_start.get_or_insert(code);
        has_picture |= vcl;
    }
    if let Some(s) = au_start.filter(|_| has_picture) {
        out.push(&data[s..]);
    }
    out
}

/// (picture data, first slice of its picture, a non-picture unit that opens an access
/// unit) for the NAL unit starting at `nal`.
fn classify(nal: &[u8], h265: bool) -> (bool, bool, bool) {
    if h265 {
        let t = nal.first().map_or(63, |b| (b >> 1) & 0x3f);
        // first_slice_segment_in_pic_flag: the first bit after the two-byte header.
        let first = nal.get(2).is_some_and(|b| b & 0x80 != 0);
        // VCL 0..=31; VPS, SPS, PPS, AUD 32..=35, prefix SEI 39, reserved 41..=44.
        (t < 32, first, matches!(t, 32..=35 | 39 | 41..=44))
    } else {
        let t = nal.first().map_or(0, |b| b & 0x1f);
        // first_mb_in_slice is ue(v): 0 is coded as a single 1 bit.
        let first = nal.get(1).is_some_and(|b| b & 0x80 != 0);
        // Slices 1..=5; SEI, SPS, PPS, AUD 6..=9, 14..=18 reserved/prefix.
        ((1..=5).contains(&t), first, matches!(t, 6..=9 | 14..=18))
    }
}

/// H.264 NAL unit type (low five bits of the first byte).
pub fn h264_nal_type(nal: &[u8]) -> Option<u8> {
    nal.first().map(|b| b & 0x1f)
}

/// True if the access unit holds an IDR slice (H.264 NAL type 5).
pub fn is_h264_keyframe(data: &[u8]) -> bool {
    nal_units(data).iter().any(|n| h264_nal_type(n) == Some(5))
}

/// True if the data holds an H.265 picture (a VCL NAL unit, types 0..=31), not only
/// parameter sets or SEI.
pub fn h265_has_picture(data: &[u8]) -> bool {
    nal_units(data)
        .iter()
        .any(|n| n.first().is_some_and(|b| (b >> 1) & 0x3f < 32))
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
    fn an_elementary_stream_splits_into_access_units() {
        // H.264: SPS, PPS, IDR (first slice), second slice of it, then a P picture.
        let es = [
            0, 0, 0, 1, 0x67, 1, 0, 0, 1, 0x68, 2, 0, 0, 1, 0x65, 0x88, 0, 0, 1, 0x65, 0x40, 0, 0,
            0, 1, 0x41, 0x9a, 5,
        ];
        let aus = access_units(&es, false);
        assert_eq!(aus.len(), 2, "{aus:?}");
        assert_eq!(aus[0], &es[..21]);
        assert_eq!(aus[1], &es[21..]);
        assert!(is_h264_keyframe(aus[0]) && !is_h264_keyframe(aus[1]));
        // H.265: AUD, VPS, IDR_W_RADL (19) first slice; AUD, TRAIL_R (1).
        let es = [
            0,
            0,
            1,
            35 << 1,
            1,
            0x50,
            0,
            0,
            1,
            32 << 1,
            1,
            9,
            0,
            0,
            1,
            19 << 1,
            1,
            0xaf,
            7,
            0,
            0,
            1,
            35 << 1,
            1,
            0x50,
            0,
            0,
            1,
            1 << 1,
            1,
            0xd0,
            4,
        ];
        let aus = access_units(&es, true);
        assert_eq!(aus.len(), 2, "{aus:?}");
        assert!(is_h265_keyframe(aus[0]) && !is_h265_keyframe(aus[1]));
        assert_eq!(aus.concat(), es.to_vec(), "nothing lost between them");
        // Nothing but parameter sets, or nothing at all: no access unit.
        assert!(access_units(&[0, 0, 1, 0x67, 1], false).is_empty());
        assert!(access_units(&[], true).is_empty());
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
