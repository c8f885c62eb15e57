//! Drives one str0m [`Rtc`]: the loop that both the server's hub and the SDK's peer run
//! after every input. It owns no socket and no events of its own: datagrams go to the
//! caller's `transmit`, events to the caller's `on_event`, so each side keeps only its own
//! event handling (str0m is sans-IO; this stays so).
//!
//! What the loop gets right once, for both sides:
//! - every call into str0m runs under `catch_unwind` (a panic inside one peer connection
//!   ends that connection, not the task serving every other one);
//! - an input str0m refuses disconnects the peer (it then reports [`Polled::Ended`]);
//! - timeouts already due are served in the same loop, while that makes progress and at
//!   most [`MAX_DUE_PER_POLL`] times: a timer wakes at millisecond granularity, and a burst
//!   of queued packets (a keyframe) would otherwise leave one packet per wake-up.

pub use fieldlink_proto::{bond, fec};

use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use str0m::net::{Protocol, Receive, Transmit};
use str0m::{Event, Input, Output, Rtc, RtcError};

/// RTP header extension id for abs-capture-time (not in str0m's default map); the server
/// and the SDK must agree on it.
pub const EXT_ABS_CAPTURE_TIME: u8 = 5;

/// Due timeouts served within one [`drive`] call, at most.
pub const MAX_DUE_PER_POLL: u32 = 256;

/// Why [`drive`] returned.
#[derive(Debug)]
pub enum Polled {
    /// str0m wants [`Input::Timeout`] at this instant (the caller's next wake-up).
    Timeout(Instant),
    /// `on_event` asked to stop; the connection may still be alive.
    Stopped,
    /// The peer connection is over.
    Ended(Ended),
}

/// How a peer connection ended.
#[derive(Debug)]
pub enum Ended {
    /// Closed (disconnected by either side, or after a refused input).
    Closed,
    /// `poll_output` failed.
    Error(RtcError),
    /// str0m panicked (caught).
    Panic,
}

/// Feeds one input; a refused input or a panic disconnects the peer. Returns whether the
/// input was taken.
pub fn handle_input(rtc: &mut Rtc, input: Input) -> bool {
    let taken = matches!(
        catch_unwind(AssertUnwindSafe(|| rtc.handle_input(input))),
        Ok(Ok(()))
    );
    if !taken {
        rtc.disconnect();
    }
    taken
}

/// A UDP datagram received at `destination` from `source`, as str0m input (`None`: not
/// something str0m could parse, e.g. empty).
pub fn udp_input(
    now: Instant,
    data: &[u8],
    source: SocketAddr,
    destination: SocketAddr,
) -> Option<Input<'_>> {
    let contents = data.try_into().ok()?;
    Some(Input::Receive(
        now,
        Receive {
            proto: Protocol::Udp,
            source,
            destination,
            contents,
        },
    ))
}

/// Polls `rtc` until it wants a timeout in the future, sending each datagram with
/// `transmit` and handing each event to `on_event` (with the `Rtc`, for replies such as
/// writing to a channel). `on_event` returning `Break` stops the loop at once.
pub fn drive(
    rtc: &mut Rtc,
    mut transmit: impl FnMut(Transmit),
    mut on_event: impl FnMut(&mut Rtc, Event) -> ControlFlow<()>,
) -> Polled {
    let (mut due_now, mut progressed) = (0, true);
    loop {
        if !rtc.is_alive() {
            return Polled::Ended(Ended::Closed);
        }
        let out = match catch_unwind(AssertUnwindSafe(|| rtc.poll_output())) {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => {
                tracing::debug!("poll_output: {e}");
                return Polled::Ended(Ended::Error(e));
            }
            Err(_) => return Polled::Ended(Ended::Panic),
        };
        match out {
            Output::Timeout(t) => {
                let now = Instant::now();
                if t <= now && progressed && due_now < MAX_DUE_PER_POLL {
                    due_now += 1;
                    progressed = false;
                    handle_input(rtc, Input::Timeout(now));
                    continue;
                }
                return Polled::Timeout(t);
            }
            Output::Transmit(t) => {
                progressed = true;
                transmit(t);
            }
            Output::Event(e) => {
                if on_event(rtc, e).is_break() {
                    return Polled::Stopped;
                }
            }
        }
    }
}

