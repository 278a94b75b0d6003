use std::io::IsTerminal;
use std::num::NonZeroU64;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use logferry_sender::config::{Compression, Options, UpdateOptions};
use logferry_sender::id_file::{DEFAULT_ID_FILE, Exposure};
use logferry_sender::{Config, exit};

/// Threads for blocking work (file reads, hashing first, setting files
/// aside), whatever `--jobs` says.
const BLOCKING_THREADS: usize = 4;

/// Sends every file under FOLDER to a logferry receiver, and moves each one
/// into the sent folder once the receiver has verified and stored it.
///
/// Exit codes: 0 all delivered (or nothing to send), 1 some files not sent
/// (they stay), 2 usage error, 3 device ID file problem, 4 folder problem,
/// 5 receiver unreachable (or not a logferry receiver), 6 authentication
/// failed, 7 TLS certificate not verified, 8 another run is already using the
/// sent folder, 9 unexpected error, 10 every file was delivered but the update
/// failed or was rolled back, 11 the receiver answered but did not serve the
/// run (busy, failing).
///
/// On a terminal it shows a progress bar and a line per file; under cron
/// only failures and one summary line.
#[derive(Debug, Parser)]
#[command(name = "sender", version, about, args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// The receiver: IP, IP:PORT, NAME, NAME:PORT, or an http(s):// URL.
    #[arg(required = true)]
    host: Option<String>,

    /// The folder of log files to send (searched recursively).
    #[arg(required = true)]
    folder: Option<PathBuf>,

    /// Receiver port, when HOST does not give one [default: 3500].
    #[arg(long, env = "LOGFERRY_PORT")]
    port: Option<u16>,

    /// File holding this device's 16-hex ID.
    #[arg(long, env = "LOGFERRY_ID_FILE", default_value = DEFAULT_ID_FILE)]
    id_file: PathBuf,

    /// Where delivered files are moved [default: sent_files beside FOLDER].
    #[arg(long, env = "LOGFERRY_SENT_DIR")]
    sent_dir: Option<PathBuf>,

    /// PEM file of the CA that signed the receiver's HTTPS certificate; only
    /// this CA is then trusted.
    #[arg(long, env = "LOGFERRY_CA_CERT")]
    ca_cert: Option<PathBuf>,

    /// Accept an ID file that other users can read (normally refused).
    #[arg(long, env = "LOGFERRY_ALLOW_READABLE_ID_FILE")]
    allow_readable_id_file: bool,

    /// Further attempts after a transient failure (no connection, timeout,
    /// 408, 429, 5xx), with exponential backoff and jitter.
    #[arg(long, env = "LOGFERRY_RETRIES", default_value_t = 4)]
    retries: u32,

    /// Seconds since a file's last change before it counts as finished; newer
    /// files are still being written and wait for a later run. A file changed
    /// in this device clock's future (the clock was set back since) counts as
    /// finished if it is unchanged this long after the run walked the folder.
    #[arg(long, env = "LOGFERRY_MIN_AGE", default_value_t = 60)]
    min_age: u64,

    /// Delete files moved into the sent folder longer ago than this (`7d`,
    /// `12h`, `90m`), and the folders this empties; `0`: delete each file
    /// right after its verified delivery instead of moving it [default: keep
    /// forever].
    #[arg(long, env = "LOGFERRY_KEEP_SENT", value_parser = humantime::parse_duration)]
    keep_sent: Option<Duration>,

    /// Uploads in flight at once; they hide each other's network and fsync
    /// waits (the default is the fastest in scripts/bench.sh; the receiver
    /// allows 16 per device by default).
    #[arg(long, env = "LOGFERRY_JOBS", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=64))]
    jobs: u16,

    /// Compress files on the wire with zstd: auto (when the receiver decodes
    /// it and the file's first 128 KiB shrink by more than 10%), zstd (every
    /// file the receiver can take so), none. The receiver stores the
    /// original bytes either way.
    #[arg(long, env = "LOGFERRY_COMPRESS", value_enum, default_value_t = CompressArg::Auto)]
    compress: CompressArg,

    /// Most bytes per second to send, over all uploads at once (512KiB, 2MiB,
    /// 1MB): for metered links and shared uplinks [default: no limit].
    #[arg(long, env = "LOGFERRY_BWLIMIT", value_name = "RATE", value_parser = parse_rate)]
    bwlimit: Option<NonZeroU64>,

    /// Print nothing when every file was delivered (cron mails any output);
    /// failures and their summary are still printed.
    #[arg(long, short, env = "LOGFERRY_QUIET", conflicts_with = "json")]
    quiet: bool,

    /// Print the run's summary as one JSON object on stdout.
    #[arg(long, env = "LOGFERRY_JSON")]
    json: bool,

    /// After the uploads, fetch the release the receiver publishes for this
    /// device into this folder: DIR/current links to the release in use.
    #[arg(long, env = "LOGFERRY_UPDATE_DIR", value_name = "DIR")]
    update_dir: Option<PathBuf>,

    /// Shell command run after each switch to a new release (and after a
    /// switch back), e.g. to restart the service that uses it; failing or
    /// running past --update-timeout rolls the update back.
    #[arg(long, env = "LOGFERRY_ON_UPDATE", value_name = "CMD", requires = "update_dir")]
    on_update: Option<String>,

    /// How long --on-update may run (`30s`, `5m`) before it is killed and
    /// the update rolled back.
    #[arg(long, env = "LOGFERRY_UPDATE_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    update_timeout: Duration,

    /// List what would be sent, without contacting the receiver, moving or creating anything.
    #[arg(long, short = 'n')]
    dry_run: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CompressArg {
    Auto,
    Zstd,
    None,
}

