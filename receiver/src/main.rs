use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use logferry_common::wire::DEFAULT_PORT;
use logferry_receiver::client_addr::ForwardedHeader;
use logferry_receiver::log_fields::QuotedFields;
use logferry_receiver::store::s3::{S3Settings, parse_store_url};
use logferry_receiver::{
    Config, DEFAULT_FLEET_REFRESH, DEFAULT_STALE_AFTER, Limits, Options, Publish, StoreLocation, TlsFiles,
    TrustedProxies, ids, limits, publish,
};

/// Receives log files from logferry senders and stores them, verified, under
/// <store>/<DEVICE-ID>/ next to a sha256sum-compatible checksum file; the
/// store is a local folder or an S3-compatible bucket.
#[derive(Debug, Parser)]
#[command(name = "receiver", version, about)]
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

    /// Where received files are stored: a folder (created if missing), or
    /// s3://BUCKET/PREFIX for an S3-compatible object store shared by any
    /// number of receivers (see README, "Scaling out").
    #[arg(long, env = "LOGFERRY_STORE", default_value = "received_files")]
    store: String,

    /// URL of the S3-compatible server (Garage, MinIO, Ceph RGW); AWS S3 when unset.
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    s3_endpoint: Option<String>,

    /// Region of the bucket (Garage's default is "garage").
    #[arg(long, env = "AWS_REGION", default_value = "us-east-1")]
    s3_region: String,

    /// Access key id for the bucket.
    #[arg(long, env = "AWS_ACCESS_KEY_ID")]
    s3_access_key_id: Option<String>,

    /// Secret key for the bucket (prefer the environment variable: arguments are visible to every local user).
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    s3_secret_access_key: Option<String>,

    /// Session token, for temporary credentials.
    #[arg(long, env = "AWS_SESSION_TOKEN", hide_env_values = true)]
    s3_session_token: Option<String>,

    /// Serve HTTPS with this PEM certificate chain (needs --tls-key).
    #[arg(long, env = "LOGFERRY_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// The PEM private key of --tls-cert.
    #[arg(long, env = "LOGFERRY_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// Largest file accepted: bytes, or with a unit (512MiB, 2GiB, 1.5GB).
    #[arg(long, env = "LOGFERRY_MAX_FILE_SIZE", default_value = "4GiB", value_parser = logferry_common::parse_byte_size)]
    max_file_size: u64,

    /// Uploads in progress at once, over all devices (more get 429 and retry).
    #[arg(long, env = "LOGFERRY_MAX_UPLOADS", default_value_t = Limits::default().max_uploads)]
    max_uploads: usize,

    /// Uploads in progress at once from one device.
    #[arg(long, env = "LOGFERRY_MAX_UPLOADS_PER_DEVICE", default_value_t = Limits::default().max_uploads_per_device)]
    max_uploads_per_device: usize,

    /// Seconds an upload waits for a free slot before it gets 429.
    #[arg(long, env = "LOGFERRY_QUEUE_WAIT", default_value_t = Limits::default().queue_wait.as_secs())]
    queue_wait: u64,

    /// Seconds a client may take to send its request headers, and then an
    /// upload's signed fields; past it, 408 and a failed authentication.
    #[arg(long, env = "LOGFERRY_HEAD_TIMEOUT", default_value_t = Limits::default().head_timeout.as_secs())]
    head_timeout: u64,

    /// Seconds a request body may stall without any byte arriving (408).
    #[arg(long, env = "LOGFERRY_IDLE_TIMEOUT", default_value_t = Limits::default().idle_timeout.as_secs())]
    idle_timeout: u64,

    /// Slowest average upload rate tolerated, in bytes per second (408).
    #[arg(long, env = "LOGFERRY_MIN_RATE", default_value_t = Limits::default().min_bytes_per_sec)]
    min_rate: u64,

    /// Free space to keep on the store's disk: bytes, or with a unit (507 below it).
    #[arg(long, env = "LOGFERRY_MIN_FREE_SPACE", default_value = "512MiB", value_parser = limits::parse_byte_size_or_zero)]
    min_free_space: u64,

    /// How long what arrived of a cut-off upload (files of 1 MiB or more) is
    /// kept for the device to continue it (1h, 24h, 3days).
    #[arg(long, env = "LOGFERRY_PARTIAL_TTL", default_value_t = Limits::default().partial_ttl.into())]
    partial_ttl: humantime::Duration,

    /// Failed authentications allowed per client address per minute (then 429).
    #[arg(long, env = "LOGFERRY_AUTH_FAILURES_PER_MINUTE", default_value_t = Limits::default().auth_failures_per_minute)]
    auth_failures_per_minute: u32,

    /// The status page marks a device stale after this long without an upload (90m, 24h, 2days).
    #[arg(long, env = "LOGFERRY_STALE_AFTER", default_value_t = DEFAULT_STALE_AFTER.into())]
    stale_after: humantime::Duration,

    /// How often the status page re-reads the store, so that receivers sharing
    /// one show every upload (5m, 1h; 0 = only at start).
    #[arg(long, env = "LOGFERRY_FLEET_REFRESH", default_value_t = DEFAULT_FLEET_REFRESH.into())]
    fleet_refresh: humantime::Duration,

    /// Your own reverse proxies (addresses or networks, comma-separated):
    /// behind them the client's address is read from the header they write
    /// (--forwarded-header) (default: none; every client is its TCP peer).
    #[arg(long, env = "LOGFERRY_TRUSTED_PROXIES", value_name = "CIDR[,CIDR…]")]
    trusted_proxies: Option<TrustedProxies>,

    /// The header your trusted proxies write the client's address into:
    /// x-forwarded-for (nginx, HAProxy, most load balancers) or forwarded
    /// (RFC 7239). The other one is ignored.
    #[arg(long, env = "LOGFERRY_FORWARDED_HEADER", default_value = "x-forwarded-for", requires = "trusted_proxies")]
    forwarded_header: ForwardedHeader,

    /// Publish releases to the devices from this folder: DIR/all/ goes to
    /// every device, DIR/<label>/ to the devices with that label, over all/
    /// (see README, "Updating the fleet").
    #[arg(long, env = "LOGFERRY_PUBLISH", value_name = "DIR", global = true)]
    publish: Option<PathBuf>,

    /// A published tree's changes are taken once nothing in it changed for
    /// this long, so a file still being copied in is never sent (2s, 1m).
    #[arg(long, env = "LOGFERRY_PUBLISH_SETTLE", default_value_t = publish::DEFAULT_SETTLE.into())]
    publish_settle: humantime::Duration,

    /// Log lines for people (human) or one JSON object per line for a log collector (json).
    #[arg(long, env = "LOGFERRY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human, global = true)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

