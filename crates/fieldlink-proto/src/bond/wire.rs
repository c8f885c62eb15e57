//! The bond's datagrams on the wire (big-endian). The first byte, [`MAGIC`], is outside
//! RFC 7983's STUN, DTLS and RTP/RTCP ranges and differs from FEC's, so each layer knows
//! its own and a peer without bonding drops them.
//!
//! - data:      `F8 00 session:u32 seq:u32` + the datagram (FEC's or str0m's)
//! - probe:     `F8 01 session:u32 path:u8 seq:u32 stamp:u32`
//! - ack:       `F8 02 session:u32 path:u8 seq:u32 echo:u32 held:u16 received:u32`
//!   (the probe's seq and stamp, ms it was held; data datagrams received on this path)
//! - join:      `F8 03 session:u32 path:u8` + 16 zero bytes (as long as a challenge, so
//!   answering one amplifies nothing)
//! - challenge: `F8 04 session:u32 path:u8 nonce:16`
//! - proof:     `F8 05 session:u32 path:u8 nonce:16 mac:16` (HMAC-SHA256 of the session
//!   key over "fieldlink-bond", session, path and nonce, first 16 bytes)
//! - welcome:   `F8 06 session:u32 path:u8`

/// First byte of every bond datagram.
pub const MAGIC: u8 = 0xF8;
/// Bytes the bond adds to a data datagram.
pub const DATA_HEADER: usize = 10;
pub const NONCE: usize = 16;
pub const MAC: usize = 16;

const DATA: u8 = 0;
const PROBE: u8 = 1;
const ACK: u8 = 2;
const JOIN: u8 = 3;
const CHALLENGE: u8 = 4;
const PROOF: u8 = 5;
const WELCOME: u8 = 6;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet<'a> {
    Data {
        session: u32,
        seq: u32,
        payload: &'a [u8],
    },
    Probe {
        session: u32,
        path: u8,
        seq: u32,
        stamp: u32,
    },
    Ack {
        session: u32,
        path: u8,
        seq: u32,
        echo: u32,
        held_ms: u16,
        received: u32,
    },
    Join {
        session: u32,
        path: u8,
    },
    Challenge {
        session: u32,
        path: u8,
        nonce: [u8; NONCE],
    },
    Proof {
        session: u32,
        path: u8,
        nonce: [u8; NONCE],
        mac: [u8; MAC],
    },
    Welcome {
        session: u32,
        path: u8,
    },
}

/// Reads big-endian fields off the front of a slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N).and_then(|b| b.try_into().ok())
    }
    /// The rest must be empty (fixed-size packets: anything else is not ours).
    fn end<T>(self, v: T) -> Option<T> {
        self.0.is_empty().then_some(v)
    }
}

