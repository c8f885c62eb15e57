//! A test host: a network namespace this test creates, joined to ours by a veth pair,
//! with addresses from 198.18.0.0/15 (RFC 2544's range for network tests), and a
//! `tc tbf` shaper on its uplink when asked. Deleted when dropped.
//!
//! An SDK device runs "on" that host in this process: [`TestNet::runtime`] gives a tokio
//! runtime whose every thread has entered the namespace (setns(2)), so every socket its
//! tasks open is the host's.

use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

pub struct TestNet {
    pub ns: String,
    host_if: String,
    ns_if: String,
    /// Our side of the veth pair (a server listening here is reachable from the host).
    pub host_ip: String,
    /// The host's side.
    pub ns_ip: String,
    /// More veth pairs into the same namespace ([`TestNet::add_path`]): (our interface,
    /// the host's interface, our address, the host's address).
    paths: Vec<(String, String, String, String)>,
    /// Per path (0: the first pair), the % of datagrams dropped each way.
    loss: std::sync::Mutex<Vec<u32>>,
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("running {program} (Debian package iproute2): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl TestNet {
    /// Makes the namespace, or `None` with a message where namespaces cannot be made here
    /// (not root). Under CI (`CI=true`) that is a failure instead: these tests are
    /// mandatory there.
    pub fn create() -> Option<TestNet> {
        match Self::try_create() {
            Ok(net) => Some(net),
            Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
                panic!("cannot make a test network namespace (mandatory under CI): {e}")
            }
            Err(e) => {
                eprintln!(
                    "SKIPPED: cannot make a test network namespace (needs root and iproute2): {e}"
                );
                None
            }
        }
    }

    /// [`TestNet::create`] with the reason it could not, for a caller that is no test.
    pub fn try_create() -> Result<TestNet, String> {
        static N: AtomicU32 = AtomicU32::new(0);
        let pid = std::process::id();
        let n = N.fetch_add(1, Ordering::Relaxed);
        // 16 /30s per process (32768 in 198.18.0.0/15): 4 per net, one per path.
        let subnet = ((pid % 2048) * 16 + (n % 4) * 4) * 4;
        let addr = |host: u32| {
            let a = subnet + host;
            format!("198.{}.{}.{}", 18 + (a >> 16), (a >> 8) & 255, a & 255)
        };
        let mut net = TestNet {
            ns: format!("fl-test-{pid}-{n}"),
            host_if: format!("flh{pid}x{n}"),
            ns_if: format!("fln{pid}x{n}"),
            host_ip: addr(1),
            ns_ip: addr(2),
            paths: Vec::new(),
            loss: std::sync::Mutex::new(vec![0]),
        };
        run("ip", &["netns", "add", &net.ns])?;
        // From here on, Drop deletes what was made.
        let ns_if = std::mem::take(&mut net.ns_if);
        run(
            "ip",
            &[
                "link",
                "add",
                &net.host_if,
                "type",
                "veth",
                "peer",
                "name",
                &ns_if,
                "netns",
                &net.ns,
            ],
        )?;
        net.ns_if = ns_if;
        let host_cidr = format!("{}/30", net.host_ip);
        run("ip", &["addr", "add", &host_cidr, "dev", &net.host_if])?;
        run("ip", &["link", "set", &net.host_if, "up"])?;
        let ns_cidr = format!("{}/30", net.ns_ip);
        net.inside("ip", &["addr", "add", &ns_cidr, "dev", &net.ns_if])?;
        net.inside("ip", &["link", "set", &net.ns_if, "up"])?;
        net.inside("ip", &["link", "set", "lo", "up"])?;
        Ok(net)
    }

