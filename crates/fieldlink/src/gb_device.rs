//! `fieldlink gb-device`: a simulated GB28181 camera/NVR. It registers with digest auth,
//! keeps alive, answers Catalog/DeviceInfo/DeviceStatus, and answers INVITEs by sending
//! MPEG-PS over RTP (UDP, TCP active or passive as the INVITE offers) made from the
//! test-pattern encoder, one pattern per channel, or from an H.264/H.265 file (`--video`).
//! Events are printed as JSON lines on stdout.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use fieldlink_gb28181::digest::register_authorization;
use fieldlink_gb28181::manscdp::{self, CatalogItem, Manscdp};
use fieldlink_gb28181::sdp::{self, MediaMode};
use fieldlink_gb28181::sip::{self, Dialog, Message, StartLine};
use fieldlink_gb28181::GbId;
use fieldlink_sdk::video::{TestPattern, TestPatternConfig, VideoSource};
use serde_json::json;
use tokio::net::UdpSocket;

#[derive(clap::Args)]
pub struct Args {
    /// The platform's SIP address (host:port).
    #[arg(long)]
    server: SocketAddr,
    /// This device's 20-digit id.
    #[arg(long, default_value = "34020000001320000001")]
    id: GbId,
    #[arg(long, default_value = "12345678")]
    password: String,
    /// The platform's id (its first 10 digits are the realm/domain).
    #[arg(long, default_value = "34020000002000000001")]
    platform_id: GbId,
    /// Camera channels (an NVR has several).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    channels: u32,
    #[arg(long, default_value_t = 60)]
    keepalive_secs: u64,
    /// Registration lifetime, seconds (refreshed at half).
    #[arg(long, default_value_t = 3600)]
    expires: u32,
    /// Local address for SIP and media.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Send this H.264 or H.265 elementary stream (Annex B: a `.h264`, `.264`, `.h265` or
    /// `.hevc` file, e.g. from `ffmpeg ... -f hevc`) on every channel, looped at 25 fps,
    /// instead of the test pattern; the PS map names its codec.
    #[arg(long)]
    video: Option<std::path::PathBuf>,
    /// The stream type announced in the PS map, whatever the payload (testing a
    /// platform's handling of codecs it cannot play).
    #[arg(long, hide = true)]
    stream_type: Option<u8>,
    /// Read commands from standard input, one per line: `del N`, `add N`, `off N`, `on N`
    /// (channel N, from 0: the catalog changes and a Catalog NOTIFY goes to the platform
    /// if it subscribed; with a trailing `quiet`, no NOTIFY), `register` (register again
    /// now), `unsubscribe` (end the platform's catalog subscription: a NOTIFY with
    /// `Subscription-State: terminated` and no body).
    #[arg(long)]
    commands: bool,
    /// Also send audio: a G.711 tone of this many Hz on every channel (0 = no audio).
    #[arg(long, default_value_t = 0.0)]
    audio_tone: f64,
    /// The G.711 law of --audio-tone: a (PCMA, PS stream type 0x90) or u (PCMU, 0x91).
    #[arg(long, default_value = "a", value_parser = ["a", "u"])]
    audio_law: String,
}

impl Args {
    /// The demo's camera: defaults, `channels` channels, registering at `server`, quiet.
    pub fn demo(server: SocketAddr, channels: u32) -> Args {
        QUIET.store(true, Ordering::Relaxed);
        Args {
            server,
            id: "34020000001320000001"
                .parse()
                .unwrap_or_else(|_| unreachable!()),
            password: "12345678".into(),
            platform_id: "34020000002000000001"
                .parse()
                .unwrap_or_else(|_| unreachable!()),
            channels,
            keepalive_secs: 60,
            expires: 3600,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            video: None,
            stream_type: None,
            commands: false,
            audio_tone: 0.0,
            audio_law: "a".into(),
        }
    }
}

