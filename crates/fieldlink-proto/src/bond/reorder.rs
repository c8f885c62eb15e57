//! The receiving side's sequence: the first copy of each datagram wins, later copies are
//! dropped, and datagrams are handed up in order — a gap is waited for at most `budget`,
//! then skipped (DTLS/SRTP and NACK deal with it as with any loss). A skipped datagram
//! that does come after all (a path's queue outgrew the budget) is still handed up, out
//! of order, once: dropping it would make a loss of what arrived, and its repair would
//! be more traffic on a path that is already queueing.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Sequence numbers remembered behind the newest, for telling duplicates.
const WINDOW: u32 = 8192;
/// Datagrams held waiting for a gap, at most (beyond: the oldest gap is skipped).
const MAX_HELD: usize = 1024;

/// Sequence number `a` comes before `b` (32-bit numbers that wrap: the nearer way round).
pub fn seq_before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReorderStats {
    pub delivered: u64,
    pub duplicates: u64,
    /// Datagrams never seen on any path within the budget.
    pub skipped: u64,
    /// Delivered after waiting for an earlier one.
    pub reordered: u64,
    /// Skipped, then handed up when it came after all (out of order).
    pub late: u64,
}

#[derive(Debug)]
pub struct Reorder {
    /// The next sequence number to hand up. Senders number from 1, so the first datagram
    /// waits for any earlier one still on a slower path.
    next: Option<u32>,
    /// Ahead of `next`: seq → (when it came, datagram).
    held: BTreeMap<u64, (Instant, Vec<u8>)>,
    /// Seen sequence numbers at or after `next` - WINDOW (bit per seq, ring).
    seen: Vec<u64>,
    /// Of those, the skipped ones not come yet (same ring).
    skipped: Vec<u64>,
    /// `next` extended to 64 bits (sequence numbers wrap).
    base: u64,
    stats: ReorderStats,
}

impl Default for Reorder {
    fn default() -> Self {
        Reorder::starting_at(1)
    }
}

impl Reorder {
    /// A sequence whose first datagram is `seq`.
    pub fn starting_at(seq: u32) -> Reorder {
        Reorder {
            next: Some(seq),
            held: BTreeMap::new(),
            seen: vec![0; (WINDOW as usize * 2) / 64],
            skipped: vec![0; (WINDOW as usize * 2) / 64],
            base: u64::from(seq),
            stats: ReorderStats::default(),
        }
    }

    pub fn stats(&self) -> ReorderStats {
        self.stats
    }

    /// 32-bit `seq` as a 64-bit position near `base`.
    fn extend(&self, seq: u32) -> u64 {
        let cur = self.base as u32;
        let delta = seq.wrapping_sub(cur) as i32 as i64;
        (self.base as i64 + delta).max(0) as u64
    }

    /// The word and mask of `pos` in a ring of [`Reorder::seen`]'s size.
    fn slot(&self, pos: u64) -> (usize, u64) {
        let n = self.seen.len() as u64 * 64;
        let i = (pos % n) as usize;
        (i / 64, 1 << (i % 64))
    }

    /// One datagram with its sequence number; what can be handed up now, in order.
    pub fn push(&mut self, now: Instant, seq: u32, data: &[u8], out: &mut Vec<Vec<u8>>) {
        if self.next.is_none() {
            self.next = Some(seq);
            self.base = u64::from(seq);
        }
        let pos = self.extend(seq);
        if pos + u64::from(WINDOW) < self.base || pos >= self.base + u64::from(WINDOW) {
            // Far outside the window: a restarted sender or garbage. Start over from it.
            if pos >= self.base + u64::from(WINDOW) {
                self.flush_all(out);
                self.seen.fill(0);
                self.skipped.fill(0);
                self.base = u64::from(seq);
                self.next = Some(seq);
                return self.push(now, seq, data, out);
            }
            self.stats.duplicates += 1;
            return;
        }
        let (word, mask) = self.slot(pos);
        if self.skipped[word] & mask != 0 {
            // Given up on, and here after all: handed up now, once.
            self.skipped[word] &= !mask;
            self.stats.late += 1;
            out.push(data.to_vec());
            return;
        }
        if self.seen[word] & mask != 0 || pos < self.base {
            self.stats.duplicates += 1;
            return;
        }
        self.seen[word] |= mask;
        if pos == self.base {
            self.deliver(data.to_vec(), false, out);
            self.release_ready(out);
        } else {
            self.held.insert(pos, (now, data.to_vec()));
            if self.held.len() > MAX_HELD {
                self.skip_to_first_held(out);
            }
        }
    }

