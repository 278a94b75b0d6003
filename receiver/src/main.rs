use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use logferry_common::wire::DEFAULT_PORT;
use logferry_receiver::{Config, ids};

/// Receives log files from logferry senders and stores them, verified, under
/// <store>/<DEVICE-ID>/ next to a sha256sum-compatible checksum file.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// Address to listen on (0.0.0.0 = every IPv4 interface, :: = every interface).
    #[arg(long, env = "LOGFERRY_BIND", default_value = "0.0.0.0")]
    bind: IpAddr,

    /// TCP port to listen on.
    #[arg(long, env = "LOGFERRY_PORT", default_value_t = DEFAULT_PORT)]
    port: u16,

    /// File listing the accepted device IDs, one per line (see README).
    #[arg(long, env = "LOGFERRY_IDS", default_value = "ids.txt", global = true)]
    ids: PathBuf,

    /// Folder where received files are stored (created if missing).
    #[arg(long, env = "LOGFERRY_STORE", default_value = "received_files")]
    store: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Make a new random device ID, add it to the ids file, and print it once.
    AddDevice {
        /// A name for the device, shown in logs next to its masked ID.
        #[arg(long)]
        label: Option<String>,
    },
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(err) => {
            eprintln!("receiver: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LOGFERRY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        // Reporting a failed log write goes to stderr too, and panics when that
        // is closed: a receiver must outlive its log pipe.
        .log_internal_errors(false)
        .init();
    match cli.command {
        Some(Command::AddDevice { label }) => add_device(&cli.ids, label.as_deref()),
        None => serve(Config { listen: SocketAddr::new(cli.bind, cli.port), ids_file: cli.ids, store_dir: cli.store }),
    }
}

fn add_device(ids_file: &std::path::Path, label: Option<&str>) -> anyhow::Result<ExitCode> {
    let id = ids::add_device(ids_file, label)?;
    // The one place an ID is shown whole: the admin copies it to the device.
    println!("{}", id.reveal());
    eprintln!(
        "Added device {} to {}. Put the ID above in the device's ID file \
         (default /etc/logferry/device-id, mode 0600); it is not shown again.",
        id.masked(),
        ids_file.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn serve(config: Config) -> anyhow::Result<ExitCode> {
    let state = logferry_receiver::open(&config)?;
    let listener = TcpListener::bind(config.listen).with_context(|| format!("cannot listen on {}", config.listen))?;
    let address = listener.local_addr().map_or_else(|_| config.listen.to_string(), |a| a.to_string());
    tracing::info!(%address, "listening");
    actix_web::rt::System::new().block_on(async move { logferry_receiver::run(listener, state)?.await })?;
    Ok(ExitCode::SUCCESS)
}
