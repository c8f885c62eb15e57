//! The datagram FEC's receiving side: any sequence of datagrams (the input split at its
//! own bytes) is taken without a panic, and nothing delivered is longer than a datagram.
#![no_main]
use fieldlink_proto::fec::{Fec, MAGIC, MAX_DATAGRAM};
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, Instant};

fuzz_target!(|data: &[u8]| {
    let mut fec = Fec::new();
    let mut now = Instant::now();
    // Each datagram is a length byte and that many bytes, the FEC magic put in front.
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let n = usize::from(len).min(tail.len());
        let (d, next) = tail.split_at(n);
        rest = next;
        let mut wire = Vec::with_capacity(n + 1);
        wire.push(MAGIC);
        wire.extend_from_slice(d);
        fec.receive(now, &wire, &mut |inner| assert!(inner.len() <= MAX_DATAGRAM));
        now += Duration::from_millis(u64::from(len % 16));
        fec.handle_timeout(now, &mut |r| assert_eq!(r[0], MAGIC));
    }
});
