//! SIP over TCP on the SIP port: accepts connections (bounded in number), splits each
//! byte stream into whole SIP messages (Content-Length framing, CRLF keepalives skipped)
//! for the SIP task, and writes what the task sends back. No SIP logic here.

use std::net::SocketAddr;

use fieldlink_gb28181::sip;
use tokio::sync::mpsc;

use super::Event;

/// Accepts SIP-over-TCP connections; each one's messages go to the SIP task whole.
pub(super) async fn accept_tcp(listener: tokio::net::TcpListener, tx: mpsc::Sender<Event>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    const MAX_CONNECTIONS: usize = 4096;
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        if open.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
            continue; // dropped: the device retries or falls back to UDP
        }
        open.fetch_add(1, Ordering::Relaxed);
        let (tx, open) = (tx.clone(), open.clone());
        tokio::spawn(async move {
            serve_tcp(stream, peer, &tx).await;
            let _ = tx.send(Event::TcpClosed(peer)).await;
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

pub(super) async fn serve_tcp(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    tx: &mpsc::Sender<Event>,
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
    loop {
        let n = match rd.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
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