impl From<CompressArg> for Compression {
    fn from(arg: CompressArg) -> Self {
        match arg {
            CompressArg::Auto => Self::Auto,
            CompressArg::Zstd => Self::Zstd,
            CompressArg::None => Self::Off,
        }
    }
}

fn parse_rate(text: &str) -> Result<NonZeroU64, String> {
    logferry_common::parse_byte_size(text)
        .and_then(|rate| NonZeroU64::new(rate).ok_or_else(|| "must be more than 0".to_owned()))
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff).
    Man,
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
    let (host, folder) = match (cli.command, cli.host, cli.folder) {
        (Some(Command::Completions { shell }), ..) => {
            clap_complete::generate(shell, &mut Cli::command(), "sender", &mut std::io::stdout());
            return Ok(exit::SUCCESS);
        }
        (Some(Command::Man), ..) => {
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            return Ok(exit::SUCCESS);
        }
        (None, Some(host), Some(folder)) => (host, folder),
        // clap requires both when there is no subcommand.
        (None, ..) => return Ok(exit::USAGE),
    };
    let options = Options {
        host,
        port: cli.port,
        folder,
        id_file: cli.id_file,
        sent_dir: cli.sent_dir,
        ca_cert: cli.ca_cert,
        id_exposure: if cli.allow_readable_id_file { Exposure::AllowReadable } else { Exposure::OwnerOnly },
        retries: cli.retries,
        min_age: Duration::from_secs(cli.min_age),
        keep_sent: cli.keep_sent,
        jobs: cli.jobs.into(),
        compression: cli.compress.into(),
        bwlimit: cli.bwlimit,
        verbose: std::io::stderr().is_terminal(),
        update: cli.update_dir.map(|dir| UpdateOptions { dir, on_update: cli.on_update, timeout: cli.update_timeout }),
        dry_run: cli.dry_run,
    };
    let config = match Config::new(options) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("sender: {err}");
            return Ok(err.exit_code());
        }
    };
    let outcome = if cli.dry_run {
        logferry_sender::deliver::dry_run(&config)
    } else {
        // Reads and set-asides are short: a few threads keep the disk busy,
        // and each thread that allocates costs glibc an arena of its own
        // (16 of them, one per upload in flight, took the peak RSS past its
        // budget: BENCHMARKS.md, "Memory and reads").
        let runtime = tokio::runtime::Builder::new_current_thread()
            .max_blocking_threads(BLOCKING_THREADS)
            .enable_all()
            .build()?;
        runtime.block_on(logferry_sender::run(&config))
    };
    if let Some(fatal) = &outcome.fatal {
        eprintln!("sender: {fatal}");
    }
    let code = outcome.exit_code();
    if cli.json {
        println!("{}", outcome.summary.to_json(code, outcome.fatal.as_ref().map(ToString::to_string)));
        return Ok(code);
    }
    for (file, size) in &outcome.summary.planned {
        println!("would send {file} ({})", logferry_sender::report::human_bytes(*size));
    }
    if !(cli.quiet && code == exit::SUCCESS) {
        println!("{}", outcome.summary);
    }
    Ok(code)
}
