use super::*;

/// A deterministic pseudo-random sequence (xorshift), so a failure replays.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn datagram(i: usize) -> Vec<u8> {
    // RTP-like first byte, varying lengths.
    let mut d = vec![0x80, (i % 256) as u8, (i / 256) as u8];
    d.extend(std::iter::repeat_n((i * 7) as u8, 30 + (i * 37) % 1100));
    d
}

fn wire_of(f: &mut Fec, d: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    f.send(Instant::now(), d, &mut |w| out.push(w.to_vec()));
    out
}

/// Sends `blocks` blocks of `k` through a channel losing `loss_pct` %, with the
/// receiver's reports flowing back; returns (delivered, sent) datagrams after the
/// first `warmup` blocks (the sender learns the loss from the reports).
fn run(loss_pct: u64, k: usize, blocks: usize, warmup: usize) -> (usize, usize, u64) {
    let (mut tx, mut rx) = (Fec::new(), Fec::new());
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut now = Instant::now();
    let (mut delivered, mut sent) = (0, 0);
    let mut seen = std::collections::HashSet::new();
    for b in 0..blocks {
        let mut wire = Vec::new();
        let mut all = Vec::new();
        for i in 0..k {
            let d = datagram(b * k + i);
            all.push(d.clone());
            wire.extend(wire_of(&mut tx, &d));
        }
        tx.flush(now, &mut |w| wire.push(w.to_vec()));
        let mut got = Vec::new();
        for w in wire {
            if rng.below(100) >= loss_pct {
                assert!(rx.receive(now, &w, &mut |d| got.push(d.to_vec())));
            }
        }
        for d in &got {
            assert!(all.contains(d), "delivered something never sent");
            assert!(seen.insert(d.clone()), "delivered twice");
        }
        if b >= warmup {
            sent += k;
            delivered += got.len();
        }
        now += Duration::from_millis(40);
        rx.handle_timeout(now, &mut |r| {
            assert!(tx.receive(now, r, &mut |_| panic!("a report delivers nothing")));
        });
    }
    (delivered, sent, tx.stats().parity_sent)
}

#[test]
fn no_loss_sends_no_parity_and_delivers_everything() {
    let (delivered, sent, parity) = run(0, 10, 50, 0);
    assert_eq!((delivered, parity), (sent, 0));
}

#[test]
fn parity_follows_the_reported_loss_and_recovers_blocks() {
    // Without FEC, 30 % loss on 10-datagram blocks delivers ~70 %.
    let (delivered, sent, parity) = run(30, 10, 400, 10);
    let pct = delivered as f64 / sent as f64 * 100.0;
    assert!(parity > 0);
    assert!(pct >= 99.0, "{delivered} of {sent} ({pct:.2} %)");
    let (delivered, sent, _) = run(10, 4, 400, 10);
    assert!(delivered * 1000 >= sent * 998, "{delivered} of {sent}");
}

#[test]
fn parity_count_meets_the_target() {
    assert_eq!(parity_for(10, 0.0), 0);
    assert_eq!(parity_for(10, 0.001), 0);
    // An overflowing link's loss gets no parity.
    assert_eq!(parity_for(10, 0.5), 0);
    assert_eq!(parity_for(10, 0.9), 0);
    for k in [1, 2, 5, 16, 40, 64] {
        for loss in [0.01, 0.05, 0.1, 0.2, 0.3] {
            let m = parity_for(k, loss);
            assert!(
                m >= 1 && m <= (4 * k + 4).min(MAX_M),
                "k {k} loss {loss}: {m}"
            );
            if m < (4 * k + 4).min(MAX_M) {
                assert!(more_than_lost(k + m, m, loss * 1.2) <= TARGET);
                assert!(m == 1 || more_than_lost(k + m - 1, m - 1, loss * 1.2) > TARGET);
            }
        }
    }
    // A lone datagram at 30 % loss: eight copies; a keyframe's 40 at 10 %: a third more.
    assert_eq!(parity_for(1, 0.3), 7);
    assert!(
        (10..=20).contains(&parity_for(40, 0.1)),
        "{}",
        parity_for(40, 0.1)
    );
}

#[test]
fn stun_and_foreign_datagrams_pass_untouched() {
    let mut f = Fec::new();
    let stun = [0u8, 1, 0, 0];
    assert_eq!(wire_of(&mut f, &stun), vec![stun.to_vec()]);
    assert!(!f.receive(Instant::now(), &stun, &mut |_| panic!()));
    assert!(!f.receive(Instant::now(), &[0x80, 1, 2], &mut |_| panic!()));
    let w = wire_of(&mut f, &[0x80, 9]);
    assert_eq!(w, vec![vec![MAGIC, 0, 0, 0, 0, 0x80, 9]]);
}

