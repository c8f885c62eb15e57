//! RTP packets, RFC 4571 framing over TCP (fed in pieces the input chooses) and the
//! reordering window.
#![no_main]
use fieldlink_gb28181::rtp::{Reorder, RtpPacket, TcpFramer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = RtpPacket::parse(data) {
        assert!(p.payload.len() <= data.len());
    }
    let mut framer = TcpFramer::new();
    let mut reorder = Reorder::new(16);
    let step = 1 + data.first().copied().unwrap_or(0) as usize;
    for chunk in data.chunks(step) {
        match framer.push(chunk) {
            Ok(packets) => {
                for p in packets {
                    if let Ok(r) = RtpPacket::parse(&p) {
                        let seq = r.seq;
                        let _ = reorder.push(seq, p);
                    }
                }
            }
            Err(_) => break,
        }
    }
});