/// A peer connection's datagrams on their way to and from the socket: as str0m writes
/// them, wrapped in [`fec`] when both sides speak it, and carried over several paths by
/// [`bond`] when the device has several (SPEC §9). The layers, from str0m down:
/// DTLS/SRTP (str0m), FEC, bond, UDP.
#[derive(Default)]
pub struct Wire {
    fec: Option<fec::Fec>,
    /// Where FEC's own datagrams (parity, reports) go: str0m's last destination.
    dest: Option<SocketAddr>,
    bond: Option<Box<BondLink>>,
}

impl std::fmt::Debug for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wire")
            .field("fec", &self.fec.is_some())
            .field("bond", &self.bond.as_ref().map(|b| b.bond.session()))
            .finish()
    }
}

/// The bond under one peer connection, and where its paths lead.
pub struct BondLink {
    pub bond: bond::Bond,
    server: bool,
    /// Server: each admitted path's address, by path id.
    addrs: [Option<SocketAddr>; bond::MAX_PATHS],
    /// The address str0m knows the other side by: the server's (device); the first
    /// admitted path's (server: datagrams handed up come "from" it whatever path they
    /// took, so ICE sees one candidate pair).
    remote: Option<SocketAddr>,
    /// RTP payload types that are audio, and retransmissions (for [`bond::classify`]).
    audio: Vec<u8>,
    repair: Vec<u8>,
    /// Video datagrams sent before this are a keyframe's ([`Wire::keyframe_until`]).
    keyframe_until: Option<Instant>,
}

impl BondLink {
    /// The device's side, towards the server at `server`.
    pub fn device(bond: bond::Bond, server: SocketAddr) -> BondLink {
        BondLink::new(bond, false, Some(server))
    }

    /// The server's side (paths' addresses learned as they are admitted).
    pub fn server(bond: bond::Bond) -> BondLink {
        BondLink::new(bond, true, None)
    }

    fn new(bond: bond::Bond, server: bool, remote: Option<SocketAddr>) -> BondLink {
        BondLink {
            bond,
            server,
            addrs: [None; bond::MAX_PATHS],
            remote,
            audio: Vec::new(),
            repair: Vec::new(),
            keyframe_until: None,
        }
    }

    /// Which RTP payload types are audio and which retransmissions.
    pub fn set_payload_types(&mut self, audio: Vec<u8>, repair: Vec<u8>) {
        self.audio = audio;
        self.repair = repair;
    }

    /// Carries one datagram, and sends what the bond has queued.
    fn send(
        &mut self,
        now: Instant,
        data: &[u8],
        send: &mut impl FnMut(&[u8], SocketAddr, Option<u8>),
    ) {
        let mut class = bond::classify(data, &self.audio, &self.repair);
        if class == bond::Class::Video && self.keyframe_until.is_some_and(|t| now < t) {
            class = bond::Class::Keyframe;
        }
        self.bond.send(now, class, data);
        self.flush(send);
    }

    fn flush(&mut self, send: &mut impl FnMut(&[u8], SocketAddr, Option<u8>)) {
        while let Some(t) = self.bond.poll_transmit() {
            let to = if self.server {
                self.addrs.get(usize::from(t.path)).copied().flatten()
            } else {
                self.remote
            };
            if let Some(to) = to {
                send(&t.data, to, Some(t.path));
            }
        }
    }
}

impl Wire {
    /// FEC on or off (off: datagrams byte for byte as str0m writes them).
    pub fn new(fec: bool) -> Wire {
        Wire {
            fec: fec.then(fec::Fec::new),
            dest: None,
            bond: None,
        }
    }