impl<'a> Packet<'a> {
    /// `None` for anything that is not a well-formed bond datagram.
    pub fn parse(b: &'a [u8]) -> Option<Packet<'a>> {
        let mut r = Reader(b);
        if r.u8()? != MAGIC {
            return None;
        }
        let kind = r.u8()?;
        let session = r.u32()?;
        if kind == DATA {
            let seq = r.u32()?;
            return Some(Packet::Data {
                session,
                seq,
                payload: r.0,
            });
        }
        let path = r.u8()?;
        match kind {
            PROBE => {
                let (seq, stamp) = (r.u32()?, r.u32()?);
                r.end(Packet::Probe {
                    session,
                    path,
                    seq,
                    stamp,
                })
            }
            ACK => {
                let (seq, echo, held_ms, received) = (r.u32()?, r.u32()?, r.u16()?, r.u32()?);
                r.end(Packet::Ack {
                    session,
                    path,
                    seq,
                    echo,
                    held_ms,
                    received,
                })
            }
            JOIN => {
                let _pad: [u8; NONCE] = r.array()?;
                r.end(Packet::Join { session, path })
            }
            CHALLENGE => {
                let nonce = r.array()?;
                r.end(Packet::Challenge {
                    session,
                    path,
                    nonce,
                })
            }
            PROOF => {
                let (nonce, mac) = (r.array()?, r.array()?);
                r.end(Packet::Proof {
                    session,
                    path,
                    nonce,
                    mac,
                })
            }
            WELCOME => r.end(Packet::Welcome { session, path }),
            _ => None,
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.clear();
        out.push(MAGIC);
        let head = |out: &mut Vec<u8>, kind: u8, session: u32| {
            out.push(kind);
            out.extend_from_slice(&session.to_be_bytes());
        };
        match *self {
            Packet::Data {
                session,
                seq,
                payload,
            } => {
                head(out, DATA, session);
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(payload);
            }
            Packet::Probe {
                session,
                path,
                seq,
                stamp,
            } => {
                head(out, PROBE, session);
                out.push(path);
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(&stamp.to_be_bytes());
            }
            Packet::Ack {
                session,
                path,
                seq,
                echo,
                held_ms,
                received,
            } => {
                head(out, ACK, session);
                out.push(path);
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(&echo.to_be_bytes());
                out.extend_from_slice(&held_ms.to_be_bytes());
                out.extend_from_slice(&received.to_be_bytes());
            }
            Packet::Join { session, path } => {
                head(out, JOIN, session);
                out.push(path);
                out.extend_from_slice(&[0; NONCE]);
            }
            Packet::Challenge {
                session,
                path,
                nonce,
            } => {
                head(out, CHALLENGE, session);
                out.push(path);
                out.extend_from_slice(&nonce);
            }
            Packet::Proof {
                session,
                path,
                nonce,
                mac,
            } => {
                head(out, PROOF, session);
                out.push(path);
                out.extend_from_slice(&nonce);
                out.extend_from_slice(&mac);
            }
            Packet::Welcome { session, path } => {
                head(out, WELCOME, session);
                out.push(path);
            }
        }
    }

    pub fn session(&self) -> u32 {
        match *self {
            Packet::Data { session, .. }
            | Packet::Probe { session, .. }
            | Packet::Ack { session, .. }
            | Packet::Join { session, .. }
            | Packet::Challenge { session, .. }
            | Packet::Proof { session, .. }
            | Packet::Welcome { session, .. } => session,
        }
    }
}

/// The session of a bond datagram, read without parsing the rest (the server's demux).
pub fn session_of(b: &[u8]) -> Option<u32> {
    (b.len() >= 6 && b[0] == MAGIC).then(|| u32::from_be_bytes([b[2], b[3], b[4], b[5]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_packet_reads_back_as_written() {
        let all = [
            Packet::Data {
                session: 7,
                seq: u32::MAX,
                payload: b"\x17\xfe\xfdabc",
            },
            Packet::Probe {
                session: 7,
                path: 1,
                seq: 9,
                stamp: 123_456,
            },
            Packet::Ack {
                session: 7,
                path: 1,
                seq: 9,
                echo: 123_456,
                held_ms: 3,
                received: 1000,
            },
            Packet::Join {
                session: 7,
                path: 2,
            },
            Packet::Challenge {
                session: 7,
                path: 2,
                nonce: [5; NONCE],
            },
            Packet::Proof {
                session: 7,
                path: 2,
                nonce: [5; NONCE],
                mac: [9; MAC],
            },
            Packet::Welcome {
                session: 7,
                path: 2,
            },
        ];
        let mut buf = Vec::new();
        for p in all {
            p.encode(&mut buf);
            assert_eq!(Packet::parse(&buf), Some(p));
            assert_eq!(session_of(&buf), Some(7));
            // One byte more or less is not a bond packet (data excepted: any payload).
            if !matches!(p, Packet::Data { .. }) {
                assert_eq!(Packet::parse(&buf[..buf.len() - 1]), None);
                buf.push(0);
                assert_eq!(Packet::parse(&buf), None);
            }
        }
        let mut join = Vec::new();
        Packet::Join {
            session: 1,
            path: 0,
        }
        .encode(&mut join);
        Packet::Challenge {
            session: 1,
            path: 0,
            nonce: [0; NONCE],
        }
        .encode(&mut buf);
        assert!(
            join.len() >= buf.len(),
            "a challenge is no larger than its join"
        );
    }

    #[test]
    fn other_protocols_are_not_bond_packets() {
        for b in [
            &b"\x00\x01\x00\x00"[..],
            b"\x17\xfe\xfd",
            b"\x80\x60\x00\x01",
            b"\xf7\x00",
            b"",
            b"\xf8\x09\0\0\0\0\0",
        ] {
            assert_eq!(Packet::parse(b), None, "{b:?}");
        }
    }
}
