//! Per-source limits for what the SIP port receives: a source (IP address) that sends
//! many messages that do not parse is ignored for a while, before any parsing, so a flood
//! of garbage costs the platform a map lookup per datagram. Bounded: at most
//! `max_sources` sources are tracked (the oldest entries make room).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct GuardConfig {
    /// Bad messages from one source within `window` that get it ignored.
    pub max_bad: u32,
    pub window: Duration,
    /// How long an ignored source stays ignored.
    pub block: Duration,
    pub max_sources: usize,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            max_bad: 50,
            window: Duration::from_secs(10),
            block: Duration::from_secs(60),
            max_sources: 65_536,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Source {
    since: Instant,
    bad: u32,
    blocked_until: Option<Instant>,
}

#[derive(Debug)]
pub struct Guard {
    cfg: GuardConfig,
    sources: HashMap<IpAddr, Source>,
    /// Messages dropped unread because their source was ignored.
    pub dropped: u64,
}

impl Guard {
    pub fn new(cfg: GuardConfig) -> Guard {
        Guard {
            cfg,
            sources: HashMap::new(),
            dropped: 0,
        }
    }

    /// True if a message from `ip` should be dropped unread (and counts it).
    pub fn ignored(&mut self, ip: IpAddr, now: Instant) -> bool {
        let Some(s) = self.sources.get_mut(&ip) else {
            return false;
        };
        match s.blocked_until {
            Some(t) if t > now => {
                self.dropped += 1;
                true
            }
            Some(_) => {
                self.sources.remove(&ip);
                false
            }
            None => false,
        }
    }

    /// A message from `ip` did not parse. Returns true if that got the source ignored.
    pub fn bad(&mut self, ip: IpAddr, now: Instant) -> bool {
        if !self.sources.contains_key(&ip) && self.sources.len() >= self.cfg.max_sources {
            self.evict(now);
        }
        let cfg = &self.cfg;
        let s = self.sources.entry(ip).or_insert(Source {
            since: now,
            bad: 0,
            blocked_until: None,
        });
        if now.duration_since(s.since) > cfg.window {
            s.since = now;
            s.bad = 0;
        }
        s.bad += 1;
        if s.bad >= cfg.max_bad && s.blocked_until.is_none() {
            s.blocked_until = Some(now + cfg.block);
            return true;
        }
        false
    }

    /// Makes room: forgets sources whose window and block are over, else the oldest half.
    fn evict(&mut self, now: Instant) {
        let cfg = self.cfg.clone();
        self.sources.retain(|_, s| {
            s.blocked_until.is_some_and(|t| t > now) || now.duration_since(s.since) <= cfg.window
        });
        if self.sources.len() >= cfg.max_sources {
            let mut ages: Vec<Instant> = self.sources.values().map(|s| s.since).collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 2];
            self.sources.retain(|_, s| s.since > cut);
        }
    }

    pub fn tracked(&self) -> usize {
        self.sources.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, n])
    }

    #[test]
    fn a_source_of_garbage_is_ignored_for_a_while_and_others_are_not() {
        let cfg = GuardConfig {
            max_bad: 3,
            window: Duration::from_secs(10),
            block: Duration::from_secs(60),
            max_sources: 4,
        };
        let mut g = Guard::new(cfg);
        let t = Instant::now();
        assert!(!g.bad(ip(2), t));
        assert!(!g.bad(ip(2), t));
        assert!(!g.ignored(ip(2), t));
        assert!(g.bad(ip(2), t), "the third bad message blocks");
        assert!(g.ignored(ip(2), t + Duration::from_secs(59)));
        assert!(!g.ignored(ip(1), t), "another source is not");
        assert!(
            !g.ignored(ip(2), t + Duration::from_secs(61)),
            "the block ends"
        );
        // Bad messages spread over more than the window do not add up.
        for k in 0..10 {
            assert!(!g.bad(ip(3), t + Duration::from_secs(11 * k)));
            assert!(!g.bad(ip(3), t + Duration::from_secs(11 * k)));
        }
        assert_eq!(g.dropped, 1);
    }

    #[test]
    fn tracking_is_bounded() {
        let cfg = GuardConfig {
            max_sources: 8,
            ..GuardConfig::default()
        };
        let mut g = Guard::new(cfg);
        let t = Instant::now();
        for n in 0..200u8 {
            g.bad(ip(n), t + Duration::from_millis(u64::from(n)));
            assert!(g.tracked() <= 8);
        }
    }
}