/// The demo runs a camera in-process: its events go to the log, not stdout.
static QUIET: AtomicBool = AtomicBool::new(false);

fn print(v: serde_json::Value) {
    if QUIET.load(Ordering::Relaxed) {
        tracing::debug!(%v, "demo GB28181 camera");
    } else {
        println!("{v}");
    }
}

/// The id of channel `i` (0-based): the device's domain, type 131 (camera channel), and a
/// 7-digit number.
fn channel_id(device: &GbId, i: u32) -> String {
    format!("{}131{:07}", device.domain(), i + 1)
}

struct Device {
    a: Args,
    socket: UdpSocket,
    local: SocketAddr,
    cseq: u32,
    register: Dialog,
    registered: bool,
    sn: u32,
    /// Live calls by Call-ID: the channel's stop flag.
    calls: HashMap<String, Arc<AtomicBool>>,
    /// `--video`'s access units and PS stream type.
    video: Option<(Arc<Vec<Vec<u8>>>, u8)>,
    /// Each channel's catalog status (`ON`, `OFF`), or None once deleted.
    channels: Vec<Option<&'static str>>,
    /// The platform's Catalog subscription: its dialog (ours as the notifier) and CSeq.
    subscription: Option<(Dialog, SocketAddr, u32)>,
}

/// Reads `--video`: its access units and their PS stream type.
fn read_video(path: &std::path::Path) -> anyhow::Result<(Arc<Vec<Vec<u8>>>, u8)> {
    use fieldlink_media::ps::stream_type::{H264, H265};
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let (h265, stream_type) = match ext.as_deref() {
        Some("h264" | "264") => (false, H264),
        Some("h265" | "265" | "hevc") => (true, H265),
        _ => bail!(
            "--video {}: name it .h264/.264 (H.264) or .h265/.hevc (H.265), an Annex-B elementary stream",
            path.display()
        ),
    };
    let data =
        std::fs::read(path).with_context(|| format!("reading --video {}", path.display()))?;
    let aus: Vec<Vec<u8>> = fieldlink_media::access_units(&data, h265)
        .into_iter()
        .map(<[u8]>::to_vec)
        .collect();
    if aus.is_empty() {
        bail!(
            "--video {}: no {} pictures in it (is it an Annex-B elementary stream?)",
            path.display(),
            if h265 { "H.265" } else { "H.264" }
        );
    }
    Ok((Arc::new(aus), stream_type))
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let socket = UdpSocket::bind(a.listen)
        .await
        .with_context(|| format!("binding {}", a.listen))?;
    let local = socket.local_addr()?;
    let video = a.video.as_deref().map(read_video).transpose()?;
    let domain = a.platform_id.domain().to_string();
    let register = Dialog {
        remote_uri: format!("sip:{}@{domain}", a.platform_id),
        local_uri: format!("sip:{}@{domain}", a.id),
        local_tag: sip::new_tag(),
        remote_tag: None,
        call_id: sip::new_call_id(local.ip()),
        via: local,
        transport: "UDP",
    };
    let mut d = Device {
        a,
        socket,
        local,
        cseq: 0,
        register,
        registered: false,
        sn: 0,
        calls: HashMap::new(),
        video,
        channels: Vec::new(),
        subscription: None,
    };
    d.channels = vec![Some("ON"); d.a.channels as usize];
    d.run().await
}

impl Device {
    async fn send(&self, bytes: &[u8]) -> anyhow::Result<()> {
        self.socket
            .send_to(bytes, self.a.server)
            .await
            .context("sending SIP")?;
        Ok(())
    }

    async fn send_register(&mut self, auth: Option<String>) -> anyhow::Result<()> {
        self.cseq += 1;
        let mut extra = vec![
            ("Contact", format!("<sip:{}@{}>", self.a.id, self.local)),
            ("Expires", self.a.expires.to_string()),
        ];
        if let Some(a) = auth {
            extra.push(("Authorization", a));
        }
        let r = sip::request(
            "REGISTER",
            &self.register,
            self.cseq,
            &sip::branch(),
            &extra,
            None,
        );
        self.send(&r).await
    }

