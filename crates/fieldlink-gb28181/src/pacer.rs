//! Pacing of the platform's own requests to devices (queries after registration), pure:
//! at most one in flight per device and [`Pacer::new`]'s `max_in_flight` in total, so a
//! registration storm becomes a steady stream of queries instead of a burst that
//! retransmits together. Time is passed in; nothing here does I/O.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Queued requests per device and in flight, with the order devices get their turn.
#[derive(Debug)]
pub struct Pacer<K, W> {
    queued: HashMap<K, VecDeque<W>>,
    /// Devices with something queued and nothing in flight, in turn order.
    ready: VecDeque<K>,
    /// Devices with a request in flight, since when.
    in_flight: HashMap<K, Instant>,
    max_in_flight: usize,
    max_queued: usize,
    queued_total: usize,
    /// A request in flight this long is taken as ended (no answer, no give-up seen).
    expiry: Duration,
}

impl<K: Clone + Eq + Hash, W: PartialEq> Pacer<K, W> {
    /// `max_queued` bounds what waits (beyond it, [`Pacer::push`] refuses).
    pub fn new(max_in_flight: usize, max_queued: usize, expiry: Duration) -> Self {
        Pacer {
            queued: HashMap::new(),
            ready: VecDeque::new(),
            in_flight: HashMap::new(),
            max_in_flight: max_in_flight.max(1),
            max_queued,
            queued_total: 0,
            expiry,
        }
    }

    /// Queues `what` for `key` (once: the same request already waiting is not queued
    /// twice); false when the queue is full (the caller says so).
    pub fn push(&mut self, key: K, what: W) -> bool {
        if self.queued.get(&key).is_some_and(|q| q.contains(&what)) {
            return true;
        }
        if self.queued_total >= self.max_queued {
            return false;
        }
        let q = self.queued.entry(key.clone()).or_default();
        q.push_back(what);
        self.queued_total += 1;
        if q.len() == 1 && !self.in_flight.contains_key(&key) {
            self.ready.push_back(key);
        }
        true
    }

    /// The next request to send now, if the limits allow one; it is then in flight.
    pub fn next(&mut self, now: Instant) -> Option<(K, W)> {
        self.expire(now);
        if self.in_flight.len() >= self.max_in_flight {
            return None;
        }
        while let Some(key) = self.ready.pop_front() {
            let Some(q) = self.queued.get_mut(&key) else {
                continue; // forgotten meanwhile
            };
            let Some(what) = q.pop_front() else {
                self.queued.remove(&key);
                continue;
            };
            self.queued_total -= 1;
            if q.is_empty() {
                self.queued.remove(&key);
            }
            self.in_flight.insert(key.clone(), now);
            return Some((key, what));
        }
        None
    }

    /// `key`'s request in flight ended (answered or given up): its next may go.
    pub fn done(&mut self, key: &K) {
        if self.in_flight.remove(key).is_some() && self.queued.contains_key(key) {
            self.ready.push_back(key.clone());
        }
    }

    /// Drops everything of `key` (it went offline).
    pub fn forget(&mut self, key: &K) {
        if let Some(q) = self.queued.remove(key) {
            self.queued_total -= q.len();
        }
        self.in_flight.remove(key);
        self.ready.retain(|k| k != key);
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    pub fn queued(&self) -> usize {
        self.queued_total
    }

    fn expire(&mut self, now: Instant) {
        let expiry = self.expiry;
        let stale: Vec<K> = self
            .in_flight
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= expiry)
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            self.done(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_per_device_and_a_total_limit() {
        let t = Instant::now();
        let mut p = Pacer::new(2, 100, Duration::from_secs(32));
        for d in ["a", "b", "c"] {
            for q in ["Catalog", "DeviceInfo"] {
                assert!(p.push(d, q));
            }
        }
        assert_eq!(p.next(t), Some(("a", "Catalog")));
        assert_eq!(p.next(t), Some(("b", "Catalog")));
        assert_eq!(p.next(t), None, "two in flight at most");
        p.done(&"a");
        // c waited longer than a's second query.
        assert_eq!(p.next(t), Some(("c", "Catalog")));
        assert_eq!(p.next(t), None);
        p.done(&"b");
        assert_eq!(p.next(t), Some(("a", "DeviceInfo")));
        p.done(&"c");
        assert_eq!(p.next(t), Some(("b", "DeviceInfo")));
        p.done(&"a");
        p.done(&"b");
        assert_eq!(p.next(t), Some(("c", "DeviceInfo")));
        p.done(&"c");
        assert_eq!(p.next(t), None);
        assert_eq!((p.in_flight(), p.queued()), (0, 0));
    }

    #[test]
    fn bounded_forgotten_and_expired() {
        let t = Instant::now();
        let mut p = Pacer::new(1, 3, Duration::from_secs(32));
        assert!(p.push("a", 1) && p.push("a", 2) && p.push("b", 1));
        assert!(p.push("a", 2), "already waiting: not queued twice");
        assert_eq!(p.queued(), 3);
        assert!(!p.push("c", 1), "the queue is full");
        assert_eq!(p.next(t), Some(("a", 1)));
        p.forget(&"a");
        assert_eq!(p.queued(), 1);
        assert_eq!(p.next(t), Some(("b", 1)));
        // b never answers: after the expiry its slot is free again.
        assert!(p.push("c", 1));
        assert_eq!(p.next(t + Duration::from_secs(1)), None);
        assert_eq!(p.next(t + Duration::from_secs(33)), Some(("c", 1)));
        // A done for something not in flight changes nothing.
        p.done(&"z");
        assert_eq!(p.in_flight(), 1);
    }
}