    /// Hands up what waited longer than `budget` (skipping the gaps before it).
    pub fn handle_timeout(&mut self, now: Instant, budget: Duration, out: &mut Vec<Vec<u8>>) {
        while let Some((_, (at, _))) = self.held.first_key_value() {
            if now.duration_since(*at) < budget {
                break;
            }
            self.skip_to_first_held(out);
        }
    }

    /// Every path that carries data has delivered `seq` or later. A path keeps its
    /// datagrams' order, so a gap before `seq` was lost on every path it was sent on:
    /// waiting longer for it would only hold back what came after it (a repair is asked
    /// for once the layer above sees the gap). Skipped, not dropped: should it come after
    /// all (a path that reordered), it is handed up late as after a timeout.
    pub fn passed(&mut self, seq: u32, out: &mut Vec<Vec<u8>>) {
        let pos = self.extend(seq);
        while self.base < pos && self.held.first_key_value().is_some_and(|(&k, _)| k <= pos) {
            self.skip_to_first_held(out);
        }
    }

    /// When the oldest held datagram's wait ends.
    pub fn poll_timeout(&self, budget: Duration) -> Option<Instant> {
        self.held.first_key_value().map(|(_, (at, _))| *at + budget)
    }

    fn deliver(&mut self, data: Vec<u8>, waited: bool, out: &mut Vec<Vec<u8>>) {
        self.stats.delivered += 1;
        self.stats.reordered += u64::from(waited);
        out.push(data);
        self.advance(self.base + 1);
    }

    /// Moves `base` to `to`, forgetting the seen bits that fall out of the window behind.
    fn advance(&mut self, to: u64) {
        while self.base < to {
            // The slot `base - WINDOW` is reused for `base + WINDOW`: clear it.
            let (word, mask) = self.slot(self.base + u64::from(WINDOW));
            self.seen[word] &= !mask;
            self.skipped[word] &= !mask;
            self.base += 1;
        }
        self.next = Some(self.base as u32);
    }

    fn release_ready(&mut self, out: &mut Vec<Vec<u8>>) {
        while let Some(entry) = self.held.first_entry() {
            if *entry.key() != self.base {
                break;
            }
            let (_, data) = entry.remove();
            self.deliver(data, true, out);
        }
    }

    fn skip_to_first_held(&mut self, out: &mut Vec<Vec<u8>>) {
        if let Some((&pos, _)) = self.held.first_key_value() {
            self.stats.skipped += pos - self.base;
            // Marked seen and skipped: the first late copy is handed up, later ones are
            // duplicates.
            for b in self.base..pos {
                let (word, mask) = self.slot(b);
                self.seen[word] |= mask;
                self.skipped[word] |= mask;
            }
            self.advance(pos);
            self.release_ready(out);
        }
    }