    async fn send_message(&mut self, body: Vec<u8>) -> anyhow::Result<()> {
        self.cseq += 1;
        let dialog = Dialog {
            call_id: sip::new_call_id(self.local.ip()),
            local_tag: sip::new_tag(),
            ..self.register.clone()
        };
        let r = sip::request(
            "MESSAGE",
            &dialog,
            self.cseq,
            &sip::branch(),
            &[],
            Some(("Application/MANSCDP+xml", &body)),
        );
        self.send(&r).await
    }

    async fn run(&mut self) -> anyhow::Result<()> {
        self.send_register(None).await?;
        let (cmd_tx, mut commands) = tokio::sync::mpsc::channel::<String>(16);
        if self.a.commands {
            tokio::spawn(async move {
                use tokio::io::AsyncBufReadExt;
                let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    if cmd_tx.send(l).await.is_err() {
                        return;
                    }
                }
            });
        } else {
            drop(cmd_tx);
        }
        let mut buf = vec![0u8; 65_536];
        let mut keepalive =
            tokio::time::interval(Duration::from_secs(self.a.keepalive_secs.max(1)));
        keepalive.tick().await;
        let refresh = Duration::from_secs(u64::from(self.a.expires.max(2) / 2));
        let mut next_register = tokio::time::Instant::now() + Duration::from_secs(1);
        loop {
            tokio::select! {
                r = self.socket.recv_from(&mut buf) => {
                    let (n, from) = r.context("receiving SIP")?;
                    let data = buf[..n].to_vec();
                    match Message::parse(&data) {
                        Ok(m) => {
                            if let Some(at) = self.on_message(m, from).await? {
                                next_register = at;
                            }
                        }
                        Err(e) => print(json!({"event": "error", "message": format!("bad SIP from {from}: {e}")})),
                    }
                }
                Some(line) = commands.recv() => {
                    if line.trim() == "register" {
                        self.send_register(None).await?;
                    } else if let Err(e) = self.command(&line).await {
                        print(json!({"event": "error", "message": format!("{line:?}: {e}")}));
                    }
                }
                _ = keepalive.tick(), if self.registered => {
                    self.sn += 1;
                    let body = manscdp::keepalive(self.sn, self.a.id.as_str());
                    self.send_message(body).await?;
                }
                // Not answered (UDP loss) or time to refresh: register again.
                _ = tokio::time::sleep_until(next_register) => {
                    self.send_register(None).await?;
                    next_register = tokio::time::Instant::now()
                        + if self.registered { refresh } else { Duration::from_secs(1) };
                }
                _ = tokio::signal::ctrl_c() => {
                    for stop in self.calls.values() {
                        stop.store(true, Ordering::Relaxed);
                    }
                    return Ok(());
                }
            }
        }
    }

    /// Handles one message; returns when to register next, if that changed.
    async fn on_message(
        &mut self,
        m: Message,
        from: SocketAddr,
    ) -> anyhow::Result<Option<tokio::time::Instant>> {
        match &m.start {
            StartLine::Response { code, reason } => {
                if m.cseq().map(|(_, method)| method) == Some("NOTIFY") {
                    print(json!({"event": "notify_answered", "code": code}));
                }
                if m.cseq().map(|(_, method)| method) != Some("REGISTER") {
                    return Ok(None);
                }
                match code {
                    401 => {
                        let h = m.header("www-authenticate").unwrap_or_default();
                        let realm = sip::challenge_param(h, "realm").unwrap_or_default();
                        let nonce = sip::challenge_param(h, "nonce").unwrap_or_default();
                        let uri = &self.register.remote_uri;
                        let auth = register_authorization(
                            self.a.id.as_str(),
                            realm,
                            &self.a.password,
                            uri,
                            nonce,
                        );
                        self.send_register(Some(auth)).await?;
                        Ok(Some(tokio::time::Instant::now() + Duration::from_secs(2)))
                    }
                    200 => {
                        if !self.registered {
                            self.registered = true;
                            print(
                                json!({"event": "registered", "id": self.a.id.as_str(), "server": self.a.server.to_string(), "local": self.local.to_string()}),
                            );
                        }
                        Ok(Some(
                            tokio::time::Instant::now()
                                + Duration::from_secs(u64::from(self.a.expires.max(2) / 2)),
                        ))
                    }
                    c if *c >= 300 => bail!("registration refused: {c} {reason}"),
                    _ => Ok(None),
                }
            }
            StartLine::Request { method, .. } => {
                let method = method.clone();
                match method.as_str() {
                    "MESSAGE" => self.on_query(&m, from).await?,
                    "INVITE" => self.on_invite(&m, from).await?,
                    "SUBSCRIBE" => self.on_subscribe(&m, from).await?,
                    "BYE" => {
                        let call = m.header("call-id").unwrap_or_default().to_string();
                        if let Some(stop) = self.calls.remove(&call) {
                            stop.store(true, Ordering::Relaxed);
                            print(json!({"event": "bye", "call_id": call}));
                        }
                        let r = sip::response(&m, 200, "OK", from, "dev", &[], None);
                        self.socket.send_to(&r, from).await?;
                    }
                    "ACK" => {}
                    _ => {
                        let r = sip::response(&m, 501, "Not Implemented", from, "dev", &[], None);
                        self.socket.send_to(&r, from).await?;
                    }
                }
                Ok(None)
            }
        }
    }

    async fn on_query(&mut self, m: &Message, from: SocketAddr) -> anyhow::Result<()> {
        let ok = sip::response(m, 200, "OK", from, "dev", &[], None);
        self.socket.send_to(&ok, from).await?;
        let Ok(q) = Manscdp::parse(&m.body) else {
            return Ok(());
        };
        if q.root == "Control" && q.cmd_type == "DeviceControl" {
            print(json!({"event": "ptz", "channel": q.device_id, "cmd": q.ptz_cmd}));
            return Ok(());
        }
        if q.root != "Query" {
            return Ok(());
        }
        let id = self.a.id.as_str().to_string();
        let body = match q.cmd_type.as_str() {
            "Catalog" => {
                let items: Vec<CatalogItem> = (0..self.a.channels)
                    .filter_map(|i| self.item(i, ""))
                    .collect();
                manscdp::catalog_response(q.sn, &id, items.len(), &items)
            }
            "DeviceInfo" => manscdp::response(
                "DeviceInfo",
                q.sn,
                &id,
                &[
                    ("DeviceName", "fieldlink gb-device"),
                    ("Manufacturer", "fieldlink"),
                    ("Model", "gb-device"),
                    ("Channel", &self.a.channels.to_string()),
                ],
            ),
            "DeviceStatus" => manscdp::response(
                "DeviceStatus",
                q.sn,
                &id,
                &[("Online", "ONLINE"), ("Status", "OK")],
            ),
            _ => return Ok(()),
        };
        print(json!({"event": "query", "cmd_type": q.cmd_type, "sn": q.sn}));
        self.send_message(body).await
    }

    /// Channel `i`'s catalog item (with `event` for a NOTIFY), unless it was deleted.
    fn item(&self, i: u32, event: &str) -> Option<CatalogItem> {
        let status = (*self.channels.get(i as usize)?)?;
        Some(CatalogItem {
            device_id: channel_id(&self.a.id, i),
            name: format!("通道{}", i + 1),
            manufacturer: "fieldlink".into(),
            model: "gb-device".into(),
            status: status.into(),
            parent_id: self.a.id.to_string(),
            event: event.into(),
        })
    }

    /// The platform subscribes to our catalog: accepted, and remembered for NOTIFYs.
    async fn on_subscribe(&mut self, m: &Message, from: SocketAddr) -> anyhow::Result<()> {
        let tag = sip::new_tag();
        let expires = m.expires().unwrap_or(3600).to_string();
        let r = sip::response(m, 200, "OK", from, &tag, &[("Expires", expires)], None);
        self.socket.send_to(&r, from).await?;
        let remote_uri = m
            .header("contact")
            .and_then(|c| {
                let (a, b) = (c.find('<')?, c.find('>')?);
                c.get(a + 1..b).map(str::to_string)
            })
            .unwrap_or_else(|| self.register.remote_uri.clone());
        let dialog = Dialog {
            remote_uri,
            local_uri: self.register.local_uri.clone(),
            local_tag: tag,
            remote_tag: m.header("from").and_then(sip::tag).map(str::to_string),
            call_id: m.header("call-id").unwrap_or_default().to_string(),
            via: self.local,
            transport: "UDP",
        };
        print(json!({"event": "subscribed", "call_id": dialog.call_id}));
        self.subscription = Some((dialog, from, 1));
        Ok(())
    }

    /// Ends the platform's subscription with a bodiless NOTIFY (RFC 6665 allows one).
    async fn end_subscription(&mut self) -> anyhow::Result<()> {
        let Some((dialog, to, mut cseq)) = self.subscription.take() else {
            bail!("the platform has not subscribed");
        };
        cseq += 1;
        let r = sip::request(
            "NOTIFY",
            &dialog,
            cseq,
            &sip::branch(),
            &[
                ("Event", "Catalog".into()),
                ("Subscription-State", "terminated;reason=noresource".into()),
            ],
            None,
        );
        self.socket.send_to(&r, to).await?;
        print(json!({"event": "unsubscribed"}));
        Ok(())
    }

    /// A `--commands` line that changes a channel: `del|add|on|off N [quiet]`.
    async fn command(&mut self, line: &str) -> anyhow::Result<()> {
        if line.trim() == "unsubscribe" {
            return self.end_subscription().await;
        }
        let mut words = line.split_whitespace();
        let (Some(verb), Some(n)) = (words.next(), words.next()) else {
            bail!("expected `del|add|on|off N [quiet]` or `register`");
        };
        let quiet = match words.next() {
            None => false,
            Some("quiet") => true,
            Some(w) => bail!("unexpected {w:?} (only `quiet` may follow)"),
        };
        let i: u32 = n.parse().context("channel number")?;
        let slot = self
            .channels
            .get_mut(i as usize)
            .with_context(|| format!("there is no channel {i}"))?;
        let event = match verb {
            "del" => {
                *slot = None;
                "DEL"
            }
            "add" => {
                *slot = Some("ON");
                "ADD"
            }
            "on" | "off" => {
                *slot = Some(if verb == "on" { "ON" } else { "OFF" });
                if verb == "on" {
                    "ON"
                } else {
                    "OFF"
                }
            }
            _ => bail!("unknown command {verb:?}"),
        };
        let item = self.item(i, event).unwrap_or_else(|| CatalogItem {
            device_id: channel_id(&self.a.id, i),
            event: event.into(),
            ..Default::default()
        });
        let Some((dialog, to, cseq)) = self.subscription.as_mut().filter(|_| !quiet) else {
            print(json!({"event": "changed", "channel": i, "what": event, "notified": false}));
            return Ok(());
        };
        *cseq += 1;
        self.sn += 1;
        let body = manscdp::catalog_notify(self.sn, self.a.id.as_str(), &[item]);
        let r = sip::request(
            "NOTIFY",
            dialog,
            *cseq,
            &sip::branch(),
            &[
                ("Event", "Catalog".into()),
                ("Subscription-State", "active".into()),
            ],
            Some(("Application/MANSCDP+xml", &body)),
        );
        let to = *to;
        self.socket.send_to(&r, to).await?;
        print(json!({"event": "changed", "channel": i, "what": event, "notified": true}));
        Ok(())
    }

    async fn on_invite(&mut self, m: &Message, from: SocketAddr) -> anyhow::Result<()> {
        let channel = m
            .header("to")
            .and_then(sip::uri_user)
            .unwrap_or_default()
            .to_string();
        let index = (0..self.a.channels).find(|i| {
            channel_id(&self.a.id, *i) == channel && self.channels[*i as usize].is_some()
        });
        let offer = sdp::media(&String::from_utf8_lossy(&m.body));
        let (Some(index), Some(offer)) = (index, offer) else {
            let r = sip::response(m, 404, "Not Found", from, "dev", &[], None);
            self.socket.send_to(&r, from).await?;
            return Ok(());
        };
        let target_ip: IpAddr = offer.ip.unwrap_or(from.ip());
        let target = SocketAddr::new(target_ip, offer.port);
        let ssrc = offer.ssrc.clone().unwrap_or_else(|| "0000000001".into());
        // Where the media goes, by the mode the platform offered.
        let (out, media_port) = match offer.mode {
            MediaMode::Udp => {
                let u = std::net::UdpSocket::bind(SocketAddr::new(self.local.ip(), 0))?;
                let port = u.local_addr()?.port();
                (MediaOut::Udp(u, target), port)
            }
            // The platform listens: we connect once the stream starts.
            MediaMode::TcpPassive => (MediaOut::Connect(target), 9),
            // The platform connects to us.
            MediaMode::TcpActive => {
                let l = std::net::TcpListener::bind(SocketAddr::new(self.local.ip(), 0))?;
                let port = l.local_addr()?.port();
                (MediaOut::Accept(l), port)
            }
        };
        let answer = sdp::play_answer(&channel, self.local.ip(), media_port, offer.mode, &ssrc);
        let r = sip::response(
            m,
            200,
            "OK",
            from,
            &sip::new_tag(),
            &[("Contact", format!("<sip:{channel}@{}>", self.local))],
            Some(("APPLICATION/SDP", answer.as_bytes())),
        );
        self.socket.send_to(&r, from).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let call = m.header("call-id").unwrap_or_default().to_string();
        self.calls.insert(call.clone(), stop.clone());
        let mode = format!("{:?}", offer.mode);
        print(json!({
            "event": "invite", "channel": channel, "index": index, "mode": mode,
            "to": target.to_string(), "ssrc": ssrc, "call_id": call,
        }));
        let ssrc_num = fieldlink_gb28181::ssrc::ssrc_value(&ssrc).unwrap_or(1);
        let video = match &self.video {
            Some((aus, t)) => Video::File(aus.clone(), self.a.stream_type.unwrap_or(*t)),
            None => Video::Pattern(
                self.a
                    .stream_type
                    .unwrap_or(fieldlink_media::ps::stream_type::H264),
            ),
        };
        let audio = (self.a.audio_tone > 0.0).then(|| Audio {
            tone: fieldlink_sdk::audio::tone::Tone::new(self.a.audio_tone, 8000, 10000.0),
            alaw: self.a.audio_law == "a",
        });
        std::thread::spawn(move || stream(index, out, ssrc_num, video, audio, stop));
        Ok(())
    }
}

