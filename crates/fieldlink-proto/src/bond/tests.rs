//! A device's bond and the server's, joined by a simulated network of paths (per path:
//! one-way delay and a drop rule), stepped in 1 ms ticks.

use super::*;
use std::collections::BTreeMap;

const KEY: [u8; KEY_LEN] = [7; KEY_LEN];

/// One direction of one path: datagrams in flight with their arrival time.
#[derive(Default)]
struct Link {
    delay_ms: u64,
    /// Drop when this says so (given the ms since start and a counter).
    drop: Option<fn(u64, u64) -> bool>,
    count: u64,
    flight: VecDeque<(u64, Vec<u8>)>,
    /// A shaper like `tc tbf`: bytes per ms, and the longest a datagram may queue (ms);
    /// what would queue longer is dropped.
    rate: Option<(f64, f64)>,
    /// When the shaper is free again (ms, fractional).
    free_at: f64,
}

impl Link {
    fn push(&mut self, at: u64, d: Vec<u8>) {
        self.count += 1;
        if self.drop.is_some_and(|f| f(at, self.count)) {
            return;
        }
        let mut leave = at as f64;
        if let Some((bytes_per_ms, queue_ms)) = self.rate {
            let start = self.free_at.max(leave);
            if start - leave > queue_ms {
                return;
            }
            self.free_at = start + d.len() as f64 / bytes_per_ms;
            leave = self.free_at;
        }
        self.flight
            .push_back((leave.ceil() as u64 + self.delay_ms, d));
    }
}

struct Net {
    t0: Instant,
    ms: u64,
    dev: Bond,
    srv: Bond,
    /// Per path: device → server, server → device.
    up: Vec<Link>,
    down: Vec<Link>,
    /// What the server's shell knows: which path an "address" (a path index here) is.
    admitted: BTreeMap<usize, u8>,
    at_server: Vec<Vec<u8>>,
    /// When each of `at_server` was delivered (ms).
    at_server_ms: Vec<u64>,
    at_device: Vec<Vec<u8>>,
    events: Vec<BondEvent>,
}

impl Net {
    fn new(mode: Mode, delays: &[u64]) -> Net {
        let t0 = Instant::now();
        let ids: Vec<u8> = (0..delays.len() as u8).collect();
        // One direction of every path.
        let links = || {
            delays
                .iter()
                .map(|&d| Link {
                    delay_ms: d,
                    ..Default::default()
                })
                .collect()
        };
        Net {
            t0,
            ms: 0,
            dev: Bond::device(42, KEY, mode, &ids, t0),
            srv: Bond::server(42, KEY, mode, [3; 32], t0),
            up: links(),
            down: links(),
            admitted: BTreeMap::new(),
            at_server: Vec::new(),
            at_server_ms: Vec::new(),
            at_device: Vec::new(),
            events: Vec::new(),
        }
    }

    fn now(&self) -> Instant {
        self.t0 + Duration::from_millis(self.ms)
    }

    /// Runs `n` ms; `each_ms` may send from either side.
    fn run(&mut self, n: u64, mut each_ms: impl FnMut(&mut Net)) {
        for _ in 0..n {
            self.ms += 1;
            let now = self.now();
            each_ms(self);
            self.dev.handle_timeout(now);
            self.srv.handle_timeout(now);
            while let Some(t) = self.dev.poll_transmit() {
                self.up[t.path as usize].push(self.ms, t.data);
            }
            while let Some(t) = self.srv.poll_transmit() {
                self.down[t.path as usize].push(self.ms, t.data);
            }
            for i in 0..self.up.len() {
                while self.up[i]
                    .flight
                    .front()
                    .is_some_and(|(at, _)| *at <= self.ms)
                {
                    let (_, d) = self.up[i].flight.pop_front().unwrap();
                    let known = self.admitted.get(&i).copied();
                    if let Some(r) = self.srv.receive(now, known, &d) {
                        self.down[i].push(self.ms, r);
                    }
                    while let Some(ev) = self.srv.poll_event() {
                        if let BondEvent::Admitted(p) = ev {
                            self.admitted.insert(i, p);
                        }
                        self.events.push(ev);
                    }
                }
                while self.down[i]
                    .flight
                    .front()
                    .is_some_and(|(at, _)| *at <= self.ms)
                {
                    let (_, d) = self.down[i].flight.pop_front().unwrap();
                    if let Some(r) = self.dev.receive(now, Some(i as u8), &d) {
                        self.up[i].push(self.ms, r);
                    }
                }
            }
            while let Some(d) = self.srv.poll_delivered() {
                self.at_server.push(d);
                self.at_server_ms.push(self.ms);
            }
            while let Some(d) = self.dev.poll_delivered() {
                self.at_device.push(d);
            }
        }
    }