    fn flush_all(&mut self, out: &mut Vec<Vec<u8>>) {
        while !self.held.is_empty() {
            self.skip_to_first_held(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(r: &mut Reorder, now: Instant, seqs: &[u32]) -> Vec<u32> {
        let mut out = Vec::new();
        for s in seqs {
            r.push(now, *s, &s.to_be_bytes(), &mut out);
        }
        out.iter()
            .map(|d| u32::from_be_bytes(d[..4].try_into().unwrap()))
            .collect()
    }

    #[test]
    fn first_copy_wins_and_order_is_restored() {
        let t = Instant::now();
        let mut r = Reorder::starting_at(10);
        assert_eq!(
            run(&mut r, t, &[10, 11, 11, 13, 12, 10, 14, 13]),
            [10, 11, 12, 13, 14]
        );
        let s = r.stats();
        assert_eq!(
            (s.delivered, s.duplicates, s.reordered, s.skipped),
            (5, 3, 1, 0)
        );
    }

    #[test]
    fn the_first_datagram_waits_for_an_earlier_one_on_a_slower_path() {
        let t = Instant::now();
        let mut r = Reorder::default();
        assert_eq!(run(&mut r, t, &[2, 1, 3]), [1, 2, 3]);
    }

    #[test]
    fn a_gap_is_waited_for_at_most_the_budget() {
        let t = Instant::now();
        let budget = Duration::from_millis(30);
        let mut r = Reorder::default();
        assert_eq!(run(&mut r, t, &[1, 3, 4]), [1]);
        assert_eq!(r.poll_timeout(budget), Some(t + budget));
        let mut out = Vec::new();
        r.handle_timeout(t + Duration::from_millis(29), budget, &mut out);
        assert!(out.is_empty());
        r.handle_timeout(t + budget, budget, &mut out);
        assert_eq!(out.len(), 2, "3 and 4 after the wait, 2 skipped");
        assert_eq!(r.stats().skipped, 1);
        // 2 arriving now is late: handed up out of order, once; its other copy is a
        // duplicate.
        assert_eq!(run(&mut r, t + budget, &[2, 5, 2]), [2, 5]);
        let s = r.stats();
        assert_eq!((s.late, s.duplicates, s.delivered), (1, 1, 4));
    }

    #[test]
    fn a_gap_every_path_has_passed_is_not_waited_for() {
        let t = Instant::now();
        let mut r = Reorder::default();
        assert_eq!(run(&mut r, t, &[1, 3, 4, 6, 7]), [1]);
        let mut out = Vec::new();
        // Every path has delivered 4 or later: 2 is lost, 5 may still come.
        r.passed(4, &mut out);
        assert_eq!(out, [3u32.to_be_bytes(), 4u32.to_be_bytes()]);
        assert_eq!(r.stats().skipped, 1);
        r.passed(4, &mut out);
        assert_eq!(out.len(), 2, "nothing more before 4");
        assert_eq!(run(&mut r, t, &[5]), [5, 6, 7]);
        // A path that reordered: 2 comes after all, handed up late, once.
        assert_eq!(run(&mut r, t, &[2, 2]), [2]);
        assert_eq!(r.stats().late, 1);
    }

    #[test]
    fn sequence_numbers_wrap() {
        let t = Instant::now();
        let mut r = Reorder::starting_at(u32::MAX - 1);
        let seqs = [u32::MAX - 1, u32::MAX, 0, 1, u32::MAX, 0];
        assert_eq!(run(&mut r, t, &seqs), [u32::MAX - 1, u32::MAX, 0, 1]);
        assert_eq!(r.stats().duplicates, 2);
    }

    #[test]
    fn a_long_run_keeps_telling_duplicates_across_the_ring() {
        let t = Instant::now();
        let mut r = Reorder::default();
        let mut out = Vec::new();
        for s in 1..=50_000u32 {
            r.push(t, s, b"x", &mut out);
            r.push(t, s, b"x", &mut out); // the other path's copy
        }
        assert_eq!(out.len(), 50_000);
        assert_eq!(r.stats().duplicates, 50_000);
    }

    #[test]
    fn a_sender_that_restarts_far_ahead_is_followed() {
        let t = Instant::now();
        let mut r = Reorder::default();
        assert_eq!(
            run(&mut r, t, &[5, 6, 1_000_000, 1_000_001]),
            [5, 6, 1_000_000, 1_000_001]
        );
    }

    #[test]
    fn held_datagrams_are_bounded() {
        let t = Instant::now();
        let mut r = Reorder::default();
        let mut out = Vec::new();
        r.push(t, 0, b"x", &mut out);
        for s in 2..(MAX_HELD as u32 + 10) {
            r.push(t, s, b"x", &mut out);
        }
        assert!(r.held.len() <= MAX_HELD);
        assert_eq!(r.stats().skipped, 1, "only seq 1 was given up");
    }
}
