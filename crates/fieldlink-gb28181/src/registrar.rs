//! The GB28181 registrar, without I/O (SPEC §10): REGISTER with MD5 digest (401 challenge,
//! 403 on a wrong password, 400 without `Expires`, `Expires: 0` unregisters, 200 with
//! `Date` and `Expires`), a ban after repeated failures, and presence: a device goes
//! offline when its registration expires or it misses `keepalive_misses` keepalive
//! periods. Time comes in as arguments (monotonic `now`, wall clock for `Date`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::digest::{DigestResponse, NonceCheck, Nonces};
use crate::ids::GbId;
use crate::sip::{response, Message};

#[derive(Debug, Clone)]
pub struct RegistrarConfig {
    /// Digest realm: the platform's domain (first 10 digits of its id).
    pub realm: String,
    /// Password for devices without one of their own.
    pub default_password: String,
    pub nonce_ttl: Duration,
    /// Wrong passwords in a row before the device id and its address are banned.
    pub max_failures: u32,
    pub ban: Duration,
    pub keepalive_period: Duration,
    /// Keepalive periods a device may miss before it is offline (SPEC default 3 × 60 s).
    pub keepalive_misses: u32,
    /// Registered devices kept at most (further REGISTERs get 503).
    pub max_devices: usize,
}

impl RegistrarConfig {
    pub fn new(realm: &str, default_password: &str) -> RegistrarConfig {
        RegistrarConfig {
            realm: realm.to_string(),
            default_password: default_password.to_string(),
            nonce_ttl: Duration::from_secs(60),
            max_failures: 5,
            ban: Duration::from_secs(300),
            keepalive_period: Duration::from_secs(60),
            keepalive_misses: 3,
            max_devices: 10_000,
        }
    }
}

/// A registered device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// Where its requests come from (answers and our requests go here).
    pub addr: SocketAddr,
    pub contact: Option<String>,
    pub expires_at: Instant,
    pub last_seen: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfflineReason {
    Unregistered,
    Expired,
    KeepaliveTimeout,
}

/// Presence changes for the platform to store and announce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegEvent {
    Online {
        id: GbId,
        addr: SocketAddr,
    },
    Offline {
        id: GbId,
        why: OfflineReason,
    },
    /// A registered device registered again from the same address (a refresh, or a
    /// restart the platform did not notice).
    Refreshed {
        id: GbId,
    },
    /// A wrong password (or a banned device trying); for the log.
    Refused {
        user: String,
        addr: SocketAddr,
        why: String,
    },
}

#[derive(Debug, Default)]
struct Failures {
    count: u32,
    banned_until: Option<Instant>,
}

#[derive(Debug)]
pub struct Registrar {
    cfg: RegistrarConfig,
    nonces: Nonces,
    devices: HashMap<GbId, Registration>,
    /// By device id and by source IP (a device that changes its id is still caught).
    failures: HashMap<String, Failures>,
    /// When [`Registrar::poll`] next scans the devices (not at every message: with
    /// 100 000 devices a scan per message would be most of the platform's work).
    next_scan: Option<Instant>,
}

impl Registrar {
    pub fn new(cfg: RegistrarConfig) -> Registrar {
        Registrar {
            nonces: Nonces::new(cfg.nonce_ttl, 4096),
            cfg,
            devices: HashMap::new(),
            failures: HashMap::new(),
            next_scan: None,
        }
    }

    /// How often [`Registrar::poll`] scans: a second, or half a keepalive period if
    /// shorter, so a silent device goes offline at most that late.
    fn scan_every(&self) -> Duration {
        (self.cfg.keepalive_period / 2).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }

    pub fn config(&self) -> &RegistrarConfig {
        &self.cfg
    }

    pub fn device(&self, id: &GbId) -> Option<&Registration> {
        self.devices.get(id)
    }

    pub fn devices(&self) -> impl Iterator<Item = (&GbId, &Registration)> {
        self.devices.iter()
    }

    fn banned(&self, key: &str, now: Instant) -> bool {
        self.failures
            .get(key)
            .and_then(|f| f.banned_until)
            .is_some_and(|t| t > now)
    }

    fn fail(&mut self, keys: [String; 2], now: Instant) {
        if self.failures.len() > 100_000 {
            self.failures
                .retain(|_, f| f.banned_until.is_some_and(|t| t > now));
        }
        for k in keys {
            let f = self.failures.entry(k).or_default();
            f.count += 1;
            if f.count >= self.cfg.max_failures {
                f.banned_until = Some(now + self.cfg.ban);
                f.count = 0;
            }
        }
    }

