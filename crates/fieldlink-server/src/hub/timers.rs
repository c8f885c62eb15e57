//! When each peer connection wants its next timeout: a min-heap, so the hub's loop finds
//! the soonest one and the due ones without visiting every peer on every iteration (with
//! hundreds of peers those scans, a hash lookup per peer twice per datagram, cost more than
//! a tenth of the forwarding CPU). Pure: no I/O, no clock.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Instant;

use super::ConnId;

/// Each scheduled peer's current timeout, and a heap of (timeout, peer) that may hold
/// stale entries (a peer rescheduled or removed): an entry counts only while it matches
/// the peer's current timeout, and stale ones are dropped as they reach the top.
#[derive(Debug, Default)]
pub(super) struct PeerTimers {
    current: HashMap<ConnId, Instant>,
    heap: BinaryHeap<Reverse<(Instant, ConnId)>>,
}

impl PeerTimers {
    /// Peer `conn` wants a timeout at `at` (replacing the one it had).
    pub(super) fn schedule(&mut self, conn: ConnId, at: Instant) {
        if self.current.insert(conn, at) == Some(at) {
            return;
        }
        self.heap.push(Reverse((at, conn)));
        // Stale entries leave the heap as their time comes; a peer rescheduled ever later
        // would still grow it, so it is rebuilt once stale entries outnumber live ones.
        if self.heap.len() > 2 * self.current.len() + 64 {
            self.heap = self
                .current
                .iter()
                .map(|(c, t)| Reverse((*t, *c)))
                .collect();
        }
    }

    /// Peer `conn` is gone: it wants no timeout.
    pub(super) fn remove(&mut self, conn: ConnId) {
        self.current.remove(&conn);
    }

    /// The soonest timeout of any peer.
    pub(super) fn next(&mut self) -> Option<Instant> {
        self.drop_stale();
        self.heap.peek().map(|Reverse((t, _))| *t)
    }

    /// The peers whose timeout is at or before `now`, soonest first; they are unscheduled
    /// (polling them after the timeout schedules them again).
    pub(super) fn due(&mut self, now: Instant) -> Vec<ConnId> {
        let mut due = Vec::new();
        loop {
            self.drop_stale();
            match self.heap.peek() {
                Some(Reverse((t, conn))) if *t <= now => {
                    due.push(*conn);
                    self.current.remove(conn);
                    self.heap.pop();
                }
                _ => return due,
            }
        }
    }

    fn drop_stale(&mut self) {
        while let Some(Reverse((t, conn))) = self.heap.peek() {
            if self.current.get(conn) == Some(t) {
                return;
            }
            self.heap.pop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn due_peers_come_soonest_first_once_and_rescheduling_replaces() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut timers = PeerTimers::default();
        timers.schedule(1, ms(30));
        timers.schedule(2, ms(10));
        timers.schedule(3, ms(20));
        timers.schedule(2, ms(40)); // replaces 10
        timers.schedule(3, ms(20)); // the same: no second entry
        assert_eq!(timers.next(), Some(ms(20)));
        assert_eq!(timers.due(ms(5)), Vec::<ConnId>::new());
        assert_eq!(timers.due(ms(30)), vec![3, 1]);
        assert_eq!(timers.due(ms(30)), Vec::<ConnId>::new());
        assert_eq!(timers.next(), Some(ms(40)));
        timers.remove(2);
        assert_eq!(timers.next(), None);
        assert_eq!(timers.due(ms(1000)), Vec::<ConnId>::new());
    }

    #[test]
    fn stale_entries_do_not_pile_up() {
        let t0 = Instant::now();
        let mut timers = PeerTimers::default();
        for i in 0..10_000u64 {
            timers.schedule(i % 5, t0 + Duration::from_micros(i));
        }
        assert!(timers.heap.len() <= 2 * 5 + 64 + 1, "{}", timers.heap.len());
        // Each peer is due once, at its last timeout.
        let due = timers.due(t0 + Duration::from_secs(1));
        assert_eq!(due, vec![0, 1, 2, 3, 4]);
    }
}
