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

pub use fieldlink_proto::fec;

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
/// them, or wrapped in [`fec`] when both sides speak it.
#[derive(Debug, Default)]
pub struct Wire {
    fec: Option<fec::Fec>,
    /// Where FEC's own datagrams (parity, reports) go: str0m's last destination.
    dest: Option<SocketAddr>,
}

impl Wire {
    /// FEC on or off (off: datagrams byte for byte as str0m writes them).
    pub fn new(fec: bool) -> Wire {
        Wire {
            fec: fec.then(fec::Fec::new),
            dest: None,
        }
    }

    pub fn fec_stats(&self) -> Option<fec::FecStats> {
        self.fec.as_ref().map(fec::Fec::stats)
    }

    /// Feeds one datagram from the socket to `rtc`, unwrapping FEC (which may complete
    /// datagrams lost before). An inner datagram str0m would refuse is dropped, so a
    /// forged one cannot end the connection.
    pub fn receive(
        &mut self,
        rtc: &mut Rtc,
        now: Instant,
        data: &[u8],
        source: SocketAddr,
        local: SocketAddr,
    ) {
        let mut feed = |d: &[u8]| {
            if let Some(input) = udp_input(now, d, source, local) {
                if rtc.accepts(&input) {
                    handle_input(rtc, input);
                }
            }
        };
        let taken = match &mut self.fec {
            Some(f) => f.receive(now, data, &mut feed),
            None => false,
        };
        if !taken {
            feed(data);
        }
    }
}

/// [`drive`], with the datagrams going through `wire` to `send`: FEC wraps them, closes
/// the round's block (its parity goes out) and sends its report when due.
pub fn drive_wire(
    rtc: &mut Rtc,
    wire: &mut Wire,
    mut send: impl FnMut(&[u8], SocketAddr),
    on_event: impl FnMut(&mut Rtc, Event) -> ControlFlow<()>,
) -> Polled {
    let Wire { fec, dest } = wire;
    let polled = drive(
        rtc,
        |t| match fec {
            Some(f) => {
                *dest = Some(t.destination);
                f.send(Instant::now(), &t.contents, &mut |d| send(d, t.destination));
            }
            None => send(&t.contents, t.destination),
        },
        on_event,
    );
    let (Some(f), Some(dest)) = (fec, *dest) else {
        return polled;
    };
    let now = Instant::now();
    f.flush(now, &mut |d| send(d, dest));
    f.handle_timeout(now, &mut |d| send(d, dest));
    match (polled, f.poll_timeout()) {
        (Polled::Timeout(t), Some(report)) => Polled::Timeout(t.min(report)),
        (polled, _) => polled,
    }
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

    fn connected() -> (Side, Side) {
        let (mut l, mut r) = (side(40001, false), side(40002, true));
        let mut api = l.rtc.sdp_api();
        api.add_channel("t".into());
        let (offer, pending) = api.apply().expect("offer");
        let offer = SdpOffer::from_sdp_string(&offer.to_sdp_string()).expect("parse offer");
        let answer = r.rtc.sdp_api().accept_offer(offer).expect("answer");
        l.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .expect("accept answer");
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
}
