//! `fieldlink`: one binary for the server, field and remote devices, and tools.

mod audio_files;
mod demo;
mod device_io;
mod field;
mod gb_device;
mod remote;
mod server;
mod token;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "fieldlink",
    version,
    about = "fieldlink: real-time remote operation platform"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server with embedded defaults, a demo project and a demo field device.
    Demo(demo::Args),
    /// Run the server (signalling, WebRTC, admin API, store).
    Server(server::Args),
    /// Run a field device from a config.json: prints control data as JSON lines, sends lines read from stdin.
    Field(field::Args),
    /// Act as a remote device (operator console) from the command line.
    Remote(remote::Args),
    /// Compute key-derived device passwords and session authorization codes (SPEC §8).
    Token(token::Args),
    /// A simulated GB28181 camera/NVR: registers, keeps alive, answers queries and sends
    /// PS over RTP from a test pattern per channel.
    GbDevice(gb_device::Args),
}

/// Logs to stderr: `FIELDLINK_LOG` is the filter, `FIELDLINK_LOG_FORMAT=json` gives one
/// JSON object per line.
fn init_logs() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("FIELDLINK_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,str0m=warn,sctp_proto=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("FIELDLINK_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Command::Token(a) = cli.cmd {
        return token::run(a);
    }
    init_logs();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let r = rt.block_on(async move {
        match cli.cmd {
            Command::Demo(a) => demo::run(a).await,
            Command::Server(a) => server::run(a).await,
            Command::Field(a) => field::run(a).await,
            Command::Remote(a) => remote::run(a).await,
            Command::GbDevice(a) => gb_device::run(a).await,
            Command::Token(_) => Ok(()),
        }
    });
    // A blocking stdin read never ends by itself: do not wait for it (or any task) here.
    rt.shutdown_background();
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
