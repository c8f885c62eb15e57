//! The GB28181 platform in tests: a server with it on, `fieldlink gb-device` cameras.

use std::process::Stdio;
use std::time::Duration;

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
