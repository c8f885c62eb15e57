//! A real RTSP camera for tests: `tests/rtsp/camera.py` (GStreamer's RTSP server) on
//! 127.0.0.1, serving a live test picture (H.264, MJPEG) and MP4 files (H.264, H.265)
//! made with ffmpeg, whose access units are the reference for bit-exact checks.

use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use fieldlink_media::nal_units;

/// Seconds of video in the reference files.
pub const FILE_SECS: u32 = 40;
/// Frames between keyframes in the reference files (10 s at 25 fps): long, so a receiver
/// that started without the server's cached group of pictures would wait for seconds.
pub const FILE_GOP: u32 = 250;

/// The camera at `url` over RTSP/TCP, without credentials.
pub fn rtsp(url: String) -> fieldlink_sdk::camera::RtspCameraConfig {
    fieldlink_sdk::camera::RtspCameraConfig {
        url,
        username: None,
        password: None,
        transport: fieldlink_sdk::camera::RtspTransport::Tcp,
    }
}

pub struct Camera {
    child: Child,
    pub port: u16,
    args: Vec<String>,
}

impl Camera {
    /// Starts the camera with `args` (e.g. `--auth`, `--size 1280x720`) on a free port;
    /// the file mounts /h264 and /h265 are always there.
    pub fn start(args: &[&str]) -> Camera {
        Camera::start_on(super::free_port(), args)
    }

    /// [`Camera::start`] on a given port.
    pub fn start_on(port: u16, args: &[&str]) -> Camera {
        let m = media();
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        for (flag, file) in [("--h264", "h264.mp4"), ("--h265", "h265.mp4")] {
            all.push(flag.into());
            all.push(m.join(file).display().to_string());
        }
        Camera::spawn(port, all)
    }

    fn spawn(port: u16, args: Vec<String>) -> Camera {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/rtsp/camera.py");
        let mut child = Command::new("/usr/bin/python3")
            .arg(script)
            .arg("--port")
            .arg(port.to_string())
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect(
                "run tests/rtsp/camera.py (needs gstreamer1.0-rtsp, gir1.2-gst-rtsp-server-1.0)",
            );
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        match rx.recv_timeout(Duration::from_secs(15)) {
            Ok(l) if l.starts_with("READY") => {}
            other => {
                let _ = child.kill();
                panic!("RTSP camera did not start: {other:?}")
            }
        }
        Camera { child, port, args }
    }

    pub fn url(&self, mount: &str) -> String {
        format!("rtsp://127.0.0.1:{}/{mount}", self.port)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port, with the same arguments.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        // The port may linger a moment after the kill.
        while std::net::TcpListener::bind(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "port {} stays busy", self.port);
            std::thread::sleep(Duration::from_millis(100));
        }
        *self = Camera::spawn(self.port, self.args.clone());
    }
}

impl Drop for Camera {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The directory with h264.mp4 and h265.mp4, made with ffmpeg by the first test that
/// needs them and kept for later runs (the name says what they hold).
pub fn media() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let done =
            std::env::temp_dir().join(format!("fieldlink-rtsp-media-{FILE_SECS}s-gop{FILE_GOP}"));
        if done.join("h265.mp4").is_file() {
            return done;
        }
        let dir = std::env::temp_dir().join(format!("fieldlink-rtsp-media-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let gop = FILE_GOP.to_string();
        let secs = FILE_SECS.to_string();
        let x265 = format!("keyint={gop}:min-keyint={gop}:bframes=0:log-level=error");
        let jobs: [(&str, Vec<&str>); 2] = [
            (
                "h264.mp4",
                vec![
                    "-c:v",
                    "libx264",
                    "-preset",
                    "ultrafast",
                    "-g",
                    &gop,
                    "-bf",
                    "0",
                ],
            ),
            (
                "h265.mp4",
                vec![
                    "-c:v",
                    "libx265",
                    "-preset",
                    "ultrafast",
                    "-x265-params",
                    &x265,
                    "-tag:v",
                    "hvc1",
                ],
            ),
        ];
        for (name, codec) in jobs {
            let st = Command::new("ffmpeg")
                .args([
                    "-v",
                    "error",
                    "-y",
                    "-f",
                    "lavfi",
                    "-i",
                    "testsrc2=size=640x360:rate=25",
                    "-t",
                    &secs,
                ])
                .args(&codec)
                .args(["-pix_fmt", "yuv420p"])
                .arg(dir.join(name))
                .status()
                .expect("ffmpeg");
            assert!(st.success(), "ffmpeg could not make {name}");
        }
        // Another test binary may have finished first: then its copy is used.
        if std::fs::rename(&dir, &done).is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        done
    })
}

/// Digest of each VCL NAL unit (the coded picture data) of an Annex-B access unit.
pub fn vcl_digests(au: &[u8], h265: bool) -> Vec<u64> {
    nal_units(au)
        .into_iter()
        .filter(|n| {
            let Some(b) = n.first() else { return false };
            if h265 {
                (b >> 1) & 0x3f < 32
            } else {
                (1..=5).contains(&(b & 0x1f))
            }
        })
        .map(|n| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            n.hash(&mut h);
            h.finish()
        })
        .collect()
}

/// An Annex-B elementary stream copy of the reference file (ffmpeg's, made once, kept
/// beside it): `.h265` or `.h264`.
pub fn annexb(h265: bool) -> PathBuf {
    let (file, bsf, fmt, name) = if h265 {
        ("h265.mp4", "hevc_mp4toannexb", "hevc", "annexb.h265")
    } else {
        ("h264.mp4", "h264_mp4toannexb", "h264", "annexb.h264")
    };
    let path = media().join(name);
    if path.is_file() {
        return path;
    }
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(media().join(file))
        .args(["-c", "copy", "-bsf:v", bsf, "-f", fmt, "-"])
        .output()
        .expect("ffmpeg");
    assert!(out.status.success());
    // Written whole under another name first: another test may be reading it.
    let tmp = media().join(format!("{name}.{}", std::process::id()));
    std::fs::write(&tmp, &out.stdout).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path
}

/// The VCL NAL digests of a reference file, in order (ffmpeg's Annex-B copy of it).
pub fn reference(h265: bool) -> Vec<u64> {
    vcl_digests(&std::fs::read(annexb(h265)).unwrap(), h265)
}

/// True if `got` occurs in `reference` as one contiguous run.
pub fn contiguous_in(got: &[u64], reference: &[u64]) -> bool {
    !got.is_empty() && reference.windows(got.len()).any(|w| w == got)
}