    /// Handles one REGISTER from `source`. `own_ha1` is the device's own credential
    /// (MD5(user:realm:password), see [`crate::digest::ha1`]), if it has one; else the
    /// default password applies. Returns the response to send and a presence change.
    pub fn on_register(
        &mut self,
        req: &Message,
        source: SocketAddr,
        now: Instant,
        wall: SystemTime,
        own_ha1: Option<&str>,
    ) -> (Vec<u8>, Option<RegEvent>) {
        let tag = crate::sip::new_tag();
        let reply = |code: u16, reason: &str, extra: &[(&str, String)]| {
            response(req, code, reason, source, &tag, extra, None)
        };
        let Some(user) = req.from_user().map(str::to_string) else {
            return (reply(400, "Bad Request (From has no user)", &[]), None);
        };
        let Ok(id) = user.parse::<GbId>() else {
            return (
                reply(400, "Bad Request (not a 20-digit GB28181 id)", &[]),
                None,
            );
        };
        let ip_key = source.ip().to_string();
        // 403, and the reason for the log.
        let refuse = |user: String, why: String| {
            (
                reply(403, "Forbidden", &[]),
                Some(RegEvent::Refused {
                    user,
                    addr: source,
                    why,
                }),
            )
        };
        if self.banned(&user, now) || self.banned(&ip_key, now) {
            return refuse(user, "banned after repeated wrong passwords".into());
        }
        let Some(expires) = req.expires() else {
            return (reply(400, "Bad Request (Expires missing)", &[]), None);
        };
        let Some(auth) = req.header("authorization") else {
            return (self.challenge(req, source, now, &tag, false), None);
        };
        let auth = match DigestResponse::parse(auth) {
            Ok(a) => a,
            Err(e) => return (reply(400, &format!("Bad Request ({e})"), &[]), None),
        };
        match self.nonces.check(&auth.nonce, now) {
            NonceCheck::Valid => {}
            NonceCheck::Stale => return (self.challenge(req, source, now, &tag, true), None),
            NonceCheck::Unknown => return (self.challenge(req, source, now, &tag, false), None),
        }
        let ha1 = match own_ha1 {
            Some(h) => h.to_string(),
            None => crate::digest::ha1(&user, &self.cfg.realm, &self.cfg.default_password),
        };
        if auth.username != user
            || auth.realm != self.cfg.realm
            || !auth.verify_ha1(&ha1, "REGISTER")
        {
            self.fail([user.clone(), ip_key], now);
            let why = if auth.username != user {
                format!("digest user {} is not the From user", auth.username)
            } else {
                "wrong password".to_string()
            };
            return refuse(user, why);
        }
        self.failures.remove(&user);
        self.failures.remove(&ip_key);
        let date = ("Date", gb_date(wall));
        if expires == 0 {
            let was = self.devices.remove(&id).is_some();
            let ev = was.then_some(RegEvent::Offline {
                id,
                why: OfflineReason::Unregistered,
            });
            return (reply(200, "OK", &[date, ("Expires", "0".into())]), ev);
        }
        if !self.devices.contains_key(&id) && self.devices.len() >= self.cfg.max_devices {
            return (
                reply(503, "Service Unavailable (too many devices)", &[]),
                None,
            );
        }
        let reg = Registration {
            addr: source,
            contact: req.header("contact").map(str::to_string),
            expires_at: now + Duration::from_secs(u64::from(expires)),
            last_seen: now,
        };
        let ev = match self.devices.insert(id.clone(), reg) {
            Some(old) if old.addr == source => Some(RegEvent::Refreshed { id }),
            _ => Some(RegEvent::Online { id, addr: source }),
        };
        let mut extra = vec![date, ("Expires", expires.to_string())];
        if let Some(c) = req.header("contact") {
            extra.push(("Contact", c.to_string()));
        }
        (reply(200, "OK", &extra), ev)
    }

    fn challenge(
        &mut self,
        req: &Message,
        source: SocketAddr,
        now: Instant,
        tag: &str,
        stale: bool,
    ) -> Vec<u8> {
        let nonce = self.nonces.issue(now);
        let stale = if stale { ",stale=true" } else { "" };
        let value = format!(
            "Digest realm=\"{}\",nonce=\"{nonce}\",algorithm=MD5{stale}",
            self.cfg.realm
        );
        response(
            req,
            401,
            "Unauthorized",
            source,
            tag,
            &[("WWW-Authenticate", value)],
            None,
        )
    }

    /// A keepalive (or any request) from a registered device: it is alive. Returns false
    /// for a device that is not registered (the platform answers it with an error so the
    /// device registers again).
    pub fn seen(&mut self, id: &GbId, source: IpAddr, now: Instant) -> bool {
        match self.devices.get_mut(id) {
            Some(r) if r.addr.ip() == source => {
                r.last_seen = now;
                true
            }
            _ => false,
        }
    }

