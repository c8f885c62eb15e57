//! The GB28181 platform in tests: a server with it on, `fieldlink gb-device` cameras.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::Stdio;
use std::time::{Duration, Instant};

use fieldlink_gb28181::digest::register_authorization;
use fieldlink_gb28181::sip::{self, Dialog, Message, StartLine};

use super::TestServer;

/// A server whose GB28181 devices join project `p` (with the standard devices), SIP on a
/// free port; `toml` goes into its `[gb28181]` section. Returns it and its SIP address.
pub fn gb_server(toml: &str, flags: &[&str]) -> (TestServer, String) {
    let s = TestServer::start_with(
        &format!("[gb28181]\nproject = \"p\"\n{toml}"),
        &[&["--sip-listen", "127.0.0.1:0"], flags].concat(),
    );
    s.standard();
    let sip = s.sip.clone().expect("the ready line names the SIP address");
    (s, sip)
}

/// `fieldlink gb-device` registering at `sip` with `args`, its JSON lines on stdout.
pub fn gb_device(sip: &str, args: &[&str]) -> KillOnDrop {
    KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_fieldlink"))
            .args(["gb-device", "--server", sip])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

/// A `gb-device`'s JSON lines, read by a thread; lines not waited for yet are kept, so
/// waits need not come in the order the lines did.
pub struct DeviceLines {
    rx: std::sync::mpsc::Receiver<String>,
    seen: std::sync::Mutex<Vec<String>>,
}

impl DeviceLines {
    pub fn of(dev: &mut KillOnDrop) -> DeviceLines {
        let stdout = dev.0.stdout.take().expect("stdout piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(l);
            }
        });
        DeviceLines {
            rx,
            seen: Default::default(),
        }
    }

    /// The first line (kept or new) that contains every one of `what`, within 10 s
    /// (panics naming them otherwise). JSON keys come in alphabetical order.
    pub fn wait(&self, what: &[&str]) -> String {
        let hit = |l: &str| what.iter().all(|w| l.contains(w));
        let mut seen = self.seen.lock().unwrap();
        if let Some(i) = seen.iter().position(|l| hit(l)) {
            return seen.remove(i);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(l) if hit(&l) => return l,
                Ok(l) => seen.push(l),
                Err(_) => panic!(
                    "gb-device printed no line with {what:?} within 10 s; it printed {seen:#?}"
                ),
            }
        }
    }
}

/// Writes one `--commands` line to a `gb-device`.
pub fn command(dev: &mut KillOnDrop, line: &str) {
    use std::io::Write;
    let stdin = dev.0.stdin.as_mut().expect("stdin piped");
    writeln!(stdin, "{line}").unwrap();
    stdin.flush().unwrap();
}

/// A child process that is killed however the test ends.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until remote `r` lists the camera `gwid` online (its catalog is in).
pub async fn wait_listed(r: &fieldlink_sdk::RemoteDevice, gwid: &fieldlink_sdk::DeviceId) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let fields = r.list_fields().await.unwrap();
        if fields.iter().any(|f| &f.id == gwid && f.online) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{gwid} not listed online: {fields:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const REALM: &str = "3402000000";

pub fn local(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, n])
}

/// One REGISTER of device `id` from `socket` to `server` (with `auth`, if given).
fn register(
    socket: &UdpSocket,
    server: SocketAddr,
    dialog: &Dialog,
    cseq: u32,
    auth: Option<String>,
) {
    let mut extra = vec![
        ("Contact", format!("<{}>", dialog.local_uri)),
        ("Expires", "3600".to_string()),
    ];
    if let Some(a) = auth {
        extra.push(("Authorization", a));
    }
    let r = sip::request("REGISTER", dialog, cseq, &sip::branch(), &extra, None);
    socket.send_to(&r, server).unwrap();
}

/// The next answer on `socket` to a REGISTER (other messages, e.g. the platform's
/// queries, are skipped), or None after `wait`.
fn answer(socket: &UdpSocket, wait: Duration) -> Option<Message> {
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 8192];
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        socket
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .ok()?;
        let (n, _) = socket.recv_from(&mut buf).ok()?;
        let Ok(m) = Message::parse(&buf[..n]) else {
            continue;
        };
        if matches!(m.start, StartLine::Response { .. })
            && m.cseq().map(|(_, method)| method) == Some("REGISTER")
        {
            return Some(m);
        }
    }
}

fn code(m: &Message) -> u16 {
    match m.start {
        StartLine::Response { code, .. } => code,
        _ => 0,
    }
}

/// What one registration attempt got.
pub struct Tried {
    pub code: u16,
    /// The longest wait for an answer.
    pub took: Duration,
    /// The first REGISTER was challenged (401) rather than refused at once.
    pub challenged: bool,
}

/// REGISTER → 401 → REGISTER with digest; None if an answer took longer than 500 ms
/// (SIPp would have retransmitted).
pub fn register_with_digest(
    server: SocketAddr,
    from: IpAddr,
    id: &str,
    password: &str,
) -> Option<Tried> {
    let socket = UdpSocket::bind(SocketAddr::new(from, 0)).unwrap();
    let me = socket.local_addr().unwrap();
    let dialog = Dialog {
        remote_uri: format!("sip:34020000002000000001@{REALM}"),
        local_uri: format!("sip:{id}@{REALM}"),
        local_tag: sip::new_tag(),
        remote_tag: None,
        call_id: sip::new_call_id(from),
        via: me,
        transport: "UDP",
    };
    let limit = Duration::from_millis(500);
    let t = Instant::now();
    register(&socket, server, &dialog, 1, None);
    let challenge = answer(&socket, limit)?;
    let first = t.elapsed();
    if code(&challenge) != 401 {
        return Some(Tried {
            code: code(&challenge),
            took: first,
            challenged: false,
        });
    }
    let h = challenge.header("www-authenticate").unwrap_or_default();
    let nonce = sip::challenge_param(h, "nonce").unwrap_or_default();
    let uri = &dialog.remote_uri;
    let auth = register_authorization(id, REALM, password, uri, nonce);
    let t = Instant::now();
    register(&socket, server, &dialog, 2, Some(auth));
    let done = answer(&socket, limit)?;
    Some(Tried {
        code: code(&done),
        took: first.max(t.elapsed()),
        challenged: true,
    })
}
