//! Datagrams out on the hub's WebRTC socket. A frame written to a receiver leaves as a
//! run of equal-sized packets to one address (the last may be shorter); on Linux such a
//! run goes in one `sendmsg` with UDP GSO (`UDP_SEGMENT`) instead of one `sendto` per
//! packet: the kernel's per-datagram send path (routing, socket lookup, the syscall) was
//! ~40 % of the server's CPU when forwarding to 50 receivers (`fieldlink-bench sfu`).
//! Batches never outlive one poll of one peer, so nothing waits for a batch to fill.

use std::net::SocketAddr;

use tokio::net::UdpSocket;

/// Bytes in one GSO send: under the 64 KiB an IP datagram can hold, less its headers.
const MAX_BATCH_BYTES: usize = 65_000;
/// Datagrams in one GSO send at most (the kernel's limit is 64 on older kernels).
const MAX_SEGMENTS: usize = 64;

/// How the hub sends: with GSO where the kernel offers it.
pub(super) struct UdpOut {
    gso: Option<quinn_udp::UdpSocketState>,
}

impl UdpOut {
    /// GSO unless `FIELDLINK_GSO=off` or the kernel lacks it. quinn-udp's state is made
    /// on a socket of its own: making it sets options on the socket it is given (among
    /// them UDP_GRO, which would hand the hub's receive loop several datagrams as one).
    pub(super) fn new() -> UdpOut {
        let off = std::env::var("FIELDLINK_GSO").is_ok_and(|v| v == "off" || v == "0");
        let gso = (!off)
            .then(|| {
                let probe = std::net::UdpSocket::bind("127.0.0.1:0").ok()?;
                quinn_udp::UdpSocketState::new((&probe).into()).ok()
            })
            .flatten()
            .filter(|s| s.max_gso_segments() > 1);
        tracing::debug!(gso = gso.is_some(), "WebRTC socket sends");
        UdpOut { gso }
    }

    /// A batch for one poll of one peer; [`Batch::flush`] it when the poll is done.
    pub(super) fn batch<'a>(&'a self, socket: &'a UdpSocket) -> Batch<'a> {
        Batch {
            socket,
            gso: self.gso.as_ref(),
            buf: Vec::new(),
            dest: None,
            segment: 0,
            count: 0,
            closed: false,
        }
    }
}

/// A run of datagrams to one address, each the run's first one's size but the last.
pub(super) struct Batch<'a> {
    socket: &'a UdpSocket,
    gso: Option<&'a quinn_udp::UdpSocketState>,
    buf: Vec<u8>,
    dest: Option<SocketAddr>,
    /// The run's datagram size (its first datagram's).
    segment: usize,
    count: usize,
    /// A shorter datagram ended the run.
    closed: bool,
}

impl Batch<'_> {
    /// Sends `data` to `dest`, now or with the run it joins. A full socket buffer loses
    /// the datagram: WebRTC repairs or tolerates loss, and the hub never waits on a peer.
    pub(super) fn push(&mut self, data: &[u8], dest: SocketAddr) {
        let Some(gso) = self.gso else {
            let _ = self.socket.try_send_to(data, dest);
            return;
        };
        let joins = self.dest == Some(dest)
            && !self.closed
            && data.len() <= self.segment
            && self.count < MAX_SEGMENTS.min(gso.max_gso_segments())
            && self.buf.len() + data.len() <= MAX_BATCH_BYTES;
        if !joins {
            self.flush();
            self.dest = Some(dest);
            self.segment = data.len();
        }
        self.buf.extend_from_slice(data);
        self.count += 1;
        self.closed = data.len() < self.segment;
    }

    /// Sends the run held, if any.
    pub(super) fn flush(&mut self) {
        let (Some(dest), Some(gso)) = (self.dest.take(), self.gso) else {
            return;
        };
        if self.count == 1 {
            let _ = self.socket.try_send_to(&self.buf, dest);
        } else {
            let t = quinn_udp::Transmit {
                destination: dest,
                ecn: None,
                contents: &self.buf,
                segment_size: Some(self.segment),
                src_ip: None,
            };
            match gso.try_send(self.socket.into(), &t) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                // Not WouldBlock: the device refused GSO (quinn-udp stops offering it);
                // these datagrams go one by one.
                Err(_) => {
                    for d in self.buf.chunks(self.segment) {
                        let _ = self.socket.try_send_to(d, dest);
                    }
                }
            }
        }
        self.buf.clear();
        self.count = 0;
        self.closed = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame's run, a shorter last packet, another peer, then a run again: every
    /// datagram arrives whole, on its own, in order, at its own address.
    #[tokio::test]
    async fn runs_leave_as_the_datagrams_they_were() {
        let sender = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // tokio's `try_send_to` needs the reactor to have seen the socket writable.
        sender.writable().await.unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (to_a, to_b) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let out = UdpOut::new();
        assert!(out.gso.is_some(), "this kernel offers UDP GSO");
        let d = |tag: u8, len: usize| vec![tag; len];
        let sent_a = [
            d(1, 1200),
            d(2, 1200),
            d(3, 1200),
            d(4, 300),
            // After a shorter one: a new run even at the same size.
            d(5, 1200),
            d(6, 1200),
            // Larger than the run: a new one.
            d(7, 1250),
        ];
        let sent_b = [d(10, 1200), d(11, 1200)];
        let mut batch = out.batch(&sender);
        for p in &sent_a[..5] {
            batch.push(p, to_a);
        }
        for p in &sent_b {
            batch.push(p, to_b);
        }
        for p in &sent_a[5..] {
            batch.push(p, to_a);
        }
        // 70 small ones: more than one send's segments.
        let many: Vec<Vec<u8>> = (0..70).map(|i| d(100 + i, 100)).collect();
        for p in &many {
            batch.push(p, to_b);
        }
        batch.flush();
        let mut buf = vec![0u8; 70_000];
        // Loopback delivers in a softirq, maybe after the send returned.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let got = |s: &UdpSocket, buf: &mut [u8]| {
            let n = s.try_recv(buf).ok()?;
            Some(buf[..n].to_vec())
        };
        for (i, want) in sent_a.iter().enumerate() {
            assert_eq!(got(&a, &mut buf).as_ref(), Some(want), "datagram {i} to a");
        }
        for (i, want) in sent_b.iter().chain(&many).enumerate() {
            assert_eq!(got(&b, &mut buf).as_ref(), Some(want), "datagram {i} to b");
        }
        assert!(a.try_recv(&mut buf).is_err() && b.try_recv(&mut buf).is_err());
    }
}
