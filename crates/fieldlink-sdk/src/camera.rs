//! IP cameras over RTSP (SPEC §7): a task per camera pulls the stream with `retina` and
//! hands its access units over a bounded queue to the stream's source (passthrough or
//! transcode). The task reconnects with backoff and says why each attempt failed.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use retina::client::{Credentials, PlayOptions, Session, SessionOptions, SetupOptions, Transport};
use retina::codec::{CodecItem, FrameFormat};
use url::Url;

use crate::{ErrorCode, SdkError};

/// Each RTSP step (connect + DESCRIBE, SETUP, PLAY) must answer within this.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// A playing camera that sends no video for this long is dropped and reconnected.
const FRAME_TIMEOUT: Duration = Duration::from_secs(5);
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Frames waiting for the source; a source that falls behind loses frames (and says so
/// with [`CameraFrame::gap`]) instead of growing a queue.
const QUEUE: usize = 64;

/// How RTP reaches us (the camera's `protocol` in config.json: 1 = TCP, 0 = UDP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RtspTransport {
    /// Interleaved on the RTSP connection: passes NAT and firewalls, no loss.
    #[default]
    Tcp,
    /// RTP/UDP: lower latency on a clean LAN; no reordering or repair.
    Udp,
}

/// One camera: its URL and how to reach it.
#[derive(Debug, Clone)]
pub struct RtspCameraConfig {
    /// `rtsp://[user[:password]@]host[:port]/path`.
    pub url: String,
    /// Overrides the URL's user name / password (basic and digest auth both work).
    pub username: Option<String>,
    pub password: Option<String>,
    pub transport: RtspTransport,
}

/// What a camera sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CameraCodec {
    H264,
    H265,
    Jpeg,
}

impl CameraCodec {
    pub fn name(self) -> &'static str {
        match self {
            CameraCodec::H264 => "H.264",
            CameraCodec::H265 => "H.265",
            CameraCodec::Jpeg => "MJPEG",
        }
    }
}

/// One access unit (H.26x Annex-B, parameter sets before every keyframe) or one JPEG.
#[derive(Debug, Clone)]
pub struct CameraFrame {
    pub codec: CameraCodec,
    pub data: Vec<u8>,
    pub keyframe: bool,
    /// Frames before this one were lost (RTP loss, or the source fell behind): a decoder
    /// must wait for a keyframe.
    pub gap: bool,
    /// When the last packet of the frame arrived.
    pub arrived: SystemTime,
}

/// What the camera task reports.
#[derive(Debug)]
pub enum CameraMsg {
    Frame(CameraFrame),
    /// The camera could not be reached, refused us, or stopped; the task retries.
    Down(String),
}

/// A running camera pull; stops when dropped.
pub struct Camera {
    rx: Receiver<CameraMsg>,
    task: tokio::task::JoinHandle<()>,
    name: String,
}

impl Drop for Camera {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RtspCameraConfig {
    /// Checks the URL without connecting (config validation).
    pub fn validate(&self) -> Result<(), SdkError> {
        prepare(self).map(|_| ())
    }
}

/// The URL retina sees (no credentials in it), the credentials, and a name for logs.
fn prepare(cfg: &RtspCameraConfig) -> Result<(Url, Option<Credentials>, String), SdkError> {
    let bad = |why: String| SdkError::new(ErrorCode::BadRequest, why);
    let mut url = Url::parse(&cfg.url).map_err(|e| bad(format!("camera URL: {e}")))?;
    if url.scheme() != "rtsp" {
        return Err(bad(format!("camera URL {:?} is not rtsp://", url.scheme())));
    }
    if url.host_str().is_none() {
        return Err(bad("camera URL has no host".into()));
    }
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let user = cfg
        .username
        .clone()
        .or_else(|| (!url.username().is_empty()).then(|| decode(url.username())));
    let pass = cfg.password.clone().or_else(|| url.password().map(decode));
    let _ = url.set_username("");
    let _ = url.set_password(None);
    let creds = user.map(|username| Credentials {
        username,
        password: pass.unwrap_or_default(),
    });
    let name = url.to_string();
    Ok((url, creds, name))
}

impl Camera {
    /// Starts pulling (on the current tokio runtime). Codecs not in `accept` are refused
    /// at DESCRIBE with a reason naming the codec and what the stream mode takes.
    pub fn start(
        cfg: &RtspCameraConfig,
        accept: &'static [CameraCodec],
        mode: &'static str,
    ) -> Result<Camera, SdkError> {
        let (url, creds, name) = prepare(cfg)?;
        let rt = tokio::runtime::Handle::try_current().map_err(|_| {
            SdkError::new(ErrorCode::Internal, "cameras start inside a tokio runtime")
        })?;
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let pull = Pull {
            url,
            creds,
            transport: cfg.transport,
            name: name.clone(),
            accept,
            mode,
            tx,
        };
        let task = rt.spawn(pull.run());
        Ok(Camera { rx, task, name })
    }