    /// The same, carried over several paths.
    pub fn with_bond(mut self, link: BondLink) -> Wire {
        self.bond = Some(Box::new(link));
        self
    }

    pub fn fec_stats(&self) -> Option<fec::FecStats> {
        self.fec.as_ref().map(fec::Fec::stats)
    }

    pub fn bond(&self) -> Option<&BondLink> {
        self.bond.as_deref()
    }

    pub fn bond_mut(&mut self) -> Option<&mut BondLink> {
        self.bond.as_deref_mut()
    }

    /// Video sent from now until `until` is a keyframe's: duplicated in balanced mode.
    pub fn keyframe_until(&mut self, until: Instant) {
        if let Some(b) = self.bond.as_deref_mut() {
            b.keyframe_until = Some(until);
        }
    }

    /// Feeds one datagram from the socket to `rtc`: a bond datagram is unwrapped first
    /// (`path`: the device's socket it came on; the server finds it by `source`), and
    /// the bond's answer, if any, goes back with `reply`; then FEC (which may complete
    /// datagrams lost before); then str0m. An inner datagram str0m would refuse is
    /// dropped, so a forged one cannot end the connection.
    #[allow(clippy::too_many_arguments)]
    pub fn receive(
        &mut self,
        rtc: &mut Rtc,
        now: Instant,
        data: &[u8],
        source: SocketAddr,
        local: SocketAddr,
        path: Option<u8>,
        mut reply: impl FnMut(&[u8]),
    ) {
        let Wire { fec, bond, .. } = self;
        let mut up = |d: &[u8], source: SocketAddr| {
            let mut feed = |d: &[u8]| {
                if let Some(input) = udp_input(now, d, source, local) {
                    if rtc.accepts(&input) {
                        handle_input(rtc, input);
                    }
                }
            };
            let taken = match fec {
                Some(f) => f.receive(now, d, &mut feed),
                None => false,
            };
            if !taken {
                feed(d);
            }
        };
        let Some(link) = bond
            .as_deref_mut()
            .filter(|_| data.first() == Some(&bond::wire::MAGIC))
        else {
            up(data, source);
            return;
        };
        let path = if link.server {
            link.addrs
                .iter()
                .position(|a| *a == Some(source))
                .map(|p| p as u8)
        } else {
            path
        };
        if let Some(r) = link.bond.receive(now, path, data) {
            reply(&r);
        }
        while let Some(ev) = link.bond.poll_event() {
            if let (true, bond::BondEvent::Admitted(p)) = (link.server, ev) {
                // This datagram's source is path `p` now (a new path, or one whose NAT
                // binding moved).
                for a in link.addrs.iter_mut().filter(|a| **a == Some(source)) {
                    *a = None;
                }
                if let Some(slot) = link.addrs.get_mut(usize::from(p)) {
                    *slot = Some(source);
                }
                link.remote.get_or_insert(source);
            }
        }
        let Some(from) = link.remote else {
            return;
        };
        while let Some(d) = link.bond.poll_delivered() {
            up(&d, from);
        }
    }
}