    /// A second link of the host (another modem): a veth pair of its own, in a /30 next
    /// to the first. Each of the host's addresses sends through its own pair (a routing
    /// table per source address), to the server on [`TestNet::host_ip`] too. Returns the
    /// host's new address.
    pub fn add_path(&mut self) -> String {
        let i = self.paths.len() + 1;
        // The net's next /30 (each net has 4: up to 3 more paths).
        assert!(i < 4, "at most 4 paths");
        let base: std::net::Ipv4Addr = self.host_ip.parse().expect("IPv4");
        let b = u32::from(base) - 1 + 4 * i as u32;
        let (host_ip, ns_ip) = (
            std::net::Ipv4Addr::from(b + 1).to_string(),
            std::net::Ipv4Addr::from(b + 2).to_string(),
        );
        let (host_if, ns_if) = (
            format!("{}p{i}", self.host_if),
            format!("{}p{i}", self.ns_if),
        );
        run(
            "ip",
            &[
                "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if, "netns", &self.ns,
            ],
        )
        .unwrap_or_else(|e| panic!("second veth pair: {e}"));
        let ok = |r: Result<(), String>| r.unwrap_or_else(|e| panic!("path {i}: {e}"));
        ok(run(
            "ip",
            &["addr", "add", &format!("{host_ip}/30"), "dev", &host_if],
        ));
        ok(run("ip", &["link", "set", &host_if, "up"]));
        ok(self.inside(
            "ip",
            &["addr", "add", &format!("{ns_ip}/30"), "dev", &ns_if],
        ));
        ok(self.inside("ip", &["link", "set", &ns_if, "up"]));
        // Source routing on the host: each address leaves by its own link.
        for (j, (ip, dev)) in [
            (self.ns_ip.clone(), self.ns_if.clone()),
            (ns_ip.clone(), ns_if.clone()),
        ]
        .iter()
        .enumerate()
        {
            let table = (100 + if j == 0 { 0 } else { i }).to_string();
            let _ = self.inside("ip", &["rule", "add", "from", ip, "table", &table]);
            let _ = self.inside(
                "ip",
                &["route", "replace", "default", "dev", dev, "table", &table],
            );
        }
        // Replies to the second address come back on its own link, from the first
        // link's server address: no reverse-path filter may drop them.
        for conf in ["all", "default", &ns_if, &self.ns_if.clone()] {
            let _ = self.inside(
                "sysctl",
                &["-qw", &format!("net.ipv4.conf.{conf}.rp_filter=0")],
            );
        }
        self.paths
            .push((host_if, ns_if, host_ip.clone(), ns_ip.clone()));
        self.loss.lock().unwrap().push(0);
        ns_ip_of(&self.paths, i)
    }

    /// The host's interface of path `i` (0: the first pair).
    fn host_if_of(&self, i: usize) -> &str {
        if i == 0 {
            &self.ns_if
        } else {
            &self.paths[i - 1].1
        }
    }

    /// The host's address on path `i` (0: the first pair).
    pub fn ns_ip_on(&self, i: usize) -> String {
        if i == 0 {
            self.ns_ip.clone()
        } else {
            ns_ip_of(&self.paths, i)
        }
    }

    /// Drops `pct` % of the datagrams crossing path `i` each way (nftables inside the
    /// namespace; 100 = cut). TCP (the signalling) is left alone: only UDP is dropped.
    pub fn set_loss(&self, i: usize, pct: u32) {
        let mut loss = self.loss.lock().unwrap();
        loss[i] = pct;
        let mut rules = String::from(
            "table inet fltest {\n chain out { type filter hook output priority 0; }\n \
             chain in { type filter hook input priority 0; }\n}\nflush table inet fltest\n",
        );
        for (j, pct) in loss.iter().enumerate() {
            if *pct == 0 {
                continue;
            }
            let dev = self.host_if_of(j);
            // 100 %: every datagram (nft's `mod 100 < 100` is out of range).
            let chance = if *pct >= 100 {
                String::new()
            } else {
                format!("numgen random mod 100 < {pct} ")
            };
            for (chain, dir) in [("out", "oifname"), ("in", "iifname")] {
                rules.push_str(&format!(
                    "add rule inet fltest {chain} {dir} \"{dev}\" meta l4proto udp {chance}drop\n"
                ));
            }
        }
        let path = std::env::temp_dir().join(format!("{}.nft", self.ns));
        std::fs::write(&path, rules).unwrap();
        self.inside("nft", &["-f", path.to_str().unwrap()])
            .unwrap_or_else(|e| panic!("nft (Debian package nftables): {e}"));
        let _ = std::fs::remove_file(path);
    }

