//! A timestamping UDP relay in front of the server's WebRTC port: the server advertises it
//! as its ICE candidate (`--public-addr`), so every media packet crosses it in both
//! directions, and it notes when each video RTP packet went in and came out. The RTP header
//! stays readable under SRTP, so packets are matched by RTP timestamp (the server keeps a
//! receiver's timestamps equal to the source's until its first switch).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::net::UdpSocket;

/// One video RTP packet seen by the tap.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    pub at: Instant,
    pub ssrc: u32,
    pub rtp_time: u32,
}

#[derive(Default)]
pub struct Log {
    /// Towards the server (the field device's media).
    pub inbound: Vec<Seen>,
    /// From the server (what receivers get).
    pub outbound: Vec<Seen>,
}

/// Media packets only: RTP (RFC 7983 first byte 128..=191), not RTCP (payload types
/// 192..=223 in the second byte), not padding-only probes (P bit).
pub fn video_rtp(d: &[u8], at: Instant) -> Option<Seen> {
    if d.len() < 12 || !(128..=191).contains(&d[0]) || (192..=223).contains(&d[1]) {
        return None;
    }
    if d[0] & 0x20 != 0 {
        return None;
    }
    Some(Seen {
        at,
        rtp_time: u32::from_be_bytes(d[4..8].try_into().ok()?),
        ssrc: u32::from_be_bytes(d[8..12].try_into().ok()?),
    })
}

/// Starts the tap on `front`, forwarding to `server`. Bounded: 16 clients, and the log
/// stops growing at `max_packets` per direction.
pub fn start(front: UdpSocket, server: SocketAddr, max_packets: usize) -> Arc<Mutex<Log>> {
    let log = Arc::new(Mutex::new(Log::default()));
    let front = Arc::new(front);
    let log2 = log.clone();
    tokio::spawn(async move {
        let mut ups: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
        let mut buf = vec![0u8; 2048];
        while let Ok((n, client)) = front.recv_from(&mut buf).await {
            let at = Instant::now();
            if !ups.contains_key(&client) {
                if ups.len() >= 16 {
                    continue;
                }
                let Ok(up) = UdpSocket::bind("127.0.0.1:0").await else {
                    continue;
                };
                if up.connect(server).await.is_err() {
                    continue;
                }
                let up = Arc::new(up);
                let (up2, front2, log3) = (up.clone(), front.clone(), log2.clone());
                tokio::spawn(async move {
                    let mut b = vec![0u8; 2048];
                    while let Ok(n) = up2.recv(&mut b).await {
                        let at = Instant::now();
                        let _ = front2.send_to(&b[..n], client).await;
                        if let Some(s) = video_rtp(&b[..n], at) {
                            let mut l = log3.lock().unwrap_or_else(|p| p.into_inner());
                            if l.outbound.len() < max_packets {
                                l.outbound.push(s);
                            }
                        }
                    }
                });
                ups.insert(client, up);
            }
            let _ = ups[&client].send(&buf[..n]).await;
            if let Some(s) = video_rtp(&buf[..n], at) {
                let mut l = log2.lock().unwrap_or_else(|p| p.into_inner());
                if l.inbound.len() < max_packets {
                    l.inbound.push(s);
                }
            }
        }
    });
    log
}

/// Per-packet figures in microseconds: (same-index packet in -> out, last packet of a
/// frame in -> first packet of it out). Outbound counts the busiest SSRC (a receiver's
/// video, not retransmissions); inbound, the source SSRC whose timestamps it carries.
pub fn server_delays(log: &Log) -> (Vec<u64>, Vec<u64>) {
    type Frames = HashMap<u32, Vec<Instant>>;
    let by_ssrc = |v: &[Seen]| {
        let mut m: HashMap<u32, Frames> = HashMap::new();
        for s in v {
            m.entry(s.ssrc)
                .or_default()
                .entry(s.rtp_time)
                .or_default()
                .push(s.at);
        }
        m
    };
    let outs = by_ssrc(&log.outbound);
    let Some(outb) = outs
        .values()
        .max_by_key(|f| f.values().map(Vec::len).sum::<usize>())
    else {
        return (Vec::new(), Vec::new());
    };
    let ins = by_ssrc(&log.inbound);
    let Some(inb) = ins
        .values()
        .max_by_key(|f| f.keys().filter(|ts| outb.contains_key(ts)).count())
    else {
        return (Vec::new(), Vec::new());
    };
    let (mut per_packet, mut frame_to_first) = (Vec::new(), Vec::new());
    for (ts, o) in outb {
        let Some(i) = inb.get(ts) else { continue };
        let (Some(last_in), Some(first_out)) = (i.last(), o.first()) else {
            continue;
        };
        frame_to_first.push(first_out.saturating_duration_since(*last_in).as_micros() as u64);
        if i.len() == o.len() {
            for (a, b) in i.iter().zip(o) {
                per_packet.push(b.saturating_duration_since(*a).as_micros() as u64);
            }
        }
    }
    (per_packet, frame_to_first)
}
