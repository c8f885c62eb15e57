//! Which paths a datagram goes on, by mode (docs/multipath.md).

use std::time::Duration;

use super::path::{Path, PathState};

/// SPEC §9 `media_trans_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 1 ("5G-enhanced"): every datagram on every healthy path; the first copy wins.
    Redundant = 1,
    /// 2: control data, audio, RTCP, repairs and keyframes on every path, other video
    /// spread; video is duplicated more as the worst path's loss grows.
    Balanced = 2,
    /// 3 ("4G-enhanced"): datagrams spread by each path's share, a slow path cut off.
    Aggregate = 3,
}

impl Mode {
    pub fn from_number(n: u8) -> Option<Mode> {
        match n {
            1 => Some(Mode::Redundant),
            2 => Some(Mode::Balanced),
            3 => Some(Mode::Aggregate),
            _ => None,
        }
    }
}

/// What a datagram carries, as far as the bond needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// STUN, DTLS (handshake, and the SCTP data channels: control data).
    Control,
    Audio,
    Rtcp,
    /// Retransmissions (RTX): repair of something already lost.
    Repair,
    /// FEC parity: redundancy already; spread like video, never copied.
    Parity,
    /// Packets of a keyframe (told by the sender).
    Keyframe,
    Video,
}

impl Class {
    /// Duplicated in balanced mode.
    fn precious(self) -> bool {
        !matches!(self, Class::Video | Class::Parity)
    }
}

/// Paths slower than the fastest by more than this carry nothing in aggregate mode: a
/// frame spread over them would wait for its slowest part.
pub const LATENCY_CUT: Duration = Duration::from_millis(80);
/// Balanced mode starts duplicating video above this loss on the worst path, and
/// duplicates all of it from [`FULL_DUPLICATION_LOSS`]. Below, FEC above the bond repairs
/// loss for a fraction of the bytes (at 5 % loss on both paths, duplicating from 1 % sent
/// 1.9 bytes per byte).
const DUPLICATION_FROM_LOSS: f64 = 0.10;
const FULL_DUPLICATION_LOSS: f64 = 0.30;

/// Indices into `paths` a datagram of `class` and `bytes` goes on. `loss_now`: the
/// sender has seen loss on every path just now (before the paths' figures show it).
/// `dup` is balanced mode's running share of video to duplicate (error diffusion, no
/// randomness).
pub fn choose(
    mode: Mode,
    class: Class,
    loss_now: bool,
    bytes: usize,
    paths: &mut [Path],
    dup: &mut f64,
    out: &mut Vec<usize>,
) {
    out.clear();
    let usable: Vec<usize> = (0..paths.len())
        .filter(|&i| paths[i].state == PathState::Up)
        .collect();
    // Nothing healthy: try every path rather than none (the first that works wins).
    let usable = if usable.is_empty() {
        (0..paths.len()).collect()
    } else {
        usable
    };
    if usable.is_empty() {
        return;
    }
    // Copies may also go on a path that is back but still proving itself: a copy that
    // is lost costs nothing (the other paths carry the datagram too), one that arrives
    // first saves time. Only what is spread waits for a path to be up.
    let copies = || {
        (0..paths.len()).filter(|&i| usable.contains(&i) || paths[i].state == PathState::Recovering)
    };
    // Control data (DTLS: the data channels) is sent enough times that losing every copy
    // is rarer than CONTROL_LOSS_TARGET at the paths' measured loss: with 5 % on both of
    // two paths one copy each still lost 3 of 600 messages. In redundant mode so is what
    // repairs a loss (NACKs in RTCP, retransmissions): at 20 % on both paths 4 % of the
    // datagrams are lost on both, and a NACK or its retransmission lost too costs the
    // frame another round trip (one copy: frames 156-219 ms late anywhere in a run; three:
    // none over 80 ms after the loss's first 0.3 s, in the runs printed frame by frame).
    // With loss seen now, at least two: the first 0.3 s are before the paths' figures
    // show a new loss, and one copy each cost frames there.
    let repeat = match (mode, class) {
        (_, Class::Control) => copies_per_path(paths, &usable),
        (Mode::Redundant, Class::Rtcp | Class::Repair) => {
            copies_per_path(paths, &usable).max(if loss_now { 2 } else { 1 })
        }
        _ => 1,
    };
    match mode {
        Mode::Redundant | Mode::Balanced if class.precious() => {
            let all: Vec<usize> = copies().collect();
            for _ in 0..repeat {
                out.extend(&all);
            }
        }
        Mode::Redundant => out.extend(copies()),
        Mode::Balanced => {
            let first = spread(bytes, paths, &usable);
            out.push(first);
            // Data loss only: its samples count tens of datagrams each, the probe loss
            // one probe each (at a true 5 % the probe average read 10-20 % half the time,
            // and duplicating for it sent up to 1.31 bytes per byte; data loss read
            // 3-7.5 %). Every usable path carries data here (a share of at least 4 %).
            let worst = usable
                .iter()
                .map(|&i| paths[i].data_loss)
                .fold(0.0, f64::max);
            *dup += ((worst - DUPLICATION_FROM_LOSS)
                / (FULL_DUPLICATION_LOSS - DUPLICATION_FROM_LOSS))
                .clamp(0.0, 1.0);
            if *dup >= 1.0 {
                *dup -= 1.0;
                // The copy goes on the best other path.
                if let Some(&second) = usable
                    .iter()
                    .filter(|&&i| i != first)
                    .min_by(|&&a, &&b| paths[a].data_loss.total_cmp(&paths[b].data_loss))
                {
                    out.push(second);
                }
            }
        }
        Mode::Aggregate => {
            let first = spread(bytes, paths, &usable);
            out.push(first);
        }
    }
}

