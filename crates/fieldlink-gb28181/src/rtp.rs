//! RTP as GB28181 devices send it (SPEC §10): packet parsing, RFC 4571 framing over TCP
//! (2-byte big-endian length; `$`-interleaved framing tolerated), and a small reorder
//! window for UDP. No I/O; every buffer is bounded.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RtpError {
    #[error("RTP packet too short")]
    Short,
    #[error("not RTP version 2")]
    Version,
    #[error("RTP header fields run past the packet")]
    Truncated,
    #[error("TCP framing: length {0} is not a plausible RTP packet")]
    Framing(usize),
}

/// One parsed RTP packet (borrowing its payload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    pub payload_type: u8,
    pub marker: bool,
    pub seq: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    pub payload: &'a [u8],
}

impl<'a> RtpPacket<'a> {
    pub fn parse(b: &'a [u8]) -> Result<RtpPacket<'a>, RtpError> {
        if b.len() < 12 {
            return Err(RtpError::Short);
        }
        if b[0] >> 6 != 2 {
            return Err(RtpError::Version);
        }
        let csrc = usize::from(b[0] & 0x0F) * 4;
        let mut at = 12 + csrc;
        if b[0] & 0x10 != 0 {
            let ext = b.get(at + 2..at + 4).ok_or(RtpError::Truncated)?;
            at += 4 + usize::from(u16::from_be_bytes([ext[0], ext[1]])) * 4;
        }
        let mut end = b.len();
        if b[0] & 0x20 != 0 {
            let pad = usize::from(*b.last().ok_or(RtpError::Truncated)?);
            end = end.checked_sub(pad).ok_or(RtpError::Truncated)?;
        }
        if at > end {
            return Err(RtpError::Truncated);
        }
        Ok(RtpPacket {
            payload_type: b[1] & 0x7F,
            marker: b[1] & 0x80 != 0,
            seq: u16::from_be_bytes([b[2], b[3]]),
            timestamp: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            ssrc: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
            payload: &b[at..end],
        })
    }
}

/// Splits `payload` (e.g. one PS pack) into RTP packets of at most `max_payload` bytes
/// each; the last carries the marker bit. `seq` advances per packet.
pub fn packetize(
    payload: &[u8],
    pt: u8,
    ssrc: u32,
    seq: &mut u16,
    timestamp: u32,
    max_payload: usize,
) -> Vec<Vec<u8>> {
    let chunks: Vec<&[u8]> = payload.chunks(max_payload.max(1)).collect();
    let n = chunks.len();
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let mut p = Vec::with_capacity(12 + c.len());
            p.push(0x80);
            p.push((pt & 0x7F) | if i + 1 == n { 0x80 } else { 0 });
            p.extend_from_slice(&seq.to_be_bytes());
            p.extend_from_slice(&timestamp.to_be_bytes());
            p.extend_from_slice(&ssrc.to_be_bytes());
            p.extend_from_slice(c);
            *seq = seq.wrapping_add(1);
            p
        })
        .collect()
}