    fn numbered(v: &[Vec<u8>]) -> Vec<u32> {
        v.iter()
            .map(|d| u32::from_be_bytes(d[..4].try_into().unwrap()))
            .collect()
    }
}

/// A 1000-byte datagram with its number in front.
fn datagram(n: u32) -> Vec<u8> {
    let mut d = vec![0x80; 1000];
    d[..4].copy_from_slice(&n.to_be_bytes());
    d
}

#[test]
fn paths_join_with_a_proof_and_carry_both_ways() {
    let mut net = Net::new(Mode::Redundant, &[10, 20]);
    net.run(200, |_| {});
    assert_eq!(net.admitted.len(), 2, "both paths admitted");
    assert!(net.dev.ready() && net.srv.ready());
    let mut n = 0;
    net.run(1000, |net| {
        n += 1;
        if n % 4 == 0 {
            let now = net.now();
            net.dev.send(now, Class::Video, &datagram(n));
            net.srv.send(now, Class::Control, &datagram(n + 1_000_000));
        }
    });
    net.run(100, |_| {});
    assert_eq!(net.at_server.len(), 250);
    assert_eq!(net.at_device.len(), 250);
    let s = net.srv.stats();
    assert_eq!(
        s.reorder.duplicates, 250,
        "every datagram came twice, one copy dropped"
    );
    assert!(
        s.paths.iter().all(|p| p.rtt.is_some()),
        "probes measured both paths"
    );
    let rtts: Vec<_> = net
        .dev
        .stats()
        .paths
        .iter()
        .map(|p| p.rtt.unwrap().as_millis())
        .collect();
    assert_eq!(rtts, [20, 40]);
}

#[test]
fn a_wrong_key_or_a_replayed_join_admits_nothing() {
    let mut net = Net::new(Mode::Redundant, &[5]);
    net.dev.key = [8; KEY_LEN];
    net.run(500, |_| {});
    assert!(net.admitted.is_empty());
    assert!(net.srv.stats().refused > 0);
    // An attacker sends a join for the session from its own address and answers the
    // challenge it gets without the key: refused.
    let mut net = Net::new(Mode::Redundant, &[5]);
    let now = net.now();
    let mut join = Vec::new();
    wire::Packet::Join {
        session: 42,
        path: 5,
    }
    .encode(&mut join);
    let challenge = net.srv.receive(now, None, &join).expect("a challenge");
    let Some(wire::Packet::Challenge { nonce, .. }) = wire::Packet::parse(&challenge) else {
        panic!("not a challenge");
    };
    let mut proof = Vec::new();
    wire::Packet::Proof {
        session: 42,
        path: 5,
        nonce,
        mac: [0; MAC],
    }
    .encode(&mut proof);
    assert_eq!(net.srv.receive(now, None, &proof), None);
    assert_eq!(net.srv.poll_event(), None);
    // Data from an address that is no admitted path is dropped.
    let mut data = Vec::new();
    wire::Packet::Data {
        session: 42,
        seq: 1,
        payload: b"x",
    }
    .encode(&mut data);
    assert_eq!(net.srv.receive(now, None, &data), None);
    assert_eq!(net.srv.poll_delivered(), None);
}

#[test]
fn redundant_mode_loses_nothing_when_a_path_is_cut_again_and_again() {
    // Path 0 is cut (100 % drop) for 500 ms of every second; path 1 is clean.
    let mut net = Net::new(Mode::Redundant, &[10, 30]);
    net.run(300, |_| {});
    net.up[0].drop = Some(|ms, _| ms % 1000 >= 500);
    net.down[0].drop = Some(|ms, _| ms % 1000 >= 500);
    let mut n = 0;
    net.run(10_000, |net| {
        n += 1;
        if n % 2 == 0 {
            let now = net.now();
            net.dev.send(now, Class::Video, &datagram(n));
        }
    });
    net.run(200, |_| {});
    let got = Net::numbered(&net.at_server);
    assert_eq!(got.len(), 5000, "nothing lost: {:?}", net.srv.stats());
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in order");
    let p0 = &net.srv.stats().paths[0];
    assert!(p0.downs >= 1, "path 0 was seen down");
}