    /// The camera's URL without credentials.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The next report, waiting at most `wait`.
    pub fn recv(&self, wait: Duration) -> Option<CameraMsg> {
        match self.rx.recv_timeout(wait) {
            Ok(m) => Some(m),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => Some(CameraMsg::Down(format!(
                "camera {}: its task ended",
                self.name
            ))),
        }
    }

    /// Everything queued now, without waiting.
    pub fn drain(&self) -> impl Iterator<Item = CameraMsg> + '_ {
        self.rx.try_iter()
    }
}

struct Pull {
    url: Url,
    creds: Option<Credentials>,
    transport: RtspTransport,
    name: String,
    accept: &'static [CameraCodec],
    mode: &'static str,
    tx: SyncSender<CameraMsg>,
}

/// Why a session ended: the camera's fault (retry), or nobody listens any more (stop).
enum End {
    Failed(String),
    Closed,
}

async fn step<T, E: std::fmt::Display>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, End> {
    match tokio::time::timeout(STEP_TIMEOUT, f).await {
        Err(_) => Err(End::Failed(format!(
            "no answer to {what} within {} s",
            STEP_TIMEOUT.as_secs()
        ))),
        Ok(Err(e)) => Err(End::Failed(explain(what, &e.to_string()))),
        Ok(Ok(v)) => Ok(v),
    }
}

/// retina's error text, with the likely cause first for the usual failures.
fn explain(what: &str, e: &str) -> String {
    let e = e.lines().next().unwrap_or(e);
    if e.contains("401") {
        format!("{what} refused: wrong user name or password (401 Unauthorized): {e}")
    } else if e.contains("Connection refused") {
        format!("{what}: nothing listens at that address (connection refused)")
    } else {
        format!("{what}: {e}")
    }
}

impl Pull {
    async fn run(self) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let started = Instant::now();
            let why = match self.session().await {
                Ok(()) => "the camera ended the stream".to_string(),
                Err(End::Failed(why)) => why,
                Err(End::Closed) => return,
            };
            if started.elapsed() > MAX_BACKOFF * 3 {
                backoff = FIRST_BACKOFF; // it worked for a while: retry soon
            }
            tracing::warn!(camera = %self.name, "camera failed: {why}; retrying in {backoff:?}");
            let msg = CameraMsg::Down(format!("camera {}: {why}", self.name));
            if let Err(TrySendError::Disconnected(_)) = self.tx.try_send(msg) {
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn session(&self) -> Result<(), End> {
        let opts = SessionOptions::default()
            .creds(self.creds.clone())
            .user_agent(format!("fieldlink/{}", env!("CARGO_PKG_VERSION")));
        let mut session = step("DESCRIBE", Session::describe(self.url.clone(), opts)).await?;
        let (index, codec) = self.pick_video(&session)?;
        let transport = match self.transport {
            RtspTransport::Tcp => Transport::Tcp(Default::default()),
            RtspTransport::Udp => Transport::Udp(Default::default()),
        };
        let setup = SetupOptions::default()
            .transport(transport)
            .frame_format(FrameFormat::SIMPLE);
        step("SETUP", session.setup(index, setup)).await?;
        let playing = step("PLAY", session.play(PlayOptions::default())).await?;
        let mut demuxed = playing
            .demuxed()
            .map_err(|e| End::Failed(explain("PLAY", &e.to_string())))?;
        tracing::info!(camera = %self.name, codec = codec.name(), transport = ?self.transport, "camera playing");
        let mut gap = false;
        loop {
            let item = tokio::time::timeout(FRAME_TIMEOUT, demuxed.next())
                .await
                .map_err(|_| End::Failed(format!("no video for {} s", FRAME_TIMEOUT.as_secs())))?;
            let frame = match item {
                None => return Ok(()),
                Some(Err(e)) => return Err(End::Failed(explain("stream", &e.to_string()))),
                Some(Ok(CodecItem::VideoFrame(f))) => f,
                Some(Ok(_)) => continue,
            };
            let f = CameraFrame {
                codec,
                keyframe: frame.is_random_access_point(),
                gap: gap || frame.loss() > 0,
                arrived: SystemTime::now(),
                data: frame.into_data(),
            };
            match self.tx.try_send(CameraMsg::Frame(f)) {
                Ok(()) => gap = false,
                Err(TrySendError::Full(_)) => gap = true,
                Err(TrySendError::Disconnected(_)) => return Err(End::Closed),
            }
        }
    }

    /// The first video stream, if its codec is one this stream mode takes.
    fn pick_video(
        &self,
        session: &Session<retina::client::Described>,
    ) -> Result<(usize, CameraCodec), End> {
        let (index, s) = session
            .streams()
            .iter()
            .enumerate()
            .find(|(_, s)| s.media() == "video")
            .ok_or_else(|| End::Failed("the camera offers no video stream".into()))?;
        let codec = match s.encoding_name() {
            "h264" => Some(CameraCodec::H264),
            "h265" => Some(CameraCodec::H265),
            "jpeg" => Some(CameraCodec::Jpeg),
            _ => None,
        };
        match codec {
            Some(c) if self.accept.contains(&c) => Ok((index, c)),
            Some(c) => Err(End::Failed(format!(
                "the camera sends {} which protocol {:?} cannot use: {}",
                c.name(),
                self.mode,
                match self.mode {
                    "rtsp_enc" => "set protocol \"normal\" to transcode it",
                    _ => "no decoder for it in this build",
                }
            ))),
            None => Err(End::Failed(format!(
                "unsupported codec {:?}: fieldlink takes H.264, H.265 or MJPEG",
                s.encoding_name()
            ))),
        }
    }
}

/// Passthrough (`protocol: "rtsp_enc"`): the camera's H.264/H.265 access units as they
/// are. The camera's own encoder cannot be asked for a keyframe or a bitrate; the server
/// starts new receivers from its copy of the last group of pictures instead.
pub struct Passthrough {
    camera: Camera,
    fps: f64,
    /// After a gap or a reconnect, frames wait for the next keyframe.
    waiting_keyframe: bool,
}

impl Passthrough {
    pub fn start(cfg: &RtspCameraConfig, fps: f64) -> Result<Passthrough, SdkError> {
        const ACCEPT: &[CameraCodec] = &[CameraCodec::H264, CameraCodec::H265];
        Ok(Passthrough {
            camera: Camera::start(cfg, ACCEPT, "rtsp_enc")?,
            fps,
            waiting_keyframe: true,
        })
    }
}

impl crate::VideoSource for Passthrough {
    fn fps(&self) -> f64 {
        self.fps
    }

