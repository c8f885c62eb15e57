//! RTP payloads of one access unit: H.264 (RFC 6184, packetization mode 1) and H.265
//! (RFC 7798, no DONL). A NAL unit that fits goes alone; a bigger one goes in
//! fragmentation units, every fragment but the last of the same size (so a sender can hand
//! a run of them to the kernel as one UDP GSO batch). No aggregation packets: an SFU writes
//! these to many receivers, and the simpler form is the one every depacketizer takes.
//!
//! The payloads are `Arc<[u8]>`: made once per frame, they are shared by every receiver's
//! RTP stream (str0m's `RtpWrite` takes them as they are).

use std::sync::Arc;

use crate::annexb::nal_units;
use crate::VideoCodec;

/// H.264 FU-A: the NAL type of a fragmentation unit, and its two header bytes.
const H264_FU_A: u8 = 28;
const H264_FU_HEADER: usize = 2;
/// H.265 FU: the NAL type of a fragmentation unit; payload header (2) + FU header (1).
const H265_FU: u8 = 49;
const H265_FU_HEADER: usize = 3;

/// The smallest `max` that leaves a fragment room for payload.
pub const MIN_PAYLOAD: usize = 8;

/// The RTP payloads of access unit `au` (Annex-B) in `codec`, each at most `max` bytes
/// (`max` below [`MIN_PAYLOAD`] is taken as [`MIN_PAYLOAD`]). Empty if `au` holds no NAL
/// unit.
pub fn packetize(codec: VideoCodec, au: &[u8], max: usize) -> Vec<Arc<[u8]>> {
    let max = max.max(MIN_PAYLOAD);
    let mut out = Vec::new();
    for nal in nal_units(au) {
        if nal.len() <= max {
            out.push(Arc::from(nal));
            continue;
        }
        match codec {
            VideoCodec::H264 => fragment_h264(nal, max, &mut out),
            VideoCodec::H265 => fragment_h265(nal, max, &mut out),
        }
    }
    out
}

/// FU-A fragments of one NAL unit longer than `max` (RFC 6184 5.8).
fn fragment_h264(nal: &[u8], max: usize, out: &mut Vec<Arc<[u8]>>) {
    let Some((&head, body)) = nal.split_first() else {
        return;
    };
    let indicator = (head & 0xE0) | H264_FU_A;
    let nal_type = head & 0x1F;
    fragments(body, max - H264_FU_HEADER, out, |start, end| {
        let flags = if start { 0x80 } else { 0 } | if end { 0x40 } else { 0 };
        vec![indicator, flags | nal_type]
    });
}

/// FU fragments of one NAL unit longer than `max` (RFC 7798 4.4.3).
fn fragment_h265(nal: &[u8], max: usize, out: &mut Vec<Arc<[u8]>>) {
    let [h0, h1, body @ ..] = nal else {
        return;
    };
    let nal_type = (h0 >> 1) & 0x3F;
    // The payload header keeps F, LayerId and TID; its type becomes FU.
    let payload_header = [(h0 & 0x81) | (H265_FU << 1), *h1];
    fragments(body, max - H265_FU_HEADER, out, |start, end| {
        let flags = if start { 0x80 } else { 0 } | if end { 0x40 } else { 0 };
        vec![payload_header[0], payload_header[1], flags | nal_type]
    });
}