#[test]
fn hostile_datagrams_never_panic_nor_deliver_garbage() {
    let mut rng = Rng(7);
    let mut f = Fec::new();
    let now = Instant::now();
    for _ in 0..20_000 {
        let len = rng.below(40) as usize;
        let mut w: Vec<u8> = (0..len).map(|_| rng.below(256) as u8).collect();
        if let Some(b) = w.first_mut() {
            *b = MAGIC;
        }
        if let Some(b) = w.get_mut(1) {
            *b &= 0x83;
        }
        f.receive(now, &w, &mut |d| assert!(d.len() <= MAX_DATAGRAM));
    }
    assert!(f.rx.blocks.len() <= MAX_BLOCKS);
}

/// Two sides over a path whose one-way delay `delay(step)` may grow: every 100 ms
/// each sends a block of four datagrams (one in five of `a`'s lost) and its report;
/// returns the parity `a` sent per step.
fn parity_per_step(steps: usize, delay: impl Fn(usize) -> Duration) -> Vec<usize> {
    let (mut a, mut b) = (Fec::new(), Fec::new());
    let t0 = Instant::now();
    let mut n = 0;
    let mut per_step = Vec::new();
    for step in 0..steps {
        let (t, d) = (t0 + Duration::from_millis(100 * step as u64), delay(step));
        let mut from_a = Vec::new();
        for i in 0..4 {
            a.send(t, &datagram(step * 4 + i), &mut |w| from_a.push(w.to_vec()));
        }
        a.flush(t, &mut |w| from_a.push(w.to_vec()));
        per_step.push(from_a.iter().filter(|w| w[1] == KIND_PARITY).count());
        a.handle_timeout(t, &mut |w| from_a.push(w.to_vec()));
        for w in from_a {
            n += 1;
            if n % 5 != 0 || w[1] == KIND_REPORT {
                b.receive(t + d, &w, &mut |_| {});
            }
        }
        let mut from_b = Vec::new();
        b.send(t + d, &datagram(step), &mut |w| from_b.push(w.to_vec()));
        b.handle_timeout(t + d, &mut |w| from_b.push(w.to_vec()));
        for w in from_b {
            a.receive(t + d + d, &w, &mut |_| {});
        }
    }
    per_step
}

#[test]
fn parity_stops_while_a_queue_builds_and_resumes_after() {
    // A steady 20 ms path: parity for the reported ~20 % loss.
    let steady = parity_per_step(40, |_| Duration::from_millis(20));
    assert!(steady[10..].iter().all(|m| *m > 0), "{steady:?}");
    // From step 20 the delay grows 10 ms per step to 120 ms and stands there for 17 s
    // (an overloaded link's full queue), then drains at step 200: parity stops once
    // the round trip is 25 ms over its minimum, stays off while the queue stands, and
    // comes back when it drains.
    let queued = parity_per_step(280, |s| {
        let ms = match s {
            0..20 | 200.. => 20,
            20..30 => 20 + 10 * (s as u64 - 20),
            _ => 120,
        };
        Duration::from_millis(ms)
    });
    assert!(queued[10..20].iter().all(|m| *m > 0), "{queued:?}");
    assert!(queued[25..200].iter().all(|m| *m == 0), "{queued:?}");
    assert!(queued[215..].iter().all(|m| *m > 0), "{queued:?}");
}

/// A report: `received` of `expected` so far; stamp 1; echoing `echo`, held 0.
fn report_datagram(received: u32, expected: u32, echo: u32) -> Vec<u8> {
    let mut r = vec![MAGIC, KIND_REPORT];
    for v in [received, expected, 1, echo, 0] {
        r.extend_from_slice(&v.to_be_bytes());
    }
    r
}

/// `n`-th report to `a` at `at`: 80 % of 100 n received, echoing `echo`.
fn report(a: &mut Fec, at: Instant, n: u32, echo: u32) {
    a.receive(at, &report_datagram(80 * n, 100 * n, echo), &mut |_| {});
}

/// Parity `a` sends for a one-datagram block at `at`.
fn parity_at(a: &mut Fec, at: Instant) -> usize {
    let mut n = 0;
    a.send(at, &[0x80, 1, 2, 3], &mut |_| {});
    a.flush(at, &mut |w| n += usize::from(w[1] == KIND_PARITY));
    n
}