/// What a channel shows, with the stream type its PS map announces.
enum Video {
    /// The test pattern (H.264) with the channel's number.
    Pattern(u8),
    /// `--video`'s access units, looped.
    File(Arc<Vec<Vec<u8>>>, u8),
}

/// Where a channel's RTP goes.
enum MediaOut {
    Udp(std::net::UdpSocket, SocketAddr),
    /// TCP, we connect (the platform offered `setup:passive`).
    Connect(SocketAddr),
    /// TCP, the platform connects (it offered `setup:active`).
    Accept(std::net::TcpListener),
}

/// A channel's microphone: a tone, G.711 at 8 kHz, 40 ms with each video frame.
struct Audio {
    tone: fieldlink_sdk::audio::tone::Tone,
    alaw: bool,
}

impl Audio {
    fn stream_type(&self) -> u8 {
        use fieldlink_media::ps::stream_type::{G711A, G711U};
        if self.alaw {
            G711A
        } else {
            G711U
        }
    }

    /// The next 40 ms, encoded.
    fn next(&mut self) -> Vec<u8> {
        use fieldlink_media::g711;
        let enc = if self.alaw {
            g711::alaw_encode
        } else {
            g711::ulaw_encode
        };
        (0..4)
            .flat_map(|_| self.tone.next_frame())
            .map(enc)
            .collect()
    }
}

