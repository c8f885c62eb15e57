//! Test harness: runs the real `fieldlink server` binary on 127.0.0.1 with its own data
//! directory, talks to its admin API over plain HTTP, and logs SDK devices in.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use fieldlink_sdk::{DeviceConfig, DeviceId, Event, Events, FieldDevice, RemoteDevice};
use serde_json::{json, Value};

pub mod audio;
pub mod camera;
pub mod gb;
pub mod metrics;
pub mod tls;

// Each test binary uses some of these, none uses all.
#[allow(unused_imports)]
pub use fieldlink_testkit::{netns, relay};

pub const KEY: &str = "0123456789abcdef0123456789abcdef";
pub const TOKEN: &str = "test-admin-token";
pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestServer {
    child: Option<Child>,
    pub dir: PathBuf,
    pub http: String,
    pub ws: String,
    pub udp: String,
    /// The GB28181 SIP address (`--sip-listen`), when enabled.
    pub sip: Option<String>,
    /// The metrics-only address (`--metrics-listen`), when enabled.
    pub metrics: Option<String>,
    /// HTTPS/WSS: the CA that signed the server's certificate ([`TestServer::start_tls`]).
    pub ca: Option<PathBuf>,
    extra: Vec<String>,
}

/// A new empty directory under the system's temp dir, unique to this process and call.
pub fn temp_dir(tag: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "fieldlink-test-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A [`temp_dir`] removed (with what is in it) when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        TempDir(temp_dir(tag))
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl TestServer {
    pub fn start() -> TestServer {
        Self::start_with("", &[])
    }

    /// Starts the server with `toml` as its config file and extra flags.
    pub fn start_with(toml: &str, extra: &[&str]) -> TestServer {
        Self::start_on("127.0.0.1", toml, extra)
    }

    /// [`TestServer::start_with`], listening (HTTP and UDP) on `ip` instead of 127.0.0.1
    /// (a test network's address, [`netns::TestNet`]).
    pub fn start_on(ip: &str, toml: &str, extra: &[&str]) -> TestServer {
        let dir = temp_dir("srv");
        std::fs::write(dir.join("server.toml"), toml).unwrap();
        let mut s = TestServer {
            child: None,
            dir,
            http: String::new(),
            ws: String::new(),
            udp: String::new(),
            sip: None,
            metrics: None,
            ca: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        let any_port = format!("{ip}:0");
        s.spawn(&any_port, &any_port);
        s
    }

    /// Starts the server on HTTPS/WSS with a certificate that `ca` signed; the admin API
    /// calls and [`TestServer::cfg`] then verify it against `ca`.
    pub fn start_tls(ca: &tls::TestCa, toml: &str) -> TestServer {
        let (cert, key) = (ca.cert.to_string_lossy(), ca.key.to_string_lossy());
        let mut s = Self::start_with(toml, &["--tls-cert", &cert, "--tls-key", &key]);
        assert!(s.ws.starts_with("wss://"), "{}", s.ws);
        s.ca = Some(ca.ca.clone());
        s
    }

    fn spawn(&mut self, listen: &str, udp: &str) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fieldlink"));
        cmd.arg("server")
            .arg("--config")
            .arg(self.dir.join("server.toml"))
            .args([
                "--listen",
                listen,
                "--udp-listen",
                udp,
                "--admin-token",
                TOKEN,
            ])
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args(&self.extra)
            // FIELDLINK_TEST_LOG sets the server's log filter when debugging a test.
            .env(
                "FIELDLINK_LOG",
                std::env::var("FIELDLINK_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env_remove("FIELDLINK_DATABASE_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawn fieldlink server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let ready: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("server ready line {line:?}: {e}"));
        assert_eq!(ready["event"], "ready");
        self.http = ready["http"].as_str().unwrap().to_string();
        self.ws = ready["ws"].as_str().unwrap().to_string();
        self.udp = ready["udp"].as_str().unwrap().to_string();
        self.sip = ready["sip"].as_str().map(str::to_string);
        self.metrics = ready["metrics"].as_str().map(str::to_string);
        self.child = Some(child);
    }

    /// Stops the server with SIGTERM (graceful) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = std::time::Instant::now() + WAIT;
            loop {
                if let Ok(Some(st)) = c.try_wait() {
                    assert!(st.success(), "server exited with {st}");
                    break;
                }
                if std::time::Instant::now() > deadline {
                    let _ = c.kill();
                    panic!("server did not stop within 10 s of SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Starts it again on the same addresses and data.
    pub fn restart(&mut self) {
        self.stop();
        let (h, u) = (self.http.clone(), self.udp.clone());
        self.spawn(&h, &u);
    }

    /// One admin API call; returns status and JSON body (Null if empty).
    pub fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.api_with_token(method, path, body, Some(TOKEN))
    }

    pub fn api_with_token(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> (u16, Value) {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        match &self.ca {
            Some(ca) => {
                let (status, text) = tls::https_text(&self.http, ca, method, path, &body, token);
                (status, json_body(&text))
            }
            None => raw_http(&self.http, method, path, &body, token),
        }
    }

    pub fn project(&self, id: &str, settings: Value) {
        let mut b = json!({"id": id});
        if let (Some(o), Some(s)) = (b.as_object_mut(), settings.as_object()) {
            o.extend(s.clone());
        }
        let (st, v) = self.api("POST", "/api/v1/projects", Some(b));
        assert_eq!(st, 201, "{v}");
    }

    pub fn device(&self, project: &str, id: &str, kind: &str, password: &str) {
        let (st, v) = self.api(
            "POST",
            &format!("/api/v1/projects/{project}/devices"),
            Some(json!({"id": id, "kind": kind, "password": password})),
        );
        assert_eq!(st, 201, "{v}");
    }

    pub fn cfg(&self, id: &str, password: &str) -> DeviceConfig {
        let mut c = DeviceConfig::new(self.ws.clone(), id.parse().unwrap(), password);
        c.reconnect_delay = Duration::from_millis(200);
        c.server_ca = self.ca.clone();
        c
    }

    pub async fn field(&self, id: &str, password: &str) -> (FieldDevice, Events) {
        FieldDevice::connect(self.cfg(id, password))
            .await
            .expect("field login")
    }

    pub async fn remote(&self, id: &str, password: &str) -> (RemoteDevice, Events) {
        RemoteDevice::connect(self.cfg(id, password))
            .await
            .expect("remote login")
    }

    /// Remote `p/r1` with one receiver playing field `p/f`'s stream 0 on conn_fd 0.
    pub async fn remote_playing(&self) -> (RemoteDevice, Events) {
        let mut rc = self.cfg("p/r1", "rpw");
        rc.streams = 1;
        let (r, mut re) = RemoteDevice::connect(rc).await.expect("remote login");
        r.connect_streams(&id("p/f"), &[0], &[0])
            .await
            .expect("connect stream 0");
        expect_event(&mut re, "playing", |e| {
            matches!(
                e,
                Event::StreamState {
                    state: fieldlink_sdk::StreamState::Playing,
                    ..
                }
            )
        })
        .await;
        (r, re)
    }

    /// A project `p` with field `p/f` (password `fpw`) and remotes `p/r1`, `p/r2` (`rpw`).
    pub fn standard(&self) {
        self.project("p", json!({"Mode": 1, "Key": KEY}));
        self.device("p", "f", "field", "fpw");
        self.device("p", "r1", "remote", "rpw");
        self.device("p", "r2", "remote", "rpw");
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A small test-pattern stream (160x96, 25 fps, 200 kbit/s, keyframe every 50 frames).
pub const SMALL_PATTERN: fieldlink_sdk::video::TestPatternConfig =
    fieldlink_sdk::video::TestPatternConfig {
        width: 160,
        height: 96,
        fps: 25.0,
        kbps: 200,
        gop: 50,
    };

pub fn raw_http(
    addr: &str,
    method: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> (u16, Value) {
    let (status, payload) = raw_http_text(addr, method, path, body, token);
    (status, json_body(&payload))
}

/// A JSON answer's body (Null if none). Bodies come without chunking from axum for JSON;
/// chunked is tolerated just in case.
pub fn json_body(payload: &str) -> Value {
    serde_json::from_str(payload)
        .or_else(|_| {
            let inner = payload
                .lines()
                .filter(|l| l.starts_with('{') || l.starts_with('['))
                .collect::<String>();
            serde_json::from_str(&inner)
        })
        .unwrap_or(Value::Null)
}

/// One HTTP/1.1 request; returns the status and the body as it came.
pub fn raw_http_text(
    addr: &str,
    method: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> (u16, String) {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    http_exchange(s, addr, method, path, body, token)
}

/// One HTTP/1.1 request with `Connection: close` over `s` (plain or TLS).
pub fn http_exchange(
    mut s: impl Read + Write,
    addr: &str,
    method: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> (u16, String) {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = Vec::new();
    // A TLS peer that closes without close_notify still gave us the whole answer.
    if let Err(e) = s.read_to_end(&mut resp) {
        assert!(!resp.is_empty(), "reading the answer: {e}");
    }
    let resp = String::from_utf8_lossy(&resp);
    let status: u16 = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let payload = resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, payload.to_string())
}

/// A port free on 127.0.0.1 for both UDP and TCP now (a client's own port that tests
/// running at once must not share).
pub fn free_port() -> u16 {
    loop {
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = u.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub fn id(s: &str) -> DeviceId {
    s.parse().unwrap()
}

/// Waits for the first event matching `pred`, skipping others.
pub async fn expect_event(ev: &mut Events, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, ev.recv()).await {
            Ok(Some(e)) if pred(&e) => return e,
            Ok(Some(_)) => {}
            Ok(None) => panic!("event stream ended while waiting for {what}"),
            Err(_) => panic!("timed out waiting for {what}"),
        }
    }
}

#[allow(unused_imports)]
pub use fieldlink_testkit::drain;

pub fn now_minutes() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 60
}

/// The `fieldlink` binary of this build, logging warnings only.
pub fn fieldlink() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fieldlink"));
    c.env("FIELDLINK_LOG", "warn");
    c
}

/// Reads JSON lines of a child's stdout on a thread.
pub fn lines(child: &mut std::process::Child) -> mpsc::Receiver<Value> {
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&l) {
                if tx.send(v).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

pub fn wait_line(rx: &mpsc::Receiver<Value>, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(v) if pred(&v) => return v,
            Ok(_) => {}
            Err(_) => panic!("no line for {what}"),
        }
    }
}

/// Writes `config` as the field device's config.json and starts `fieldlink field` on it
/// (stdin and stdout piped); returns once it is ready.
pub fn start_field(s: &TestServer, config: &str) -> (std::process::Child, mpsc::Receiver<Value>) {
    start_field_with(s, config, &[])
}

/// [`start_field`] with extra arguments.
pub fn start_field_with(
    s: &TestServer,
    config: &str,
    extra: &[&str],
) -> (std::process::Child, mpsc::Receiver<Value>) {
    let cfg = s.dir.join("field.json");
    std::fs::write(&cfg, config).unwrap();
    let mut field = fieldlink()
        .args(["field", "--config"])
        .arg(&cfg)
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = lines(&mut field);
    wait_line(&out, "field ready", |v| v["event"] == "ready");
    (field, out)
}

/// Stops a CLI device with SIGINT (as Ctrl-C would) and waits for it to exit cleanly.
pub fn interrupt(mut child: Child) {
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert!(st.success(), "exited with {st}");
            return;
        }
        assert!(std::time::Instant::now() < deadline, "no exit after SIGINT");
        std::thread::sleep(Duration::from_millis(20));
    }
}