/// [`drive`], with the datagrams going through `wire` to `send(datagram, to, path)`:
/// FEC wraps them, closes the round's block (its parity goes out) and sends its report
/// when due; the bond carries them on its paths (`path` is then `Some`: the device
/// sends on that path's socket) and sends its probes and joins when due.
pub fn drive_wire(
    rtc: &mut Rtc,
    wire: &mut Wire,
    mut send: impl FnMut(&[u8], SocketAddr, Option<u8>),
    on_event: impl FnMut(&mut Rtc, Event) -> ControlFlow<()>,
) -> Polled {
    let Wire { fec, dest, bond } = wire;
    // A bond's paths queueing: FEC sends no parity (it would feed the queues).
    let queueing = bond
        .as_deref()
        .is_some_and(|b| b.bond.queueing(Instant::now()));
    // Below FEC: straight to the socket, or through the bond.
    let mut emit = |d: &[u8], to: SocketAddr| match bond.as_deref_mut() {
        Some(b) => b.send(Instant::now(), d, &mut send),
        None => send(d, to, None),
    };
    let polled = drive(
        rtc,
        |t| match fec {
            Some(f) => {
                *dest = Some(t.destination);
                f.send(Instant::now(), &t.contents, &mut |d| emit(d, t.destination));
            }
            None => emit(&t.contents, t.destination),
        },
        on_event,
    );
    let now = Instant::now();
    let mut polled = polled;
    if let (Some(f), Some(to)) = (fec.as_mut(), *dest) {
        if queueing {
            f.queue_seen(now);
        }
        f.flush(now, &mut |d| emit(d, to));
        f.handle_timeout(now, &mut |d| emit(d, to));
        if let (Polled::Timeout(t), Some(report)) = (&polled, f.poll_timeout()) {
            polled = Polled::Timeout((*t).min(report));
        }
    }
    if let Some(b) = bond.as_deref_mut() {
        b.bond.handle_timeout(now);
        b.flush(&mut send);
        if let Polled::Timeout(t) = polled {
            polled = Polled::Timeout(t.min(b.bond.poll_timeout()));
        }
    }
    polled
}

#[cfg(test)]
mod tests {
    //! Two real str0m peers in one process, their datagrams carried by the test (nothing
    //! leaves the process; the addresses are loopback ones).
    use super::*;
    use std::collections::VecDeque;
    use std::time::Duration;
    use str0m::change::SdpOffer;
    use str0m::{Candidate, Event};

    struct Side {
        rtc: Rtc,
        addr: SocketAddr,
        next: Instant,
        events: Vec<Event>,
    }

    fn side(port: u16, lite: bool) -> Side {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut rtc = Rtc::builder().set_ice_lite(lite).build(Instant::now());
        rtc.add_local_candidate(Candidate::host(addr, "udp").expect("candidate"));
        Side {
            rtc,
            addr,
            next: Instant::now(),
            events: Vec::new(),
        }
    }

    /// Drives `s`, queueing its datagrams into `wire`; returns what `drive` said.
    fn step(s: &mut Side, wire: &mut VecDeque<(SocketAddr, SocketAddr, Vec<u8>)>) -> Polled {
        let from = s.addr;
        let events = &mut s.events;
        let polled = drive(
            &mut s.rtc,
            |t| wire.push_back((from, t.destination, t.contents.to_vec())),
            |_, e| {
                events.push(e);
                ControlFlow::Continue(())
            },
        );
        if let Polled::Timeout(t) = polled {
            s.next = t;
        }
        polled
    }