#[test]
fn a_datagram_lost_on_every_path_holds_back_nothing_once_every_path_has_passed_it() {
    // Every 20th datagram is lost on both paths. What follows it must not wait for the
    // reorder budget (the paths' spread, 40 ms of round trip here, + 5 ms): once the
    // slower path has brought a later datagram, the gap is known lost.
    let mut net = Net::new(Mode::Redundant, &[10, 30]);
    net.run(300, |_| {});
    let mut n = 0u32;
    let mut sent_ms = BTreeMap::new();
    net.run(2000, |net| {
        n += 1;
        for l in &mut net.up {
            l.drop = None;
        }
        if n.is_multiple_of(5) {
            if n.is_multiple_of(100) {
                for l in &mut net.up {
                    l.drop = Some(|_, _| true);
                }
            }
            let now = net.now();
            net.dev.send(now, Class::Video, &datagram(n));
            sent_ms.insert(n, net.ms);
        }
    });
    net.run(100, |_| {});
    let got = Net::numbered(&net.at_server);
    assert_eq!(got.len(), 400 - 20);
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in order");
    let slowest = got
        .iter()
        .zip(&net.at_server_ms)
        .map(|(d, at)| at - sent_ms[d])
        .max();
    assert_eq!(
        slowest,
        Some(30),
        "no datagram waited beyond the slower path's delay"
    );
    // The last lost one (2000) has nothing after it to be skipped for.
    assert_eq!(net.srv.stats().reorder.skipped, 19);
}

#[test]
fn rtcp_goes_twice_per_path_for_a_second_after_a_gap_lost_on_every_path() {
    let mut net = Net::new(Mode::Redundant, &[10, 10]);
    net.run(300, |_| {});
    let rtcp = |n: u8| {
        let mut d = vec![0x80, 201, 0, 1];
        d.extend([n; 40]);
        d
    };
    // Clean paths: the server's RTCP goes once per path.
    let sent = |net: &mut Net, n: u8| {
        net.srv.send(net.now(), Class::Rtcp, &rtcp(n));
        let mut per_path = [0; 2];
        while let Some(t) = net.srv.poll_transmit() {
            if t.data.len() > 40 {
                per_path[t.path as usize] += 1;
            }
        }
        per_path
    };
    assert_eq!(sent(&mut net, 1), [1, 1]);
    // A device datagram lost on both paths, then the next: the server skips the gap.
    let mut n = 0u32;
    net.run(50, |net| {
        n += 1;
        for l in &mut net.up {
            l.drop = if n == 10 { Some(|_, _| true) } else { None };
        }
        if n.is_multiple_of(5) {
            let now = net.now();
            net.dev.send(now, Class::Video, &datagram(n));
        }
    });
    assert_eq!(net.srv.stats().reorder.skipped, 1);
    assert_eq!(sent(&mut net, 2), [2, 2]);
    // A second later, with no more gaps: once again.
    net.run(1000, |_| {});
    assert_eq!(sent(&mut net, 3), [1, 1]);
}

#[test]
fn a_path_goes_down_within_300_ms_of_silence() {
    let mut net = Net::new(Mode::Redundant, &[10, 10]);
    net.run(500, |_| {});
    net.down[0].drop = Some(|_, _| true);
    net.up[0].drop = Some(|_, _| true);
    net.events.clear();
    let cut = net.ms;
    let mut down_at = None;
    net.run(1000, |net| {
        if down_at.is_none()
            && net
                .dev
                .stats()
                .paths
                .iter()
                .any(|p| p.id == 0 && p.state == PathState::Down)
        {
            down_at = Some(net.ms);
        }
    });
    let after = down_at.expect("path 0 down") - cut;
    assert!(after <= 300 + 10, "{after} ms");
}

#[test]
fn aggregate_mode_splits_by_capacity_and_loses_nothing_on_clean_paths() {
    let mut net = Net::new(Mode::Aggregate, &[10, 12]);
    net.run(300, |_| {});
    let mut n = 0;
    net.run(5000, |net| {
        n += 1;
        let now = net.now();
        net.dev.send(now, Class::Video, &datagram(n));
    });
    net.run(200, |_| {});
    assert_eq!(net.at_server.len(), 5000);
    let s = net.dev.stats();
    let (a, b) = (s.paths[0].sent, s.paths[1].sent);
    assert_eq!(a + b, 5000, "each datagram on one path");
    assert!(a.abs_diff(b) < 500, "equal paths, equal shares: {a} {b}");
}

