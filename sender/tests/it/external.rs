//! The real `receiver` binary in its own process, so that tests can kill it
//! (SIGKILL, SIGTERM) and measure it, as faults in the field do.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

/// The receiver binary that `cargo test --workspace` (scripts/test.sh)
/// builds beside the sender's.
pub fn receiver_binary() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_sender")).with_file_name("receiver");
    assert!(
        path.is_file(),
        "{} is missing: run the tests with scripts/test.sh (cargo test --workspace)",
        path.display()
    );
    path
}

#[derive(Debug)]
pub struct ExternalReceiver {
    child: Child,
    pub address: String,
    log: Arc<Mutex<String>>,
}

impl ExternalReceiver {
    /// Starts `receiver --bind 127.0.0.1 --port 0 <extra>` in `dir` (which
    /// holds ids.txt; the store is `dir/received_files`), and waits until it
    /// listens.
    pub fn start(dir: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(receiver_binary())
            .args(["--bind", "127.0.0.1", "--port", "0", "--min-free-space", "0"])
            .args(extra)
            .current_dir(dir)
            .env("LOGFERRY_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("receiver starts");
        let log = Arc::new(Mutex::new(String::new()));
        let (address_tx, address_rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().expect("stderr");
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(address) = line.split("address=").nth(1) {
                    let _ = address_tx.send(address.trim().to_owned());
                }
                sink.lock().expect("log").push_str(&(line + "\n"));
            }
        });
        match address_rx.recv_timeout(std::time::Duration::from_secs(30)) {
            Ok(address) => Self { child, address, log },
            Err(_) => {
                let _ = child.kill();
                panic!("receiver did not start: {:?}\n{}", child.wait(), log.lock().expect("log"));
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no chance to finish anything.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM: the receiver stops accepting and finishes what is in flight.
    pub fn terminate(mut self) -> ExitStatus {
        let sent = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status().expect("kill runs");
        assert!(sent.success());
        self.child.wait().expect("receiver exits")
    }

    /// Peak resident memory so far, in KiB (VmHWM).
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    pub fn log(&self) -> String {
        self.log.lock().expect("log").clone()
    }
}

impl Drop for ExternalReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