    /// Runs both sides until `done` or 5 s (real time: `drive` reads the clock).
    fn run(l: &mut Side, r: &mut Side, done: impl Fn(&Side, &Side) -> bool) {
        let mut wire = VecDeque::new();
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end && !done(l, r) {
            step(l, &mut wire);
            step(r, &mut wire);
            while let Some((src, dst, data)) = wire.pop_front() {
                let to = if dst == l.addr { &mut *l } else { &mut *r };
                let input = udp_input(Instant::now(), &data, src, dst).expect("datagram");
                assert!(handle_input(&mut to.rtc, input), "datagram refused");
                step(to, &mut wire);
            }
            let now = Instant::now();
            for s in [&mut *l, &mut *r] {
                if s.next <= now {
                    handle_input(&mut s.rtc, Input::Timeout(now));
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn opened(s: &Side) -> bool {
        s.events
            .iter()
            .any(|e| matches!(e, Event::ChannelOpen(_, l) if l == "t"))
    }

    fn channel_id(s: &Side) -> str0m::channel::ChannelId {
        s.events
            .iter()
            .find_map(|e| match e {
                Event::ChannelOpen(id, _) => Some(*id),
                _ => None,
            })
            .expect("channel id")
    }

    /// `l` offers a data channel, `r` answers (through SDP text, as over signalling).
    fn negotiate(l: &mut Side, r: &mut Side) {
        let mut api = l.rtc.sdp_api();
        api.add_channel("t".into());
        let (offer, pending) = api.apply().expect("offer");
        let offer = SdpOffer::from_sdp_string(&offer.to_sdp_string()).expect("parse offer");
        let answer = r.rtc.sdp_api().accept_offer(offer).expect("answer");
        l.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .expect("accept answer");
    }

    fn connected() -> (Side, Side) {
        let (mut l, mut r) = (side(40001, false), side(40002, true));
        negotiate(&mut l, &mut r);
        run(&mut l, &mut r, |l, r| opened(l) && opened(r));
        assert!(opened(&l) && opened(&r), "data channel did not open");
        (l, r)
    }

    #[test]
    fn two_peers_connect_and_exchange_data_through_the_loop() {
        let (mut l, mut r) = connected();
        let cid = channel_id(&l);
        let mut ch = l.rtc.channel(cid).expect("channel");
        ch.write(true, b"hello").expect("write");
        let got = |r: &Side| {
            r.events
                .iter()
                .any(|e| matches!(e, Event::ChannelData(d) if d.data == b"hello"))
        };
        run(&mut l, &mut r, |_, r| got(r));
        assert!(got(&r), "message not delivered");
        // Idle: the loop stops at a timeout in the future, not at one already due.
        let mut wire = VecDeque::new();
        match step(&mut l, &mut wire) {
            Polled::Timeout(t) => assert!(t > Instant::now() - Duration::from_millis(1)),
            other => panic!("expected a timeout, got {other:?}"),
        }
    }

    #[test]
    fn a_break_stops_at_the_event_and_a_disconnect_ends() {
        let (mut l, mut r) = connected();
        let cid = channel_id(&l);
        l.rtc
            .channel(cid)
            .expect("channel")
            .write(true, b"x")
            .expect("write");
        let mut wire = VecDeque::new();
        step(&mut l, &mut wire);
        assert!(!wire.is_empty(), "the write went nowhere");
        for (src, dst, data) in wire.drain(..) {
            let input = udp_input(Instant::now(), &data, src, dst).expect("datagram");
            assert!(handle_input(&mut r.rtc, input));
        }
        // The handler stops at the first event; the connection stays up.
        let mut seen = 0;
        let polled = drive(
            &mut r.rtc,
            |_| {},
            |_, _| {
                seen += 1;
                ControlFlow::Break(())
            },
        );
        assert!(matches!(polled, Polled::Stopped), "{polled:?}");
        assert_eq!(seen, 1);
        assert!(r.rtc.is_alive());
        l.rtc.disconnect();
        assert!(matches!(
            step(&mut l, &mut wire),
            Polled::Ended(Ended::Closed)
        ));
    }

    /// A device and a server peer whose datagrams cross two paths through bonds
    /// (redundant mode); path 0 is cut for a while. Data channel messages sent all along
    /// arrive, each once.
    #[test]
    fn a_bonded_peer_connection_survives_a_path_cut() {
        use fieldlink_proto::bond::{Bond, Mode, KEY_LEN};
        let (mut dev, mut srv) = (side(40011, false), side(40012, true));
        let key = [9; KEY_LEN];
        let t0 = Instant::now();
        let mut dw = Wire::new(true).with_bond(BondLink::device(
            Bond::device(5, key, Mode::Redundant, &[0, 1], t0),
            srv.addr,
        ));
        let mut sw = Wire::new(true).with_bond(BondLink::server(Bond::server(
            5,
            key,
            Mode::Redundant,
            [1; 32],
            t0,
        )));
        negotiate(&mut dev, &mut srv);
        // The paths' addresses on the device's side (the server sees these as sources).
        let path_addr = |p: u8| -> SocketAddr { ([127, 0, 0, 2 + p], 41000).into() };
        // Datagrams in flight: (to server?, path, data).
        let mut flight: VecDeque<(bool, u8, Vec<u8>)> = VecDeque::new();
        let mut cut = false;
        let (mut sent, mut open_at) = (0u32, None);
        let end = Instant::now() + Duration::from_secs(8);
        while Instant::now() < end {
            let now = Instant::now();
            let elapsed = now.duration_since(t0);
            // Path 0 cut from 2 s to 3.5 s, and again from 5 s to 6 s.
            cut = (elapsed >= Duration::from_secs(2) && elapsed < Duration::from_millis(3500))
                || (elapsed >= Duration::from_secs(5) && elapsed < Duration::from_secs(6));
            // One message per 20 ms of the clock once open, catching up after a slow
            // iteration (counting iterations wrote fewer than 300 in 8 s on a busy machine).
            if opened(&dev) {
                let since = now.duration_since(*open_at.get_or_insert(now));
                let due = (since.as_millis() / 20).min(300) as u32;
                let cid = channel_id(&dev);
                while sent < due {
                    let Some(mut ch) = dev.rtc.channel(cid) else {
                        break;
                    };
                    if !ch.write(true, &sent.to_be_bytes()).unwrap_or(false) {
                        break;
                    }
                    sent += 1;
                }
            }
            let dev_events = &mut dev.events;
            if let Polled::Timeout(t) = drive_wire(
                &mut dev.rtc,
                &mut dw,
                |d, _, path| flight.push_back((true, path.expect("bonded: a path"), d.to_vec())),
                |_, e| {
                    dev_events.push(e);
                    ControlFlow::Continue(())
                },
            ) {
                dev.next = t;
            }
            let srv_events = &mut srv.events;
            if let Polled::Timeout(t) = drive_wire(
                &mut srv.rtc,
                &mut sw,
                |d, to, path| {
                    let p = path.expect("bonded: a path");
                    assert_eq!(to, path_addr(p), "the server answers on the path's address");
                    flight.push_back((false, p, d.to_vec()));
                },
                |_, e| {
                    srv_events.push(e);
                    ControlFlow::Continue(())
                },
            ) {
                srv.next = t;
            }
            while let Some((up, p, d)) = flight.pop_front() {
                if cut && p == 0 {
                    continue;
                }
                if up {
                    let mut replies = Vec::new();
                    sw.receive(&mut srv.rtc, now, &d, path_addr(p), srv.addr, None, |r| {
                        replies.push(r.to_vec())
                    });
                    flight.extend(replies.into_iter().map(|r| (false, p, r)));
                } else {
                    let mut replies = Vec::new();
                    dw.receive(&mut dev.rtc, now, &d, srv.addr, dev.addr, Some(p), |r| {
                        replies.push(r.to_vec())
                    });
                    flight.extend(replies.into_iter().map(|r| (true, p, r)));
                }
            }
            for s in [&mut dev, &mut srv] {
                if s.next <= now {
                    handle_input(&mut s.rtc, Input::Timeout(now));
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(!cut, "the cuts are over");
        assert!(opened(&srv), "the data channel opened over the bond");
        let got: Vec<u32> = srv
            .events
            .iter()
            .filter_map(|e| match e {
                Event::ChannelData(d) => Some(u32::from_be_bytes(d.data[..4].try_into().ok()?)),
                _ => None,
            })
            .collect();
        assert_eq!(sent, 300, "all written");
        assert_eq!(
            got,
            (0..300).collect::<Vec<_>>(),
            "every message once, in order"
        );
        let stats = sw.bond().expect("bonded").bond.stats();
        assert!(stats.paths[0].downs >= 1, "path 0 was seen down: {stats:?}");
        assert!(stats.reorder.duplicates > 0, "copies were dropped");
    }
}