/// Control data lost on every path at once, at most this often (per datagram).
const CONTROL_LOSS_TARGET: f64 = 1e-5;
/// Copies of a control datagram per path, at most.
const MAX_CONTROL_REPEATS: usize = 3;

/// How many copies of a datagram that is repeated (control data; in redundant mode also
/// NACKs and retransmissions) each path gets: the fewest that make losing
/// all of them rarer than [`CONTROL_LOSS_TARGET`], at each path's measured loss
/// ([`Path::loss_for_copies`]; a path with none measured counts as losing 0.1 %).
fn copies_per_path(paths: &[Path], usable: &[usize]) -> usize {
    let all_lost: f64 = usable
        .iter()
        .map(|&i| paths[i].loss_for_copies().clamp(0.001, 0.99))
        .product();
    let n = (CONTROL_LOSS_TARGET.ln() / all_lost.ln()).ceil();
    (n.max(1.0) as usize).min(MAX_CONTROL_REPEATS)
}

/// Weighted round robin by bytes among the usable paths not cut off for latency.
fn spread(bytes: usize, paths: &mut [Path], usable: &[usize]) -> usize {
    let fastest = usable
        .iter()
        .filter_map(|&i| paths[i].srtt)
        .min()
        .unwrap_or(Duration::ZERO);
    let fast: Vec<usize> = usable
        .iter()
        .copied()
        .filter(|&i| paths[i].srtt.is_none_or(|r| r <= fastest + LATENCY_CUT))
        .collect();
    let total: f64 = fast.iter().map(|&i| paths[i].weight).sum();
    let b = bytes as f64;
    for &i in &fast {
        paths[i].credit += b * paths[i].weight / total.max(f64::MIN_POSITIVE);
    }
    let pick = fast
        .iter()
        .copied()
        .max_by(|&a, &b| paths[a].credit.total_cmp(&paths[b].credit))
        .unwrap_or(usable[0]);
    paths[pick].credit -= b;
    // Bounded credit: a path that was cut off does not come back owed a burst.
    for &i in &fast {
        paths[i].credit = paths[i].credit.clamp(-4.0 * b, 4.0 * b);
    }
    pick
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn paths(n: u8) -> Vec<Path> {
        let t = Instant::now();
        (0..n).map(|i| Path::new(i, t)).collect()
    }

    fn share(mode: Mode, class: Class, ps: &mut [Path], n: usize) -> Vec<usize> {
        let mut count = vec![0; ps.len()];
        let (mut dup, mut out) = (0.0, Vec::new());
        for _ in 0..n {
            choose(mode, class, false, 1000, ps, &mut dup, &mut out);
            for &i in &out {
                count[i] += 1;
            }
        }
        count
    }

    #[test]
    fn redundant_sends_everything_on_every_healthy_path() {
        let mut ps = paths(3);
        ps[2].state = PathState::Down;
        assert_eq!(
            share(Mode::Redundant, Class::Video, &mut ps, 10),
            [10, 10, 0]
        );
        // All down: every path is tried.
        for p in &mut ps {
            p.state = PathState::Down;
        }
        assert_eq!(
            share(Mode::Redundant, Class::Video, &mut ps, 10),
            [10, 10, 10]
        );
    }

    #[test]
    fn copies_also_go_on_a_recovering_path_but_spreading_waits() {
        let mut ps = paths(2);
        ps[1].state = PathState::Recovering;
        assert_eq!(share(Mode::Redundant, Class::Video, &mut ps, 10), [10, 10]);
        assert_eq!(share(Mode::Balanced, Class::Audio, &mut ps, 10), [10, 10]);
        assert_eq!(share(Mode::Aggregate, Class::Video, &mut ps, 10), [10, 0]);
    }

    #[test]
    fn control_data_and_redundant_repairs_are_repeated_as_the_loss_needs() {
        let mut ps = paths(2);
        // Clean paths: one copy each.
        assert_eq!(share(Mode::Balanced, Class::Control, &mut ps, 10), [10, 10]);
        // 5 % on both: two copies each (0.05^4 < 1e-5 < 0.05^2).
        ps[0].data_loss = 0.05;
        ps[1].data_loss = 0.05;
        assert_eq!(share(Mode::Balanced, Class::Control, &mut ps, 10), [20, 20]);
        assert_eq!(
            share(Mode::Redundant, Class::Control, &mut ps, 10),
            [20, 20]
        );
        // Other classes are not repeated.
        assert_eq!(share(Mode::Redundant, Class::Audio, &mut ps, 10), [10, 10]);
        assert_eq!(share(Mode::Redundant, Class::Video, &mut ps, 10), [10, 10]);
        // Repairs and RTCP (NACKs) are, in redundant mode only: balanced mode spreads
        // video, so its retransmissions are many and every copy counts against its bytes.
        for class in [Class::Repair, Class::Rtcp] {
            assert_eq!(share(Mode::Redundant, class, &mut ps, 10), [20, 20]);
            assert_eq!(share(Mode::Balanced, class, &mut ps, 10), [10, 10]);
        }
        // 20 % on both: three copies each (0.04^3 > 1e-5, capped at three).
        ps[0].data_loss = 0.2;
        ps[1].data_loss = 0.2;
        assert_eq!(share(Mode::Redundant, Class::Repair, &mut ps, 10), [30, 30]);
        // At most three.
        ps[0].data_loss = 0.6;
        ps[1].data_loss = 0.6;
        assert_eq!(share(Mode::Balanced, Class::Control, &mut ps, 10), [30, 30]);
    }

    #[test]
    fn repairs_go_twice_per_path_while_loss_is_seen_before_it_is_measured() {
        let mut ps = paths(2);
        let picks = |mode, class, ps: &mut [Path]| {
            let (mut dup, mut out) = (0.0, Vec::new());
            choose(mode, class, true, 100, ps, &mut dup, &mut out);
            out
        };
        for class in [Class::Repair, Class::Rtcp] {
            assert_eq!(picks(Mode::Redundant, class, &mut ps), [0, 1, 0, 1]);
            // Not in balanced mode.
            assert_eq!(picks(Mode::Balanced, class, &mut ps), [0, 1]);
        }
        // Not what is not a repair.
        assert_eq!(picks(Mode::Redundant, Class::Video, &mut ps), [0, 1]);
        // Measured loss asking for more wins.
        ps[0].data_loss = 0.2;
        ps[1].data_loss = 0.2;
        assert_eq!(picks(Mode::Redundant, Class::Repair, &mut ps).len(), 6);
    }

    #[test]
    fn aggregate_spreads_by_weight() {
        let mut ps = paths(2);
        ps[0].weight = 0.8;
        ps[1].weight = 0.2;
        assert_eq!(
            share(Mode::Aggregate, Class::Video, &mut ps, 1000),
            [800, 200]
        );
    }

    #[test]
    fn a_slow_path_is_cut_off_in_aggregate_mode() {
        let mut ps = paths(2);
        ps[0].srtt = Some(Duration::from_millis(30));
        ps[1].srtt = Some(Duration::from_millis(30) + LATENCY_CUT + Duration::from_millis(1));
        assert_eq!(share(Mode::Aggregate, Class::Video, &mut ps, 100), [100, 0]);
    }

    #[test]
    fn balanced_duplicates_what_is_precious_and_more_video_as_loss_grows() {
        let mut ps = paths(2);
        assert_eq!(share(Mode::Balanced, Class::Audio, &mut ps, 10), [10, 10]);
        assert_eq!(share(Mode::Balanced, Class::Control, &mut ps, 10), [10, 10]);
        let clean: usize = share(Mode::Balanced, Class::Video, &mut ps, 1000)
            .iter()
            .sum();
        assert_eq!(clean, 1000, "no loss: video is not duplicated");
        ps[1].data_loss = 0.05; // FEC's job
        let some: usize = share(Mode::Balanced, Class::Video, &mut ps, 1000)
            .iter()
            .sum();
        assert_eq!(some, 1000);
        let parity: usize = share(Mode::Balanced, Class::Parity, &mut ps, 10)
            .iter()
            .sum();
        assert_eq!(parity, 10);
        ps[1].data_loss = 0.2; // halfway to full duplication
        let lossy: usize = share(Mode::Balanced, Class::Video, &mut ps, 1000)
            .iter()
            .sum();
        assert!((1495..=1505).contains(&lossy), "{lossy}");
        ps[1].data_loss = 0.35;
        let bad: usize = share(Mode::Balanced, Class::Video, &mut ps, 1000)
            .iter()
            .sum();
        assert_eq!(bad, 2000);
    }
}