#[test]
fn parity_stops_while_the_transport_below_sees_a_queue() {
    // 20 % loss reported over a steady round trip: parity. The bond says a path is
    // queueing: none, for 300 ms after it last said so; then parity again (the reports
    // echo a stamp 20 ms old: the round trip stays at its minimum).
    let mut a = Fec::new();
    let t0 = Instant::now();
    let ms = |n: u64| t0 + Duration::from_millis(n);
    report(&mut a, t0, 1, 0);
    report(&mut a, ms(20), 2, 1);
    assert!(parity_at(&mut a, ms(30)) > 0);
    a.queue_seen(ms(40));
    assert_eq!(parity_at(&mut a, ms(50)), 0);
    report(&mut a, ms(120), 3, 100);
    assert_eq!(parity_at(&mut a, ms(300)), 0);
    report(&mut a, ms(320), 4, 300);
    assert!(parity_at(&mut a, ms(350)) > 0);
}

#[test]
fn parity_stops_when_reports_stop_coming() {
    let mut a = Fec::new();
    let t0 = Instant::now();
    // a's report clock starts at the first report (t0); the second echoes a stamp of
    // 1 ms 20 ms later.
    report(&mut a, t0, 1, 0);
    report(&mut a, t0 + Duration::from_millis(20), 2, 1);
    assert!(parity_at(&mut a, t0 + Duration::from_millis(30)) > 0);
    assert_eq!(parity_at(&mut a, t0 + Duration::from_millis(1100)), 0);
}

/// A report to `a` at `at`: `received` of `expected` so far, echoing the stamp of a
/// report sent `rtt` ms before (`a`'s report clock starts at `t0`).
fn report_of(a: &mut Fec, t0: Instant, at: u32, received: u32, expected: u32, rtt: u32) {
    let r = report_datagram(received, expected, (at - rtt).max(1));
    a.receive(t0 + Duration::from_millis(at.into()), &r, &mut |_| {});
}

#[test]
fn the_loss_of_a_queue_overflowing_brings_no_parity_after_it() {
    // A clean 20 ms path; then one round trip 60 ms over it (a queue fills) with 40 % of
    // the datagrams lost, and the next report, the queue drained, tells of 20 more lost
    // in the overflow. The queue stood only for a moment, so parity is held back only a
    // moment; the loss was the queue's, so none is sent after it either.
    let mut a = Fec::new();
    let t0 = Instant::now();
    report_of(&mut a, t0, 0, 100, 100, 0);
    report_of(&mut a, t0, 20, 200, 200, 20);
    report_of(&mut a, t0, 120, 260, 300, 80);
    report_of(&mut a, t0, 220, 340, 400, 20);
    report_of(&mut a, t0, 450, 440, 500, 20);
    assert_eq!(parity_at(&mut a, t0 + Duration::from_millis(460)), 0);
    // Loss with the round trip at its minimum is random loss: parity for it.
    report_of(&mut a, t0, 550, 520, 600, 20);
    assert!(parity_at(&mut a, t0 + Duration::from_millis(560)) > 0);
}

/// A STUN message of `kind` with transaction id `id` (no attributes).
fn stun(kind: u16, id: u8) -> Vec<u8> {
    let mut m = kind.to_be_bytes().to_vec();
    m.extend_from_slice(&[0, 0, 0x21, 0x12, 0xA4, 0x42]);
    m.extend_from_slice(&[id; 12]);
    m
}

#[test]
fn ice_checks_set_the_floor_the_queue_is_measured_from() {
    // ICE's check answered in 2 ms; the reports' round trips, from the first, 72 ms (the
    // call's first keyframe filled a queue): a queue of 70 ms, not none.
    let (mut with, mut without) = (Fec::new(), Fec::new());
    let t0 = Instant::now();
    let mut sent = Vec::new();
    with.send(t0, &stun(0x0001, 7), &mut |w| sent.push(w.to_vec()));
    assert_eq!(sent, vec![stun(0x0001, 7)], "STUN goes out as it is");
    // An answer to another transaction, and an error response, change nothing.
    let later = t0 + Duration::from_millis(1);
    assert!(!with.receive(later, &stun(0x0101, 8), &mut |_| {}));
    assert!(!with.receive(later, &stun(0x0111, 7), &mut |_| {}));
    assert!(!with.receive(t0 + Duration::from_millis(2), &stun(0x0101, 7), &mut |_| {}));
    for f in [&mut with, &mut without] {
        report_of(f, t0, 0, 0, 0, 0);
        report_of(f, t0, 100, 100, 100, 72);
        report_of(f, t0, 200, 200, 200, 72);
    }
    let queue = |f: &Fec| f.stats().queue_ms.unwrap_or(-1.0);
    assert!((69.0..=71.0).contains(&queue(&with)), "{}", queue(&with));
    assert_eq!(queue(&without), 0.0);
}