/// Sends channel `index`'s test pattern (and audio, if any) as PS over RTP until `stop`
/// (or the TCP peer goes away).
fn stream(
    index: u32,
    out: MediaOut,
    ssrc: u32,
    video: Video,
    mut audio: Option<Audio>,
    stop: Arc<AtomicBool>,
) {
    use std::io::Write;
    let mut tcp = match &out {
        MediaOut::Udp(..) => None,
        MediaOut::Connect(to) => {
            match std::net::TcpStream::connect_timeout(to, Duration::from_secs(5)) {
                Ok(s) => Some(s),
                Err(e) => {
                    print(json!({"event": "error", "message": format!("media connect {to}: {e}")}));
                    return;
                }
            }
        }
        MediaOut::Accept(l) => match l.accept() {
            Ok((s, _)) => Some(s),
            Err(e) => {
                print(json!({"event": "error", "message": format!("media accept: {e}")}));
                return;
            }
        },
    };
    let cfg = TestPatternConfig {
        width: 320,
        height: 180,
        fps: 25.0,
        kbps: 300,
        gop: 25,
    };
    let (mut pattern, stream_type) = match &video {
        Video::Pattern(t) => match TestPattern::new(index, cfg) {
            Ok(p) => (Some(p), *t),
            Err(_) => return,
        },
        Video::File(_, t) => (None, *t),
    };
    let start = std::time::Instant::now();
    let mut seq: u16 = rand::random();
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let (data, keyframe) = match (&video, pattern.as_mut()) {
            (Video::File(aus, _), _) => {
                let au = &aus[n as usize % aus.len()];
                let h265 = stream_type == fieldlink_media::ps::stream_type::H265;
                let kf = if h265 {
                    fieldlink_media::is_h265_keyframe(au)
                } else {
                    fieldlink_media::is_h264_keyframe(au)
                };
                (au.clone(), kf)
            }
            // A keyframe first, so a viewer starts at once.
            (_, Some(p)) => match p.next_frame(n == 0) {
                Ok(Some(f)) => (f.data, f.keyframe),
                _ => {
                    n += 1;
                    continue;
                }
            },
            _ => return,
        };
        let pts = n * 3600; // 90 kHz at 25 fps
        let mut ps = fieldlink_media::ps::mux_video_with_audio(
            &data,
            pts,
            keyframe,
            stream_type,
            audio.as_ref().map(Audio::stream_type),
        );
        if let Some(a) = audio.as_mut() {
            ps.extend(fieldlink_media::ps::mux_audio(&a.next(), pts));
        }
        for p in fieldlink_gb28181::rtp::packetize(&ps, 96, ssrc, &mut seq, pts as u32, 1400) {
            match (&out, tcp.as_mut()) {
                (MediaOut::Udp(socket, to), _) => {
                    let _ = socket.send_to(&p, to);
                }
                (_, Some(s)) => {
                    if s.write_all(&fieldlink_gb28181::rtp::frame_tcp(&p)).is_err() {
                        return; // the platform hung up the connection
                    }
                }
                _ => return,
            }
        }
        n += 1;
        let next = start + Duration::from_millis(n * 40);
        if let Some(wait) = next.checked_duration_since(std::time::Instant::now()) {
            std::thread::sleep(wait);
        }
    }
}