impl Cli {
    /// The server's validated configuration; clap types stop here.
    fn config(&self) -> anyhow::Result<Config> {
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert: cert.clone(), key: key.clone() }),
            _ => None,
        };
        let options = Options {
            listen: SocketAddr::new(self.bind, self.port),
            ids_file: self.ids.clone(),
            store: self.store_location()?,
            limits: Limits {
                max_file_size: self.max_file_size,
                max_uploads: self.max_uploads,
                max_uploads_per_device: self.max_uploads_per_device,
                queue_wait: Duration::from_secs(self.queue_wait),
                head_timeout: Duration::from_secs(self.head_timeout),
                idle_timeout: Duration::from_secs(self.idle_timeout),
                min_bytes_per_sec: self.min_rate.max(1),
                auth_failures_per_minute: self.auth_failures_per_minute,
                min_free_space: self.min_free_space,
                partial_ttl: self.partial_ttl.into(),
            },
            tls,
            stale_after: self.stale_after.into(),
            fleet_refresh: Some(self.fleet_refresh.into()).filter(|every: &Duration| !every.is_zero()),
            trusted_proxies: self.trusted_proxies.clone().unwrap_or_default().reading(self.forwarded_header),
            publish: self.publish.clone().map(|dir| Publish { dir, settle: self.publish_settle.into() }),
        };
        Ok(Config::new(options)?)
    }
}

