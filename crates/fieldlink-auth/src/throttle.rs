//! Login throttle: after `free` consecutive failures for one key (a device id or an
//! address), every further attempt must wait a delay that doubles per failure up to `max`.
//! Time is passed in, so tests need no sleeping. The table is bounded.

use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
struct Entry {
    failures: u32,
    blocked_until: Option<Instant>,
    last: Instant,
}

#[derive(Debug)]
pub struct Throttle {
    free: u32,
    base: Duration,
    max: Duration,
    capacity: usize,
    entries: HashMap<String, Entry>,
}

impl Throttle {
    /// `free` failures pass unslowed; then delays of `base`, 2·`base`, … capped at `max`.
    pub fn new(free: u32, base: Duration, max: Duration, capacity: usize) -> Self {
        Self {
            free,
            base,
            max,
            capacity: capacity.max(1),
            entries: HashMap::new(),
        }
    }

    /// `Err(wait)` if `key` must wait before trying again.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), Duration> {
        match self.entries.get(key).and_then(|e| e.blocked_until) {
            Some(until) if until > now => Err(until - now),
            _ => Ok(()),
        }
    }

    pub fn failure(&mut self, key: &str, now: Instant) {
        if !self.entries.contains_key(key) && self.entries.len() >= self.capacity {
            self.evict(now);
        }
        let e = self.entries.entry(key.to_string()).or_insert(Entry {
            failures: 0,
            blocked_until: None,
            last: now,
        });
        e.failures = e.failures.saturating_add(1);
        e.last = now;
        if e.failures >= self.free {
            let exp = (e.failures - self.free).min(20);
            let delay = self.base.saturating_mul(1u32 << exp).min(self.max);
            e.blocked_until = Some(now + delay);
        }
    }

    pub fn success(&mut self, key: &str) {
        self.entries.remove(key);
    }

    /// Drops entries idle longer than `max`, or else the oldest, to stay within capacity.
    fn evict(&mut self, now: Instant) {
        let max = self.max;
        self.entries
            .retain(|_, e| now.saturating_duration_since(e.last) < max);
        if self.entries.len() >= self.capacity {
            if let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last)
                .map(|(k, _)| k.clone())
            {
                self.entries.remove(&oldest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slows_down_after_free_failures() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut t = Throttle::new(3, s, Duration::from_secs(8), 10);
        for _ in 0..2 {
            t.failure("a", t0);
            assert!(t.check("a", t0).is_ok());
        }
        t.failure("a", t0);
        assert_eq!(t.check("a", t0), Err(s));
        assert!(t.check("a", t0 + s).is_ok());
        t.failure("a", t0 + s);
        assert_eq!(t.check("a", t0 + s), Err(2 * s));
        for _ in 0..10 {
            t.failure("a", t0 + s);
        }
        assert_eq!(t.check("a", t0 + s), Err(Duration::from_secs(8)));
        assert!(t.check("b", t0).is_ok());
        t.success("a");
        assert!(t.check("a", t0 + s).is_ok());
    }

    #[test]
    fn bounded() {
        let t0 = Instant::now();
        let mut t = Throttle::new(1, Duration::from_secs(1), Duration::from_secs(60), 4);
        for i in 0..100 {
            t.failure(&i.to_string(), t0 + Duration::from_millis(i));
        }
        assert!(t.entries.len() <= 4);
        assert!(t.check("99", t0 + Duration::from_millis(99)).is_err());
    }
}