/// Aggregate mode behind two shaped paths (`kbps` each, 100 ms queues, 10 ms delay)
/// carrying `load_kbps` of 1000-byte datagrams for 30 s: each path's share of what was
/// sent in the last 20 s, the share of those datagrams that did not arrive, and the
/// share that did not arrive within 60 ms (10 ms of path, 50 of queue and reordering).
fn shaped_split(kbps: [u32; 2], load_kbps: u32) -> ([f64; 2], f64, f64) {
    let mut net = Net::new(Mode::Aggregate, &[10, 10]);
    for (link, k) in net.up.iter_mut().zip(kbps) {
        link.rate = Some((f64::from(k) / 8.0, 100.0));
    }
    net.run(300, |_| {});
    let every = 8.0 / f64::from(load_kbps) * 1000.0; // ms between 1000-byte datagrams
    let (mut n, mut due) = (0u32, 0.0);
    let mut at_10s = ([0u64; 2], 0u32, 0usize);
    let mut sent_ms = vec![0u64];
    net.run(30_000, |net| {
        while due <= net.ms as f64 {
            n += 1;
            due += every;
            sent_ms.push(net.ms);
            let now = net.now();
            net.dev.send(now, Class::Video, &datagram(n));
        }
        if net.ms == 10_300 {
            let s = net.dev.stats();
            at_10s = ([s.paths[0].sent, s.paths[1].sent], n, net.at_server.len());
        }
    });
    net.run(300, |_| {});
    let s = net.dev.stats();
    let sent = [s.paths[0].sent - at_10s.0[0], s.paths[1].sent - at_10s.0[1]];
    let total = (sent[0] + sent[1]) as f64;
    let lost = 1.0 - (net.at_server.len() - at_10s.2) as f64 / f64::from(n - at_10s.1);
    let on_time = net
        .at_server
        .iter()
        .zip(&net.at_server_ms)
        .filter(|(d, at)| {
            let k = u32::from_be_bytes(d[..4].try_into().unwrap());
            k > at_10s.1 && **at <= sent_ms[k as usize] + 60
        })
        .count();
    let late = 1.0 - on_time as f64 / f64::from(n - at_10s.1);
    ([sent[0] as f64 / total, sent[1] as f64 / total], lost, late)
}

#[test]
fn aggregate_mode_splits_by_the_paths_capacities() {
    // 4 and 1 Mbit/s carrying 4: within ±10 % of the capacity ratio (0.8 / 0.2).
    let (share, lost, late) = shaped_split([4000, 1000], 4000);
    eprintln!("4 + 1 Mbit/s, 4 Mbit/s sent: shares {share:.3?}, lost {lost:.4}, late {late:.4}");
    assert!((0.72..=0.88).contains(&share[0]), "{share:?}");
    assert!(lost < 0.01 && late < 0.01, "lost {lost}, late {late}");
    // Equal paths stay equal.
    let (share, lost, late) = shaped_split([3000, 3000], 5000);
    eprintln!("3 + 3 Mbit/s, 5 Mbit/s sent: shares {share:.3?}, lost {lost:.4}, late {late:.4}");
    assert!((0.4..=0.6).contains(&share[0]), "{share:?}");
    assert!(lost < 0.01 && late < 0.01, "lost {lost}, late {late}");
}

#[test]
fn datagrams_are_classified_by_their_clear_headers() {
    assert_eq!(classify(&[0, 1, 0, 0], &[111], &[97]), Class::Control); // STUN
    assert_eq!(classify(&[23, 0xfe, 0xfd], &[111], &[97]), Class::Control); // DTLS
    assert_eq!(classify(&[0x80, 200], &[111], &[97]), Class::Rtcp);
    assert_eq!(classify(&[0x80, 111], &[111], &[97]), Class::Audio);
    assert_eq!(classify(&[0x80, 0x80 | 111], &[111], &[97]), Class::Audio); // marker set
    assert_eq!(classify(&[0x80, 97], &[111], &[97]), Class::Repair);
    assert_eq!(classify(&[0x80, 96], &[111], &[97]), Class::Video);
    assert_eq!(classify(&[0xf7, 0x01, 0, 0], &[111], &[97]), Class::Parity);
    assert_eq!(
        classify(&[0xf7, 0x80, 0, 1, 0, 0x80, 111], &[111], &[97]),
        Class::Audio
    );
}