/// RFC 4571 framing of one RTP packet for a TCP stream.
pub fn frame_tcp(packet: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(packet.len() + 2);
    v.extend_from_slice(&(packet.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
    v.extend_from_slice(packet);
    v
}

/// Splits a TCP byte stream into RTP packets: RFC 4571 (`len16 packet`) or, tolerated,
/// RTSP-style interleaving (`$ channel len16 packet`), detected per packet.
#[derive(Debug, Default)]
pub struct TcpFramer {
    buf: Vec<u8>,
}

/// Largest framed packet accepted (a UDP-sized RTP packet is far smaller).
const MAX_FRAME: usize = 65_535;

impl TcpFramer {
    pub fn new() -> TcpFramer {
        TcpFramer::default()
    }

    /// Adds bytes; returns the complete packets. A framing error means the stream is lost
    /// (the caller closes the connection).
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<Vec<u8>>, RtpError> {
        self.buf.extend_from_slice(data);
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            let rest = &self.buf[at..];
            let (hdr, len) = match rest {
                [b'$', _, h, l, ..] => (4, usize::from(u16::from_be_bytes([*h, *l]))),
                // A `$` starts interleaved framing (an RFC 4571 length of 9216..9471 bytes is
                // not a GB28181 RTP packet): wait for its header.
                [b'$', ..] => break,
                [h, l, ..] => (2, usize::from(u16::from_be_bytes([*h, *l]))),
                _ => break,
            };
            if !(12..=MAX_FRAME).contains(&len) {
                self.buf.clear();
                return Err(RtpError::Framing(len));
            }
            if rest.len() < hdr + len {
                break;
            }
            out.push(rest[hdr..hdr + len].to_vec());
            at += hdr + len;
        }
        self.buf.drain(..at);
        Ok(out)
    }
}

/// Puts UDP packets back in sequence order within a small window; a gap that stays open
/// once the window is full is given up (the packet is lost).
#[derive(Debug)]
pub struct Reorder {
    window: usize,
    next: Option<u16>,
    held: BTreeMap<u16, Vec<u8>>,
}

impl Reorder {
    pub fn new(window: usize) -> Reorder {
        Reorder {
            window: window.clamp(1, 1024),
            next: None,
            held: BTreeMap::new(),
        }
    }

    /// Offers one packet (its sequence number and bytes); returns packets now in order.
    pub fn push(&mut self, seq: u16, packet: Vec<u8>) -> Vec<Vec<u8>> {
        let next = *self.next.get_or_insert(seq);
        // Sequence distance in 16-bit serial arithmetic: old or duplicate packets are dropped.
        if seq.wrapping_sub(next) >= 0x8000 {
            return Vec::new();
        }
        self.held.entry(seq.wrapping_sub(next)).or_insert(packet);
        let mut out = Vec::new();
        loop {
            // Keys are offsets from `next`; offset 0 is the packet we wait for.
            if let Some(p) = self.held.remove(&0) {
                out.push(p);
                self.shift(1);
            } else if self.held.len() >= self.window {
                // Give up on the gap: jump to the oldest packet held.
                let skip = *self.held.keys().next().unwrap_or(&1);
                self.shift(skip);
            } else {
                break;
            }
        }
        out
    }

    fn shift(&mut self, by: u16) {
        self.next = self.next.map(|n| n.wrapping_add(by));
        self.held = std::mem::take(&mut self.held)
            .into_iter()
            .map(|(k, v)| (k.wrapping_sub(by), v))
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packetized_payload_parses_back_in_order_with_one_marker() {
        let payload: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let mut seq = 65_534;
        let pkts = packetize(&payload, 96, 0x0102_0304, &mut seq, 9000, 1400);
        assert_eq!(pkts.len(), 3);
        assert_eq!(seq, 1);
        let mut back = Vec::new();
        for (i, p) in pkts.iter().enumerate() {
            let r = RtpPacket::parse(p).unwrap();
            assert_eq!(
                (r.payload_type, r.ssrc, r.timestamp),
                (96, 0x0102_0304, 9000)
            );
            assert_eq!(r.marker, i == 2);
            back.extend_from_slice(r.payload);
        }
        assert_eq!(back, payload);
        let mut f = TcpFramer::new();
        let framed: Vec<u8> = pkts.iter().flat_map(|p| frame_tcp(p)).collect();
        assert_eq!(f.push(&framed).unwrap(), pkts);
    }
    use proptest::prelude::*;

    fn pkt(seq: u16, marker: bool, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0x80, 96 | if marker { 0x80 } else { 0 }];
        v.extend_from_slice(&seq.to_be_bytes());
        v.extend_from_slice(&1234u32.to_be_bytes());
        v.extend_from_slice(&200_000_001u32.to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn parses_header_fields_and_extensions() {
        let p = pkt(7, true, b"ps");
        let r = RtpPacket::parse(&p).unwrap();
        assert_eq!(
            (
                r.payload_type,
                r.marker,
                r.seq,
                r.timestamp,
                r.ssrc,
                r.payload
            ),
            (96, true, 7, 1234, 200_000_001, &b"ps"[..])
        );
        // One CSRC, a one-word extension and 2 bytes of padding.
        let mut q = vec![
            0xB1, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2, 9, 9, 9, 9, 0xBE, 0xDE, 0, 1, 1, 2, 3, 4,
        ];
        q.extend_from_slice(b"xy\0\x02");
        assert_eq!(RtpPacket::parse(&q).unwrap().payload, b"xy");
        assert_eq!(RtpPacket::parse(&q[..10]), Err(RtpError::Short));
        assert_eq!(RtpPacket::parse(&[0x40; 12]), Err(RtpError::Version));
    }

    #[test]
    fn tcp_framing_both_styles_across_chunks() {
        let (a, b) = (pkt(1, false, b"first"), pkt(2, true, b"second"));
        let mut stream = (a.len() as u16).to_be_bytes().to_vec();
        stream.extend(&a);
        stream.extend([b'$', 0]);
        stream.extend((b.len() as u16).to_be_bytes());
        stream.extend(&b);
        let mut f = TcpFramer::new();
        let mut got = Vec::new();
        for c in stream.chunks(5) {
            got.extend(f.push(c).unwrap());
        }
        assert_eq!(got, vec![a, b]);
        // A `$` header split across chunks.
        let mut f = TcpFramer::new();
        let c = pkt(3, false, b"third");
        let mut s2 = vec![b'$', 1];
        s2.extend((c.len() as u16).to_be_bytes());
        s2.extend(&c);
        assert!(f.push(&s2[..1]).unwrap().is_empty());
        assert_eq!(f.push(&s2[1..]).unwrap(), vec![c]);
        assert_eq!(
            TcpFramer::new().push(&[0, 3, 1, 2, 3]),
            Err(RtpError::Framing(3))
        );
    }

    #[test]
    fn reorders_and_gives_up_on_gaps() {
        let mut r = Reorder::new(3);
        assert_eq!(r.push(10, vec![10]), vec![vec![10]]);
        assert!(r.push(12, vec![12]).is_empty());
        assert_eq!(r.push(11, vec![11]), vec![vec![11], vec![12]]);
        assert!(
            r.push(11, vec![11]).is_empty(),
            "duplicates and old packets are dropped"
        );
        // 13 is lost: after 3 held packets the gap is given up.
        assert!(r.push(14, vec![14]).is_empty());
        assert!(r.push(15, vec![15]).is_empty());
        assert_eq!(r.push(16, vec![16]), vec![vec![14], vec![15], vec![16]]);
        // Wrap-around.
        let mut w = Reorder::new(4);
        w.push(65_535, vec![1]);
        assert_eq!(w.push(0, vec![2]), vec![vec![2]]);
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200), seqs in proptest::collection::vec(any::<u16>(), 0..50)) {
            let _ = RtpPacket::parse(&bytes);
            let _ = TcpFramer::new().push(&bytes);
            let mut r = Reorder::new(8);
            let mut total = 0;
            for s in seqs {
                total += r.push(s, vec![]).len();
            }
            prop_assert!(total <= 50);
        }
    }
}
