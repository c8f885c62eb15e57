//! Server metrics in the Prometheus/OpenMetrics text format (`GET /metrics`, behind the
//! admin token), with the `prometheus-client` crate.
//!
//! Counters are atomics shared with the tasks that count (the hub, the GB28181 task, the
//! login path): counting takes no lock. Each labelled counter is looked up once, here, so
//! the hot paths only increment. Gauges of live state (devices online, sessions,
//! receivers playing, GB28181 devices online) are not kept up to date by the tasks: the
//! handler asks the hub and the GB28181 handle for a snapshot at each scrape, so they
//! cannot drift from the truth.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use fieldlink_proto::{ErrorCode, Qos};

/// What happened to one control message at the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlOutcome {
    /// Written to a receiver's data channel (counted once per receiver).
    Forwarded,
    /// A reliable message over the sender's rate, queued for its turn.
    Paced,
    /// Over the sender's rate (lossy), or over the pacing queue (reliable): dropped.
    RateLimited,
    /// The receiver could not take it in time: a lossy message over the buffer limit, or
    /// a reliable one over the receiver's queue.
    Congested,
    /// Refused: malformed, the sender is not master, not in session, or the field is offline.
    Refused,
}

impl ControlOutcome {
    const ALL: [ControlOutcome; 5] = [
        ControlOutcome::Forwarded,
        ControlOutcome::Paced,
        ControlOutcome::RateLimited,
        ControlOutcome::Congested,
        ControlOutcome::Refused,
    ];

    fn label(self) -> &'static str {
        match self {
            ControlOutcome::Forwarded => "forwarded",
            ControlOutcome::Paced => "paced",
            ControlOutcome::RateLimited => "rate_limited",
            ControlOutcome::Congested => "congested",
            ControlOutcome::Refused => "refused",
        }
    }
}

/// How a GB28181 INVITE ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InviteOutcome {
    Sent,
    Accepted,
    Refused,
    Unanswered,
}

impl InviteOutcome {
    const ALL: [InviteOutcome; 4] = [
        InviteOutcome::Sent,
        InviteOutcome::Accepted,
        InviteOutcome::Refused,
        InviteOutcome::Unanswered,
    ];

