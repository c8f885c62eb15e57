//! `fieldlink-bench rtsp`: what an RTSP camera costs on the field device in each stream
//! mode (SPEC §7): CPU per 720p25 and 1080p25 stream in passthrough and in transcode,
//! and the latency each mode adds (camera frame arrival -> frame ready to leave the field
//! device). ffmpeg doing the same job on the same stream is the reference.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use fieldlink_sdk::camera::{Passthrough, RtspCameraConfig, RtspTransport};
use fieldlink_sdk::transcode::{Transcode, TranscodeConfig};
use fieldlink_sdk::VideoSource;

use crate::cpu_secs;

struct Cam(Child);

impl Drop for Cam {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_camera(script: &Path, file: &Path) -> anyhow::Result<(Cam, u16)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut child = Command::new("/usr/bin/python3")
        .arg(script)
        .args(["--port", &port.to_string(), "--h264"])
        .arg(file)
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", script.display()))?;
    let out = child.stdout.take().context("camera stdout")?;
    let cam = Cam(child);
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line)?;
    if !line.starts_with("READY") {
        bail!("the RTSP camera did not start: {line:?}");
    }
    Ok((cam, port))
}

/// One mode on one stream: (CPU share of one core, latencies in ms, frames).
fn measure(mut src: Box<dyn VideoSource>, secs: u64) -> (f64, Vec<f64>, usize) {
    let me = std::process::id();
    let tick = Duration::from_secs_f64(1.0 / src.fps());
    let run = |src: &mut Box<dyn VideoSource>, for_: Duration, lat: &mut Vec<f64>| {
        let start = Instant::now();
        let mut next = start;
        while start.elapsed() < for_ {
            if src.paced() {
                next += tick;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            if let Ok(Some(f)) = src.next_frame(false) {
                let ms = SystemTime::now()
                    .duration_since(f.capture)
                    .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
                lat.push(ms);
            }
        }
    };
    let mut warm = Vec::new();
    run(&mut src, Duration::from_secs(2), &mut warm);
    let mut lat = Vec::new();
    let (c0, t0) = (cpu_secs(me), Instant::now());
    run(&mut src, Duration::from_secs(secs), &mut lat);
    let cpu = (cpu_secs(me) - c0) / t0.elapsed().as_secs_f64();
    let n = lat.len();
    (cpu, lat, n)
}

/// CPU share of one core that ffmpeg uses for `args` on the camera for `secs`.
fn ffmpeg_cpu(url: &str, secs: u64, args: &[&str]) -> anyhow::Result<f64> {
    let mut child = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-rtsp_transport",
            "tcp",
            "-i",
            url,
            "-t",
            &secs.to_string(),
        ])
        .args(args)
        .args(["-f", "null", "-"])
        .stdin(Stdio::null())
        .spawn()
        .context("ffmpeg")?;
    let (start, mut cpu) = (Instant::now(), 0.0);
    while child.try_wait()?.is_none() {
        cpu = cpu_secs(child.id());
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(cpu / start.elapsed().as_secs_f64())
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(((v.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

pub async fn rtsp(secs: u64, script: &Path) -> anyhow::Result<()> {
    if !script.is_file() {
        bail!(
            "{} not found (run from the repository root, or give --script)",
            script.display()
        );
    }
    let dir = std::env::temp_dir().join(format!("fieldlink-bench-rtsp-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    println!("| stream | mode | fieldlink CPU (1 core = 100%) | ffmpeg CPU, same job | ratio | added latency p50 / p99 | frames |");
    println!("|---|---|---|---|---|---|---|");
    for (name, w, h, kbps) in [
        ("720p25", 1280u32, 720u32, 2500u32),
        ("1080p25", 1920, 1080, 4000),
    ] {
        eprintln!("== {name}: encoding a test video with ffmpeg");
        let file = dir.join(format!("{name}.mp4"));
        let st = Command::new("ffmpeg")
            .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
            .arg(format!("testsrc2=size={w}x{h}:rate=25"))
            .args([
                "-t",
                &(3 * secs + 30).to_string(),
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
            ])
            .args([
                "-g",
                "50",
                "-bf",
                "0",
                "-b:v",
                &format!("{kbps}k"),
                "-pix_fmt",
                "yuv420p",
            ])
            .arg(&file)
            .status()?;
        if !st.success() {
            bail!("ffmpeg could not make the {name} test video");
        }
        let (cam, port) = start_camera(script, &file)?;
        let url = format!("rtsp://127.0.0.1:{port}/h264");
        let cfg = RtspCameraConfig {
            url: url.clone(),
            username: None,
            password: None,
            transport: RtspTransport::Tcp,
        };
        let scale = format!("scale={w}:{h}");
        let bitrate = format!("{kbps}k");
        let x264 = [
            "-vf",
            &scale,
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
            "-b:v",
            &bitrate,
        ];
        for mode in ["passthrough", "transcode"] {
            eprintln!("== {name} {mode}: {secs} s");
            let src: Box<dyn VideoSource> = if mode == "passthrough" {
                Box::new(Passthrough::start(&cfg, 25.0)?)
            } else {
                let t = TranscodeConfig {
                    width: w,
                    height: h,
                    fps: 25.0,
                    kbps,
                    gop: 50,
                };
                Box::new(Transcode::start(&cfg, t)?)
            };
            let (cpu, mut lat, frames) =
                tokio::task::spawn_blocking(move || measure(src, secs)).await?;
            let peer = if mode == "passthrough" {
                ffmpeg_cpu(&url, secs, &["-c", "copy"])?
            } else {
                ffmpeg_cpu(&url, secs, &x264)?
            };
            println!(
                "| {name} | {mode} | {:.1}% | {:.1}% | {:.2} | {:.2} / {:.2} ms | {frames} |",
                cpu * 100.0,
                peer * 100.0,
                cpu / peer.max(1e-9),
                pct(&mut lat, 0.5),
                pct(&mut lat, 0.99)
            );
        }
        drop(cam);
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!("(ffmpeg's transcode is libx264 ultrafast/zerolatency; fieldlink's is openh264. Added latency: camera frame complete -> frame ready to send; transcode includes waiting for the next output tick.)");
    Ok(())
}