    fn paced(&self) -> bool {
        false
    }

    fn keyframe_on_request(&self) -> bool {
        false
    }

    fn next_frame(
        &mut self,
        _force_keyframe: bool,
    ) -> Result<Option<crate::EncodedFrame>, SdkError> {
        let f = match self.camera.recv(Duration::from_millis(200)) {
            None => return Ok(None),
            Some(CameraMsg::Down(why)) => {
                self.waiting_keyframe = true;
                return Err(SdkError::new(ErrorCode::SourceFailed, why));
            }
            Some(CameraMsg::Frame(f)) => f,
        };
        let codec = match f.codec {
            CameraCodec::H264 => fieldlink_media::VideoCodec::H264,
            CameraCodec::H265 => fieldlink_media::VideoCodec::H265,
            CameraCodec::Jpeg => return Ok(None), // refused at DESCRIBE
        };
        if f.gap {
            self.waiting_keyframe = true;
        }
        if self.waiting_keyframe && !f.keyframe {
            return Ok(None);
        }
        self.waiting_keyframe = false;
        Ok(Some(crate::EncodedFrame {
            codec,
            data: f.data,
            keyframe: f.keyframe,
            capture: f.arrived,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(url: &str) -> RtspCameraConfig {
        RtspCameraConfig {
            url: url.into(),
            username: None,
            password: None,
            transport: RtspTransport::Tcp,
        }
    }

    #[test]
    fn credentials_come_out_of_the_url() {
        let (url, creds, name) =
            prepare(&cfg("rtsp://ad%40min:p%3As=s+@127.0.0.1:8554/cam")).unwrap();
        assert_eq!(url.as_str(), "rtsp://127.0.0.1:8554/cam");
        assert_eq!(name, "rtsp://127.0.0.1:8554/cam");
        let c = creds.unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("ad@min", "p:s=s+")
        );
        let mut separate = cfg("rtsp://u:p@127.0.0.1/cam");
        separate.username = Some("other".into());
        separate.password = Some("secret".into());
        let c = prepare(&separate).unwrap().1.unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("other", "secret")
        );
        assert!(prepare(&cfg("rtsp://127.0.0.1/cam")).unwrap().1.is_none());
    }

    #[test]
    fn bad_urls_are_refused_with_a_reason() {
        for u in ["http://127.0.0.1/cam", "rtsp://", "not a url"] {
            let e = prepare(&cfg(u)).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadRequest, "{u}");
            assert!(e.message.contains("camera URL"), "{u}: {}", e.message);
        }
    }

    #[test]
    fn the_usual_failures_say_their_cause() {
        assert!(
            explain("DESCRIBE", "[..] 401 Unauthorized").contains("wrong user name or password")
        );
        assert!(
            explain("DESCRIBE", "Connection refused (os error 111)").contains("nothing listens")
        );
    }
}
