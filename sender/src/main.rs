use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use logferry_sender::id_file::DEFAULT_ID_FILE;
use logferry_sender::{Config, exit};

/// Sends every file under FOLDER to a logferry receiver, and moves each one
/// into the sent folder once the receiver has verified and stored it.
///
/// Exit codes: 0 all delivered (or nothing to send), 1 some files not sent
/// (they stay), 2 usage error, 3 device ID file problem, 4 folder problem,
/// 5 receiver unreachable, 6 authentication failed, 9 unexpected error.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// The receiver: IP, IP:PORT, NAME, NAME:PORT, or an http(s):// URL.
    host: String,

    /// The folder of log files to send (searched recursively).
    folder: PathBuf,

    /// Receiver port, when HOST does not give one [default: 3500].
    #[arg(long, env = "LOGFERRY_PORT")]
    port: Option<u16>,

    /// File holding this device's 16-hex ID.
    #[arg(long, env = "LOGFERRY_ID_FILE", default_value = DEFAULT_ID_FILE)]
    id_file: PathBuf,

    /// Where delivered files are moved [default: sent_files beside FOLDER].
    #[arg(long, env = "LOGFERRY_SENT_DIR")]
    sent_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("sender: error: {err:#}");
            ExitCode::from(exit::INTERNAL)
        }
    }
}

fn run() -> anyhow::Result<u8> {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return Ok(if err.use_stderr() { exit::USAGE } else { exit::SUCCESS });
        }
    };
    let verbose = std::io::stderr().is_terminal();
    let config = match Config::new(&cli.host, cli.port, &cli.folder, cli.id_file, cli.sent_dir, verbose) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("sender: {err}");
            return Ok(err.exit_code());
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let outcome = runtime.block_on(logferry_sender::run(&config));
    if let Some(fatal) = &outcome.fatal {
        eprintln!("sender: {fatal}");
    }
    println!("{}", outcome.summary);
    Ok(outcome.exit_code())
}