    /// Devices whose registration expired or that missed too many keepalives go offline
    /// (found by a scan at most every [`Registrar::scan_every`]).
    pub fn poll(&mut self, now: Instant) -> Vec<RegEvent> {
        if self.next_scan.is_some_and(|t| now < t) {
            return Vec::new();
        }
        self.next_scan = Some(now + self.scan_every());
        let silence = self.cfg.keepalive_period * self.cfg.keepalive_misses.max(1);
        let mut out = Vec::new();
        self.devices.retain(|id, r| {
            let why = if r.expires_at <= now {
                OfflineReason::Expired
            } else if now.saturating_duration_since(r.last_seen) >= silence {
                OfflineReason::KeepaliveTimeout
            } else {
                return true;
            };
            out.push(RegEvent::Offline {
                id: id.clone(),
                why,
            });
            false
        });
        out
    }

    /// When [`Registrar::poll`] should next be called: its next scan, while any device
    /// is registered.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.devices.is_empty() {
            return None;
        }
        Some(self.next_scan.unwrap_or_else(Instant::now))
    }
}

/// `yyyy-MM-ddTHH:mm:ss.SSS` (UTC), the `Date` GB28181 devices set their clocks from.
pub fn gb_date(wall: SystemTime) -> String {
    let d = wall.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::expected_response;
    use crate::sip::StartLine;

    const DEV: &str = "34020000001320000001";
    const URI: &str = "sip:34020000002000000001@3402000000";

    fn register(expires: Option<u32>, auth: Option<String>) -> Message {
        let mut s = format!(
            "REGISTER {URI} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;rport;branch=z9hG4bK7\r\n\
             From: <sip:{DEV}@3402000000>;tag=1\r\nTo: <sip:{DEV}@3402000000>\r\n\
             Call-ID: c1\r\nCSeq: 1 REGISTER\r\nContact: <sip:{DEV}@127.0.0.1:5070>\r\n"
        );
        if let Some(e) = expires {
            s.push_str(&format!("Expires: {e}\r\n"));
        }
        if let Some(a) = auth {
            s.push_str(&format!("Authorization: {a}\r\n"));
        }
        s.push_str("Content-Length: 0\r\n\r\n");
        Message::parse(s.as_bytes()).unwrap()
    }

    fn code(reply: &[u8]) -> (u16, Message) {
        let m = Message::parse(reply).unwrap();
        match m.start {
            StartLine::Response { code, .. } => (code, m),
            _ => panic!("not a response"),
        }
    }

    fn nonce_of(m: &Message) -> String {
        let h = m.header("www-authenticate").unwrap();
        let at = h.find("nonce=\"").unwrap() + 7;
        h[at..].split('"').next().unwrap().to_string()
    }

    fn auth(nonce: &str, password: &str) -> String {
        let r = expected_response(DEV, "3402000000", password, "REGISTER", URI, nonce, None);
        format!(
            "Digest username=\"{DEV}\",realm=\"3402000000\",nonce=\"{nonce}\",uri=\"{URI}\",response=\"{r}\",algorithm=MD5"
        )
    }

    /// One REGISTER from `SRC` (with `expires` and `auth`) at `at`, on the test clock.
    fn send(
        r: &mut Registrar,
        expires: Option<u32>,
        auth: Option<String>,
        at: Instant,
        own: Option<&str>,
    ) -> (Vec<u8>, Option<RegEvent>) {
        let wall = UNIX_EPOCH + Duration::from_millis(1_763_884_800_123);
        r.on_register(&register(expires, auth), src(), at, wall, own)
    }

    fn src() -> SocketAddr {
        "127.0.0.1:5070".parse().unwrap()
    }

    fn setup() -> (Registrar, Instant) {
        let mut cfg = RegistrarConfig::new("3402000000", "12345678");
        cfg.max_failures = 3;
        (Registrar::new(cfg), Instant::now())
    }

    #[test]
    fn challenge_then_register_then_unregister() {
        let (mut r, now) = setup();
        let (reply, ev) = send(&mut r, Some(3600), None, now, None);
        let (c, m) = code(&reply);
        assert_eq!((c, ev), (401, None));
        let nonce = nonce_of(&m);
        assert_eq!(nonce.len(), 32);
        let (reply, ev) = send(
            &mut r,
            Some(3600),
            Some(auth(&nonce, "12345678")),
            now,
            None,
        );
        let (c, m) = code(&reply);
        assert_eq!(c, 200);
        assert_eq!(m.header("Date"), Some("2025-11-23T08:00:00.123"));
        assert_eq!(m.header("Expires"), Some("3600"));
        assert_eq!(
            ev,
            Some(RegEvent::Online {
                id: DEV.parse().unwrap(),
                addr: src()
            })
        );
        assert!(r.device(&DEV.parse().unwrap()).is_some());
        // A refresh from the same place is not a new device (its catalog is asked again).
        let (reply, ev) = send(
            &mut r,
            Some(3600),
            Some(auth(&nonce, "12345678")),
            now,
            None,
        );
        let refreshed = RegEvent::Refreshed {
            id: DEV.parse().unwrap(),
        };
        assert_eq!((code(&reply).0, ev), (200, Some(refreshed)));
        let (reply, ev) = send(&mut r, Some(0), Some(auth(&nonce, "12345678")), now, None);
        assert_eq!(code(&reply).0, 200);
        assert_eq!(
            ev,
            Some(RegEvent::Offline {
                id: DEV.parse().unwrap(),
                why: OfflineReason::Unregistered
            })
        );
    }

    #[test]
    fn wrong_password_403_then_ban() {
        let (mut r, now) = setup();
        let (reply, _) = send(&mut r, Some(60), None, now, None);
        let nonce = nonce_of(&code(&reply).1);
        for _ in 0..3 {
            let (reply, ev) = send(&mut r, Some(60), Some(auth(&nonce, "wrong")), now, None);
            assert_eq!(code(&reply).0, 403);
            assert!(matches!(ev, Some(RegEvent::Refused { .. })));
        }
        // Banned: even the right password is refused until the ban ends.
        let (reply, _) = send(&mut r, Some(60), Some(auth(&nonce, "12345678")), now, None);
        assert_eq!(code(&reply).0, 403);
        let later = now + Duration::from_secs(301);
        let (reply, _) = send(&mut r, Some(60), None, later, None);
        let nonce = nonce_of(&code(&reply).1);
        let (reply, _) = send(
            &mut r,
            Some(60),
            Some(auth(&nonce, "12345678")),
            later,
            None,
        );
        assert_eq!(code(&reply).0, 200);
    }

    #[test]
    fn per_device_password_and_missing_expires_and_stale_nonce() {
        let (mut r, now) = setup();
        let own = crate::digest::ha1(DEV, "3402000000", "own");
        let own = Some(own.as_str());
        let (reply, _) = send(&mut r, None, None, now, None);
        assert_eq!(code(&reply).0, 400);
        let (reply, _) = send(&mut r, Some(60), None, now, own);
        let nonce = nonce_of(&code(&reply).1);
        let (reply, _) = send(&mut r, Some(60), Some(auth(&nonce, "12345678")), now, own);
        assert_eq!(code(&reply).0, 403);
        let (reply, _) = send(&mut r, Some(60), Some(auth(&nonce, "own")), now, own);
        assert_eq!(code(&reply).0, 200);
        // An expired nonce gets a new challenge marked stale.
        let late = now + Duration::from_secs(61);
        let (reply, _) = send(&mut r, Some(60), Some(auth(&nonce, "own")), late, own);
        let (c, m) = code(&reply);
        assert_eq!(c, 401);
        assert!(m.header("www-authenticate").unwrap().contains("stale=true"));
    }

    #[test]
    fn silence_and_expiry_take_devices_offline() {
        let (mut r, now) = setup();
        let (reply, _) = send(&mut r, Some(3600), None, now, None);
        let nonce = nonce_of(&code(&reply).1);
        send(
            &mut r,
            Some(3600),
            Some(auth(&nonce, "12345678")),
            now,
            None,
        );
        let id: GbId = DEV.parse().unwrap();
        assert!(
            r.next_deadline().is_some(),
            "a device is registered: scans are due"
        );
        assert!(r.poll(now + Duration::from_secs(179)).is_empty());
        // The next scan is at most a second away, not at every message.
        assert_eq!(r.next_deadline(), Some(now + Duration::from_secs(180)));
        assert!(r.poll(now + Duration::from_millis(179_500)).is_empty());
        assert!(r.seen(&id, src().ip(), now + Duration::from_secs(179)));
        assert!(r.poll(now + Duration::from_secs(300)).is_empty());
        assert_eq!(
            r.poll(now + Duration::from_secs(359)),
            vec![RegEvent::Offline {
                id: id.clone(),
                why: OfflineReason::KeepaliveTimeout
            }]
        );
        assert!(!r.seen(&id, src().ip(), now + Duration::from_secs(360)));
        // Registration expiry.
        let (reply, _) = send(&mut r, Some(10), None, now, None);
        let nonce = nonce_of(&code(&reply).1);
        send(&mut r, Some(10), Some(auth(&nonce, "12345678")), now, None);
        assert_eq!(
            r.poll(now + Duration::from_secs(400)),
            vec![RegEvent::Offline {
                id,
                why: OfflineReason::Expired
            }]
        );
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(gb_date(UNIX_EPOCH), "1970-01-01T00:00:00.000");
        assert_eq!(
            gb_date(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000"
        );
    }
}