impl Cli {
    fn store_location(&self) -> anyhow::Result<StoreLocation> {
        let Some(bucket) = parse_store_url(&self.store) else {
            return Ok(StoreLocation::Disk(PathBuf::from(&self.store)));
        };
        let (bucket, prefix) = bucket.map_err(|reason| anyhow::anyhow!("--store: {reason}"))?;
        let (Some(access_key_id), Some(secret_access_key)) = (&self.s3_access_key_id, &self.s3_secret_access_key)
        else {
            anyhow::bail!(
                "an s3:// store needs credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \
                 (or --s3-access-key-id and --s3-secret-access-key)"
            );
        };
        Ok(StoreLocation::S3(S3Settings {
            bucket,
            prefix,
            endpoint: self.s3_endpoint.clone(),
            region: self.s3_region.clone(),
            access_key_id: access_key_id.clone(),
            secret_access_key: secret_access_key.clone(),
            session_token: self.s3_session_token.clone(),
        }))
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Make a new random device ID, add it to the ids file, and print it once.
    AddDevice {
        /// A name for the device, shown in logs next to its masked ID.
        #[arg(long)]
        label: Option<String>,
    },
    /// Place a file, or a folder's files, into the publish folder for the
    /// devices with this label (or "all"): each one copied in beside it,
    /// fsynced and renamed into place, so no device gets it half-written.
    Publish {
        /// The file or folder to publish.
        src: PathBuf,
        /// The label of the devices that get it, or "all".
        #[arg(long, value_name = "LABEL|all")]
        to: String,
    },
    /// Rebuild the fleet summary (what the status page shows of the store)
    /// from every stored file, as after a loss or damage; run it while no
    /// receiver serves from the store.
    Reindex,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff).
    Man,
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
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LOGFERRY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Reporting a failed log write goes to stderr too, and panics when that
        // is closed: a receiver must outlive its log pipe.
        .log_internal_errors(false);
    match cli.log_format {
        LogFormat::Human => logs.fmt_fields(QuotedFields).with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    match cli.command {
        Some(Command::AddDevice { label }) => add_device(&cli.ids, label.as_deref()),
        Some(Command::Publish { src, to }) => place(cli.publish.as_deref(), &src, &to),
        Some(Command::Completions { shell }) => {
            clap_complete::generate(shell, &mut Cli::command(), "receiver", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Man) => {
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Reindex) => reindex(cli.config()?),
        None => serve(cli.config()?),
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

fn place(dir: Option<&std::path::Path>, src: &std::path::Path, to: &str) -> anyhow::Result<ExitCode> {
    let dir = dir.context("receiver publish needs the publish folder: give --publish DIR or set LOGFERRY_PUBLISH")?;
    let (placed, skipped) = publish::place(dir, src, to)?;
    for warning in skipped {
        eprintln!("receiver: warning: {warning}");
    }
    for file in &placed {
        println!(
            "placed {} ({}, mode {:04o})",
            file.path.display(),
            logferry_common::human_bytes(file.size),
            file.mode
        );
    }
    let files = if placed.len() == 1 { "1 file" } else { &format!("{} files", placed.len()) };
    eprintln!("Placed {files} for {to}; the receiver publishes the folder once it has settled.");
    Ok(ExitCode::SUCCESS)
}

/// Counts the store afresh for the fleet summary; progress goes to the log.
fn reindex(config: Config) -> anyhow::Result<ExitCode> {
    let (files, devices) = actix_web::rt::System::new().block_on(logferry_receiver::reindex(&config))?;
    let plural = |n, one: &str| if n == 1 { format!("1 {one}") } else { format!("{n} {one}s") };
    eprintln!("Rebuilt the fleet summary: {} of {}.", plural(files as usize, "file"), plural(devices, "device"));
    Ok(ExitCode::SUCCESS)
}

/// Opens and serves on one runtime, which the store's client then keeps.
fn serve(config: Config) -> anyhow::Result<ExitCode> {
    actix_web::rt::System::new().block_on(async move {
        let ready = logferry_receiver::open(&config).await?;
        let listen = config.listen();
        let listener = TcpListener::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
        let address = listener.local_addr().map_or_else(|_| listen.to_string(), |a| a.to_string());
        let scheme = if ready.tls.is_some() { "https" } else { "http" };
        tracing::info!(scheme, %address, "listening");
        logferry_receiver::run(listener, ready.state, ready.tls)?.await?;
        Ok(ExitCode::SUCCESS)
    })
}
