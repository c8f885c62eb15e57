//! `fieldlink token`: SPEC §8 key-derived credentials, printed alone on stdout.

use clap::{Args as ClapArgs, Subcommand};
use fieldlink_auth::{device_password, session_code, validate_project_key};
use fieldlink_proto::DeviceId;

#[derive(ClapArgs)]
pub struct Args {
    #[command(subcommand)]
    kind: Kind,
}

#[derive(Subcommand)]
enum Kind {
    /// Password of a device derived from the project key.
    DevicePassword {
        /// Project shared key (32 lowercase letters and digits).
        #[arg(long)]
        key: String,
        /// Full device id, project_id/device_id.
        #[arg(long)]
        device_id: DeviceId,
        /// Expiry as UNIX time / 60 (minutes).
        #[arg(long)]
        expire: u64,
    },
    /// Session authorization code letting a remote device watch one field device.
    SessionCode {
        #[arg(long)]
        key: String,
        #[arg(long)]
        remote_id: DeviceId,
        #[arg(long)]
        field_id: DeviceId,
        /// Expiry as UNIX time / 60 (minutes).
        #[arg(long)]
        expire: u64,
    },
}

pub fn run(a: Args) -> std::process::ExitCode {
    let key = match &a.kind {
        Kind::DevicePassword { key, .. } | Kind::SessionCode { key, .. } => key,
    };
    if let Err(e) = validate_project_key(key) {
        eprintln!("error: --key: {e}");
        return std::process::ExitCode::from(2);
    }
    let out = match &a.kind {
        Kind::DevicePassword {
            key,
            device_id,
            expire,
        } => device_password(key, &device_id.to_string(), *expire),
        Kind::SessionCode {
            key,
            remote_id,
            field_id,
            expire,
        } => session_code(key, &remote_id.to_string(), &field_id.to_string(), *expire),
    };
    println!("{out}");
    std::process::ExitCode::SUCCESS
}