    /// `ip netns exec <ns>`, to put before a command that runs on the host.
    pub fn exec_prefix(&self) -> Vec<String> {
        vec!["ip".into(), "netns".into(), "exec".into(), self.ns.clone()]
    }

    fn inside(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["netns", "exec", &self.ns, program];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Shapes what the host sends to `kbps` with `tc tbf`, its queue holding up to
    /// `queue_ms` (what would wait longer is dropped, as a modem's buffer would).
    pub fn shape_uplink(&self, kbps: u32, queue_ms: u32) {
        self.shape_path(0, kbps, queue_ms);
    }

    /// [`TestNet::shape_uplink`] for path `i` (0: the first pair, see [`TestNet::add_path`]).
    pub fn shape_path(&self, i: usize, kbps: u32, queue_ms: u32) {
        let dev = self.host_if_of(i);
        let (rate, latency) = (format!("{kbps}kbit"), format!("{queue_ms}ms"));
        // The bucket: two full-size packets. A larger one lets bursts pass at line rate,
        // and the estimator's probes (short bursts) then read the link as faster than it is.
        self.inside(
            "tc",
            &[
                "qdisc", "replace", "dev", dev, "root", "tbf", "rate", &rate, "burst", "3000",
                "latency", &latency,
            ],
        )
        .unwrap_or_else(|e| panic!("tc tbf: {e}"));
    }

    /// The uplink shaper's counters: (bytes sent, packets dropped).
    pub fn uplink_counters(&self) -> (u64, u64) {
        self.path_counters(0)
    }

    /// Path `i`'s qdisc counters (its shaper's, where shaped): (bytes sent, packets
    /// dropped); zeros where `tc` cannot tell.
    pub fn path_counters(&self, i: usize) -> (u64, u64) {
        let dev = self.host_if_of(i);
        let Ok(out) = Command::new("ip")
            .args([
                "netns", "exec", &self.ns, "tc", "-s", "qdisc", "show", "dev",
            ])
            .arg(dev)
            .output()
        else {
            return (0, 0);
        };
        let text = String::from_utf8_lossy(&out.stdout);
        // " Sent 123 bytes 45 pkt (dropped 6, overlimits 7 requeues 0)"
        let after = |key: &str| -> u64 {
            text.split(key)
                .nth(1)
                .and_then(|t| t.trim_start().split([' ', ',']).next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (after("Sent "), after("dropped "))
    }

    /// A tokio runtime (two workers) whose threads all live in the namespace.
    pub fn runtime(&self) -> NetRuntime {
        let path = format!("/run/netns/{}", self.ns);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .on_thread_start(move || {
                let f = std::fs::File::open(&path).expect("open the namespace");
                // SAFETY: setns on a valid namespace fd changes only this thread.
                let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            })
            .build()
            .expect("runtime");
        NetRuntime(Some(rt))
    }
}

fn ns_ip_of(paths: &[(String, String, String, String)], i: usize) -> String {
    paths[i - 1].3.clone()
}

impl Drop for TestNet {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the pairs, and with them ours.
        let _ = run("ip", &["netns", "del", &self.ns]);
        let _ = run("ip", &["link", "del", &self.host_if]);
        for (host_if, ..) in &self.paths {
            let _ = run("ip", &["link", "del", host_if]);
        }
    }
}

/// A runtime on a test host; shut down without waiting when dropped (also from async).
pub struct NetRuntime(Option<tokio::runtime::Runtime>);

impl NetRuntime {
    /// Runs `f` on the host and waits for it.
    pub async fn run<F>(&self, f: F) -> F::Output
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.0
            .as_ref()
            .expect("runtime")
            .spawn(f)
            .await
            .expect("task on the test host")
    }
}

impl Drop for NetRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}
