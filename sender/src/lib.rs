//! The logferry sender: delivers every file under a log folder to a
//! receiver, and moves a file aside only once the receiver has verified and
//! durably stored exactly its bytes.
//!
//! `main.rs` turns the command line into a [`Config`]; everything here works
//! from that and never sees the argument parser.

pub mod body;
pub mod client;
pub mod clock;
pub mod config;
pub mod deliver;
pub mod exit;
pub mod id_file;
pub mod opened;
pub mod pinned_ca;
pub mod prune;
pub mod report;
pub mod sent;
pub mod update;
pub mod walk;

pub use config::{Config, ConfigError};
pub use deliver::{Fatal, Outcome, run};
pub use report::Summary;