    fn label(self) -> &'static str {
        match self {
            InviteOutcome::Sent => "sent",
            InviteOutcome::Accepted => "accepted",
            InviteOutcome::Refused => "refused",
            InviteOutcome::Unanswered => "unanswered",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabel {
    role: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControlLabels {
    qos: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: &'static str,
}

/// What the hub reports at a scrape.
#[derive(Debug, Clone, Default)]
pub struct HubSnapshot {
    pub fields_online: u64,
    pub remotes_online: u64,
    /// Operation sessions (remote, field device) open.
    pub sessions: u64,
    /// Receivers that have had a keyframe of the stream they want.
    pub receivers_playing: u64,
}

/// Every metric of the server.
pub struct Metrics {
    registry: Registry,
    devices_online: [Gauge; 2],
    sessions: Gauge,
    receivers_playing: Gauge,
    gb_devices_online: Gauge,
    /// Video frames written to receivers, and their bytes.
    pub frames_forwarded: Counter,
    pub bytes_forwarded: Counter,
    /// RTP packets written to receivers (from their RTCP-era send statistics) and the
    /// NACKs (repair requests) receivers sent.
    pub packets_forwarded: Counter,
    pub nacks_received: Counter,
    /// FEC: parity datagrams sent to devices, datagrams from devices rebuilt from parity,
    /// and blocks from devices given up with datagrams missing.
    pub fec_parity_sent: Counter,
    pub fec_recovered: Counter,
    pub fec_unrecovered: Counter,
    /// Audio packets written to receivers, and those no audio line was free for.
    pub audio_packets_forwarded: Counter,
    pub audio_packets_unrouted: Counter,
    /// Keyframe requests (PLI) sent to sources.
    pub keyframe_requests: Counter,
    /// From a GB28181 INVITE to the first video frame of its call, seconds.
    pub invite_first_frame: Histogram,
    control: [[Counter; ControlOutcome::ALL.len()]; 2],
    invites: [Counter; InviteOutcome::ALL.len()],
    /// GB28181 requests of ours answered, and given up unanswered.
    pub sip_answered: Counter,
    pub sip_given_up: Counter,
    /// SIP messages dropped unread: their source sent too many malformed ones.
    pub sip_ignored: Counter,
    logins_refused: Family<CodeLabel, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Registers a new metric under `name` and returns the handle the counting code keeps.
fn add<M: prometheus_client::registry::Metric + Clone + Default>(
    r: &mut Registry,
    name: &str,
    help: &str,
) -> M {
    let m = M::default();
    r.register(name, help, m.clone());
    m
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("fieldlink");
        let online: Family<RoleLabel, Gauge> =
            add(&mut r, "devices_online", "Devices logged in, by role");
        let control: Family<ControlLabels, Counter> = add(
            &mut r,
            "control_messages",
            "Control messages at the server, by qos and outcome",
        );
        let invites: Family<OutcomeLabel, Counter> =
            add(&mut r, "gb28181_invites", "GB28181 INVITEs, by outcome");
        let requests: Family<OutcomeLabel, Counter> = add(
            &mut r,
            "gb28181_requests",
            "The platform's SIP requests (queries, INVITE, BYE, PTZ), by outcome",
        );
        let outcome = |f: &Family<OutcomeLabel, Counter>, outcome| {
            f.get_or_create(&OutcomeLabel { outcome }).clone()
        };
        Metrics {
            devices_online: ["field", "remote"]
                .map(|role| online.get_or_create(&RoleLabel { role }).clone()),
            sessions: add(&mut r, "sessions", "Operation sessions open"),
            receivers_playing: add(
                &mut r,
                "receivers_playing",
                "Receivers (conn_fd) playing a stream",
            ),
            gb_devices_online: add(
                &mut r,
                "gb28181_devices_online",
                "GB28181 devices registered and alive",
            ),
            frames_forwarded: add(
                &mut r,
                "video_frames_forwarded",
                "Video frames written to receivers",
            ),
            bytes_forwarded: add(
                &mut r,
                "video_bytes_forwarded",
                "Video bytes (access units) written to receivers",
            ),
            packets_forwarded: add(
                &mut r,
                "video_packets_forwarded",
                "Video RTP packets sent to receivers (original and repairs)",
            ),
            nacks_received: add(
                &mut r,
                "nacks_received",
                "NACK repair requests from receivers",
            ),
            fec_parity_sent: add(
                &mut r,
                "fec_parity_sent",
                "FEC parity datagrams sent to devices",
            ),
            fec_recovered: add(
                &mut r,
                "fec_recovered",
                "Datagrams from devices rebuilt from FEC parity",
            ),
            fec_unrecovered: add(
                &mut r,
                "fec_blocks_unrecovered",
                "FEC blocks from devices given up with datagrams missing (NACK repairs them)",
            ),
            audio_packets_forwarded: add(
                &mut r,
                "audio_packets_forwarded",
                "Audio (Opus) packets written to receivers",
            ),
            audio_packets_unrouted: add(
                &mut r,
                "audio_packets_unrouted",
                "Audio packets not forwarded to a receiver because all its audio lines carried other parties",
            ),
            keyframe_requests: add(
                &mut r,
                "keyframe_requests",
                "Keyframe requests sent to video sources",
            ),
            invite_first_frame: {
                // 50 ms .. ~13 s.
                let h = Histogram::new(exponential_buckets(0.05, 2.0, 9));
                r.register(
                    "gb28181_invite_first_frame_seconds",
                    "From a GB28181 INVITE to the first video frame of the call",
                    h.clone(),
                );
                h
            },
            control: ["0", "1"].map(|qos| {
                ControlOutcome::ALL.map(|o| {
                    control
                        .get_or_create(&ControlLabels {
                            qos,
                            outcome: o.label(),
                        })
                        .clone()
                })
            }),
            invites: InviteOutcome::ALL.map(|o| outcome(&invites, o.label())),
            sip_answered: outcome(&requests, "answered"),
            sip_given_up: outcome(&requests, "given_up"),
            sip_ignored: add(
                &mut r,
                "gb28181_sip_ignored",
                "GB28181 SIP messages dropped unread because their source sent too many malformed ones",
            ),
            logins_refused: add(
                &mut r,
                "logins_refused",
                "Refused WebSocket logins, by the error code the device got",
            ),
            registry: r,
        }
    }

    /// `ALL` lists the outcomes in declaration order, so the discriminant is the index.
    pub fn control(&self, qos: Qos, outcome: ControlOutcome) {
        self.control[qos as usize][outcome as usize].inc();
    }

    pub fn invite(&self, outcome: InviteOutcome) {
        self.invites[outcome as usize].inc();
    }

    /// A refused login (rare: the lookup of its label is not on a hot path).
    pub fn login_refused(&self, code: ErrorCode) {
        self.logins_refused
            .get_or_create(&CodeLabel { code: code.name() })
            .inc();
    }

    /// The text a scrape gets, with the gauges set from the snapshots.
    pub fn render(&self, hub: &HubSnapshot, gb_online: u64) -> String {
        let set = |g: &Gauge, v: u64| {
            g.set(i64::try_from(v).unwrap_or(i64::MAX));
        };
        set(&self.devices_online[0], hub.fields_online);
        set(&self.devices_online[1], hub.remotes_online);
        set(&self.sessions, hub.sessions);
        set(&self.receivers_playing, hub.receivers_playing);
        set(&self.gb_devices_online, gb_online);
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_listed_in_declaration_order() {
        for (i, o) in ControlOutcome::ALL.iter().enumerate() {
            assert_eq!(*o as usize, i, "{o:?}");
        }
        for (i, o) in InviteOutcome::ALL.iter().enumerate() {
            assert_eq!(*o as usize, i, "{o:?}");
        }
    }

    #[test]
    fn renders_every_family_with_its_labels_and_counts() {
        let m = Metrics::new();
        m.control(Qos::Reliable, ControlOutcome::Paced);
        m.control(Qos::Reliable, ControlOutcome::Paced);
        m.invite(InviteOutcome::Refused);
        m.login_refused(ErrorCode::WrongPassword);
        m.invite_first_frame.observe(0.3);
        let hub = HubSnapshot {
            fields_online: 2,
            remotes_online: 3,
            sessions: 4,
            receivers_playing: 5,
        };
        let text = m.render(&hub, 6);
        for line in [
            "fieldlink_devices_online{role=\"field\"} 2",
            "fieldlink_devices_online{role=\"remote\"} 3",
            "fieldlink_sessions 4",
            "fieldlink_receivers_playing 5",
            "fieldlink_gb28181_devices_online 6",
            "fieldlink_control_messages_total{qos=\"1\",outcome=\"paced\"} 2",
            "fieldlink_control_messages_total{qos=\"0\",outcome=\"paced\"} 0",
            "fieldlink_gb28181_invites_total{outcome=\"refused\"} 1",
            "fieldlink_logins_refused_total{code=\"WRONG_PASSWORD\"} 1",
            "fieldlink_video_frames_forwarded_total 0",
            "fieldlink_video_packets_forwarded_total 0",
            "fieldlink_nacks_received_total 0",
            "fieldlink_fec_parity_sent_total 0",
            "fieldlink_fec_recovered_total 0",
            "fieldlink_fec_blocks_unrecovered_total 0",
            "fieldlink_audio_packets_forwarded_total 0",
            "fieldlink_gb28181_invite_first_frame_seconds_count 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} not in\n{text}");
        }
    }
}
