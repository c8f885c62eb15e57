//! SIP over TCP on the SIP port: accepts connections (bounded in number, in all and per
//! source address), splits each byte stream into whole SIP messages (Content-Length
//! framing, CRLF keepalives skipped) for the SIP task, and writes what the task sends
//! back. A connection that sends no whole message for a while is closed. No SIP logic.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fieldlink_gb28181::sip;
use tokio::sync::mpsc;

use super::Event;

/// Open SIP-over-TCP connections at most.
pub(super) const MAX_CONNECTIONS: usize = 4096;
/// Open connections from one address at most (an NVR or a NAT holds several devices).
pub(super) const MAX_PER_SOURCE: usize = 256;
/// A new connection must bring its first whole message within this (a device connects to
/// register).
pub(super) const FIRST_MESSAGE: Duration = Duration::from_secs(10);

/// Open connections, in all and by source address.
#[derive(Default)]
struct Open {
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
}

impl Open {
    /// Counts a new connection from `ip`, unless that is over a limit.
    fn admit(&mut self, ip: IpAddr) -> bool {
        let n = self.by_ip.entry(ip).or_insert(0);
        if self.total >= MAX_CONNECTIONS || *n >= MAX_PER_SOURCE {
            if *n == 0 {
                self.by_ip.remove(&ip);
            }
            return false;
        }
        *n += 1;
        self.total += 1;
        true
    }

    fn leave(&mut self, ip: IpAddr) {
        if let Some(n) = self.by_ip.get_mut(&ip) {
            *n -= 1;
            self.total -= 1;
            if *n == 0 {
                self.by_ip.remove(&ip);
            }
        }
    }
}

/// Accepts SIP-over-TCP connections; each one's messages go to the SIP task whole. `idle`:
/// a connection silent this long after a message is closed (the keepalive timeout).
pub(super) async fn accept_tcp(
    listener: tokio::net::TcpListener,
    tx: mpsc::Sender<Event>,
    idle: Duration,
) {
    let open: Arc<Mutex<Open>> = Arc::default();
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        if !open.lock().is_ok_and(|mut o| o.admit(peer.ip())) {
            // Closed at once: the device retries or falls back to UDP.
            tracing::debug!(%peer, "SIP over TCP: too many connections; refused");
            continue;
        }
        let (tx, open) = (tx.clone(), open.clone());
        tokio::spawn(async move {
            serve_tcp(stream, peer, &tx, idle).await;
            let _ = tx.send(Event::TcpClosed(peer)).await;
            if let Ok(mut o) = open.lock() {
                o.leave(peer.ip());
            }
        });
    }
}

pub(super) async fn serve_tcp(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    tx: &mpsc::Sender<Event>,
    idle: Duration,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut rd, mut wr) = stream.into_split();
    let (wtx, mut wrx) = mpsc::channel::<Vec<u8>>(64);
    let last_words = wtx.clone();
    if tx.send(Event::TcpOpen(peer, wtx)).await.is_err() {
        return;
    }
    // An empty buffer means: close after what came before it.
    let mut writer = tokio::spawn(async move {
        while let Some(b) = wrx.recv().await {
            if b.is_empty() {
                let _ = wr.shutdown().await;
                return;
            }
            if wr.write_all(&b).await.is_err() {
                return;
            }
        }
    });
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    // Until a whole message comes; then reset at each one.
    let mut deadline = tokio::time::Instant::now() + FIRST_MESSAGE;
    loop {
        let n = match tokio::time::timeout_at(deadline, rd.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => n,
            Err(_) => {
                tracing::debug!(%peer, "SIP over TCP: idle; closing");
                break;
            }
        };
        buf.extend_from_slice(&chunk[..n]);
        loop {
            // Keepalive CRLFs between messages.
            let skip = buf
                .iter()
                .take_while(|b| matches!(b, b'\r' | b'\n'))
                .count();
            buf.drain(..skip);
            match sip::frame_len(&buf) {
                Ok(Some(len)) => {
                    deadline = tokio::time::Instant::now() + idle;
                    let msg: Vec<u8> = buf.drain(..len).collect();
                    if tx.send(Event::TcpIn(peer, msg)).await.is_err() {
                        writer.abort();
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(%peer, "SIP over TCP: {e}; closing");
                    if let Some(answer) = sip::too_large_answer(&buf, peer) {
                        let _ = last_words.send(answer).await;
                        let _ = last_words.send(Vec::new()).await;
                        let wrote = std::time::Duration::from_secs(2);
                        if tokio::time::timeout(wrote, &mut writer).await.is_ok() {
                            return;
                        }
                    }
                    writer.abort();
                    return;
                }
            }
        }
    }
    writer.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_limited_per_source_and_in_all() {
        let mut o = Open::default();
        let a = IpAddr::from([127, 0, 0, 2]);
        for _ in 0..MAX_PER_SOURCE {
            assert!(o.admit(a));
        }
        assert!(!o.admit(a), "one more from the same address");
        assert!(o.admit(IpAddr::from([127, 0, 0, 3])), "another address");
        o.leave(a);
        assert!(o.admit(a), "room again after a close");
        for n in 0..=(MAX_CONNECTIONS / MAX_PER_SOURCE) as u8 {
            for _ in 0..MAX_PER_SOURCE {
                o.admit(IpAddr::from([10, 0, 0, n]));
            }
        }
        assert_eq!(o.total, MAX_CONNECTIONS);
        assert!(!o.admit(IpAddr::from([10, 1, 0, 0])));
        assert!(o.by_ip.len() <= MAX_CONNECTIONS);
    }
}