/// Splits `body` into chunks of `size` (the last may be shorter), each behind the header
/// `header(first, last)` gives.
fn fragments(
    body: &[u8],
    size: usize,
    out: &mut Vec<Arc<[u8]>>,
    header: impl Fn(bool, bool) -> Vec<u8>,
) {
    let n = body.len().div_ceil(size);
    for (i, chunk) in body.chunks(size).enumerate() {
        let mut p = header(i == 0, i + 1 == n);
        p.reserve_exact(chunk.len());
        p.extend_from_slice(chunk);
        out.push(Arc::from(p));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Joins payloads back into NAL units the way a receiver does (single NAL units and
    /// fragmentation units; anything else fails the test).
    fn depacketize(codec: VideoCodec, payloads: &[Arc<[u8]>]) -> Vec<Vec<u8>> {
        let mut nals = Vec::new();
        let mut partial: Option<Vec<u8>> = None;
        for p in payloads {
            let (is_fu, hdr) = match codec {
                VideoCodec::H264 => (p[0] & 0x1F == H264_FU_A, H264_FU_HEADER),
                VideoCodec::H265 => ((p[0] >> 1) & 0x3F == H265_FU, H265_FU_HEADER),
            };
            if !is_fu {
                assert!(partial.is_none(), "a NAL unit inside a fragmented one");
                nals.push(p.to_vec());
                continue;
            }
            let fu = p[hdr - 1];
            let (start, end, nal_type) = (fu & 0x80 != 0, fu & 0x40 != 0, fu & 0x3F);
            if start {
                assert!(partial.is_none(), "two starts");
                partial = Some(match codec {
                    VideoCodec::H264 => vec![(p[0] & 0xE0) | (nal_type & 0x1F)],
                    VideoCodec::H265 => vec![(p[0] & 0x81) | (nal_type << 1), p[1]],
                });
            }
            let buf = partial.as_mut().expect("a fragment before its start");
            buf.extend_from_slice(&p[hdr..]);
            if end {
                nals.push(partial.take().expect("checked"));
            }
        }
        assert!(partial.is_none(), "a fragmented NAL unit without its end");
        nals
    }

    fn annexb(nals: &[Vec<u8>]) -> Vec<u8> {
        nals.iter()
            .flat_map(|n| [&[0, 0, 0, 1][..], n].concat())
            .collect()
    }

    fn nal(first: &[u8], len: usize) -> Vec<u8> {
        let mut n = first.to_vec();
        n.extend((0..len - first.len()).map(|i| (i % 251) as u8 | 1));
        n
    }

    #[test]
    fn h264_small_nals_go_alone_and_a_big_one_in_equal_fragments() {
        // SPS, PPS, an IDR slice of 5000 bytes (nal_ref_idc 3).
        let nals = vec![nal(&[0x67], 20), nal(&[0x68], 6), nal(&[0x65], 5000)];
        let p = packetize(VideoCodec::H264, &annexb(&nals), 1120);
        assert_eq!(p.len(), 2 + 5); // 4999 body bytes in chunks of 1118
        assert_eq!(&p[0][..], &nals[0][..]);
        assert_eq!(&p[1][..], &nals[1][..]);
        let frags = &p[2..];
        assert!(frags.iter().all(|f| f.len() <= 1120));
        assert!(frags[..4].iter().all(|f| f.len() == 1120));
        assert_eq!(frags[0][0], 0x60 | 28); // NRI kept, FU-A
        assert_eq!(frags[0][1], 0x80 | 5); // start, IDR
        assert_eq!(frags[4][1], 0x40 | 5); // end
        assert_eq!(depacketize(VideoCodec::H264, &p), nals);
    }

    #[test]
    fn h265_fragments_keep_layer_and_tid_and_rejoin() {
        // VPS (32), and an IDR_W_RADL slice (19) with TID 1 of 3000 bytes.
        let nals = vec![nal(&[32 << 1, 1], 24), nal(&[19 << 1, 1], 3000)];
        let p = packetize(VideoCodec::H265, &annexb(&nals), 1000);
        assert_eq!(p.len(), 1 + 4); // 2998 body bytes in chunks of 997
        assert_eq!(&p[0][..], &nals[0][..]);
        assert_eq!(p[1][0], H265_FU << 1);
        assert_eq!(p[1][1], 1);
        assert_eq!(p[1][2], 0x80 | 19);
        assert_eq!(p[4][2], 0x40 | 19);
        assert_eq!(p[4].len(), 3 + 7);
        assert!(p[1..4].iter().all(|f| f.len() == 1000));
        assert_eq!(depacketize(VideoCodec::H265, &p), nals);
    }

    #[test]
    fn a_nal_of_exactly_max_goes_alone_and_nothing_makes_nothing() {
        let nals = vec![nal(&[0x41], 1120)];
        let p = packetize(VideoCodec::H264, &annexb(&nals), 1120);
        assert_eq!(p.len(), 1);
        assert!(packetize(VideoCodec::H264, &[], 1120).is_empty());
        assert!(packetize(VideoCodec::H264, &[1, 2, 3, 4], 1120).is_empty());
    }

    proptest::proptest! {
        #[test]
        fn any_access_unit_rejoins_whole(
            sizes in proptest::collection::vec(2usize..4000, 1..6),
            max in 0usize..1500,
            h265: bool,
        ) {
            let codec = if h265 { VideoCodec::H265 } else { VideoCodec::H264 };
            let first: &[u8] = if h265 { &[1 << 1, 1] } else { &[0x41] };
            let nals: Vec<Vec<u8>> = sizes.iter().map(|&s| nal(first, s)).collect();
            let p = packetize(codec, &annexb(&nals), max);
            let max = max.max(MIN_PAYLOAD);
            proptest::prop_assert!(p.iter().all(|x| x.len() <= max));
            proptest::prop_assert_eq!(depacketize(codec, &p), nals);
        }
    }
}
