//! A UDP relay between devices and the server that drops, delays and shapes datagrams
//! (this kernel has no netem). The server advertises the relay's address as its ICE
//! candidate (and bond address: `--public-addr`), so all media crosses it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::net::UdpSocket;

/// Forwards datagrams between clients and the server, dropping `loss_pct` % of them (in
/// both directions unless `upstream_only`), and
/// shaping each client's upstream to `rate_kbps` (0 = unlimited; up to 200 ms of queue).
pub struct LossyRelay {
    pub loss_pct: Arc<AtomicU32>,
    /// Loss only on the way to the server (the media a field device sends).
    pub upstream_only: Arc<std::sync::atomic::AtomicBool>,
    /// Loss only on the way from the server (the media a remote receives).
    pub downstream_only: Arc<std::sync::atomic::AtomicBool>,
    /// One-way delay added in each direction, ms (a loopback RTT of microseconds is not a
    /// network: retransmission timing needs a real round trip).
    pub delay_ms: Arc<AtomicU32>,
    /// Clients (by address) whose traffic is delayed; empty: every client's.
    pub delayed: Arc<std::sync::Mutex<Vec<std::net::IpAddr>>>,
    pub rate_kbps: Arc<AtomicU32>,
    pub dropped: Arc<AtomicU64>,
    pub passed: Arc<AtomicU64>,
}

impl LossyRelay {
    pub async fn start(front: UdpSocket, server: SocketAddr) -> LossyRelay {
        let relay = LossyRelay {
            loss_pct: Arc::new(AtomicU32::new(0)),
            upstream_only: Default::default(),
            downstream_only: Default::default(),
            delay_ms: Arc::new(AtomicU32::new(0)),
            delayed: Default::default(),
            rate_kbps: Arc::new(AtomicU32::new(0)),
            dropped: Arc::new(AtomicU64::new(0)),
            passed: Arc::new(AtomicU64::new(0)),
        };
        let rate = relay.rate_kbps.clone();
        let upstream_only = relay.upstream_only.clone();
        let downstream_only = relay.downstream_only.clone();
        let delay = relay.delay_ms.clone();
        let delayed = relay.delayed.clone();
        let (loss, dropped, passed) = (
            relay.loss_pct.clone(),
            relay.dropped.clone(),
            relay.passed.clone(),
        );
        // Towards the server from the front's address (127.0.0.1, or a test link's).
        let front_ip = front.local_addr().unwrap().ip();
        let front = Arc::new(front);
        tokio::spawn(async move {
            let keep = move |loss: &AtomicU32, dropped: &AtomicU64, passed: &AtomicU64| {
                let drop = rand::rng().random_range(0..100) < loss.load(Ordering::Relaxed);
                if drop {
                    dropped.fetch_add(1, Ordering::Relaxed);
                } else {
                    passed.fetch_add(1, Ordering::Relaxed);
                }
                !drop
            };
            // Per client: the queue towards the server, and when the shaper lets the next
            // packet leave.
            // Per client: the queue towards the server, and whether its traffic is delayed.
            let mut upstreams: HashMap<SocketAddr, (Pipe, bool)> = HashMap::new();
            let mut buckets: HashMap<SocketAddr, tokio::time::Instant> = HashMap::new();
            let mut buf = vec![0u8; 2048];
            loop {
                let Ok((n, client)) = front.recv_from(&mut buf).await else {
                    return;
                };
                if !upstreams.contains_key(&client) {
                    if upstreams.len() >= 16 {
                        continue;
                    }
                    let up = UdpSocket::bind((front_ip, 0)).await.unwrap();
                    big_buffers(&up);
                    let up = Arc::new(up);
                    up.connect(server).await.unwrap();
                    let down = Pipe::spawn(front.clone(), Some(client));
                    let slow = {
                        let d = delayed.lock().unwrap();
                        d.is_empty() || d.contains(&client.ip())
                    };
                    let (l, d, p) = (loss.clone(), dropped.clone(), passed.clone());
                    let (up_only, delay2, up2) = (upstream_only.clone(), delay.clone(), up.clone());
                    tokio::spawn(async move {
                        let mut b = vec![0u8; 2048];
                        while let Ok(n) = up2.recv(&mut b).await {
                            if up_only.load(Ordering::Relaxed) || keep(&l, &d, &p) {
                                let ms = if slow {
                                    delay2.load(Ordering::Relaxed)
                                } else {
                                    0
                                };
                                let at = tokio::time::Instant::now()
                                    + Duration::from_millis(u64::from(ms));
                                down.send(at, &b[..n]);
                            }
                        }
                    });
                    upstreams.insert(client, (Pipe::spawn(up, None), slow));
                }
                let (pipe, slow) = &upstreams[&client];
                let now = tokio::time::Instant::now();
                let ms = if *slow {
                    delay.load(Ordering::Relaxed)
                } else {
                    0
                };
                let mut depart = now + Duration::from_millis(u64::from(ms));
                let kbps = rate.load(Ordering::Relaxed);
                if kbps > 0 {
                    // A shaper like `tc tbf`: packets leave at the rate, waiting up to 200 ms;
                    // what would wait longer is dropped.
                    let per_sec = f64::from(kbps) * 1000.0 / 8.0;
                    let next = buckets.entry(client).or_insert(now);
                    let leave = (*next).max(now);
                    if leave.duration_since(now) > Duration::from_millis(200) {
                        dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    *next = leave + Duration::from_secs_f64(n as f64 / per_sec);
                    depart = depart.max(leave);
                }
                if downstream_only.load(Ordering::Relaxed) || keep(&loss, &dropped, &passed) {
                    pipe.send(depart, &buf[..n]);
                }
            }
        });
        relay
    }
}

/// The relay's sockets hold bursts (two keyframes with FEC parity) as a router would.
pub fn big_buffers(s: &UdpSocket) {
    let s = socket2::SockRef::from(s);
    s.set_recv_buffer_size(4 << 20).unwrap();
    s.set_send_buffer_size(4 << 20).unwrap();
}

/// An order-keeping delay line: datagrams leave in the order they came, each not before
/// its time (one task per direction; per-packet timers would reorder them).
struct Pipe {
    tx: tokio::sync::mpsc::Sender<(tokio::time::Instant, Vec<u8>)>,
}

impl Pipe {
    /// Sends on `socket`: to `to`, or on its connected peer when `None`.
    fn spawn(socket: Arc<UdpSocket>, to: Option<SocketAddr>) -> Pipe {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(tokio::time::Instant, Vec<u8>)>(10_000);
        tokio::spawn(async move {
            while let Some((at, data)) = rx.recv().await {
                tokio::time::sleep_until(at).await;
                let _ = match to {
                    Some(addr) => socket.send_to(&data, addr).await,
                    None => socket.send(&data).await,
                };
            }
        });
        Pipe { tx }
    }

    fn send(&self, at: tokio::time::Instant, data: &[u8]) {
        // A full queue loses the datagram, as a full router buffer would.
        let _ = self.tx.try_send((at, data.to_vec()));
    }
}
