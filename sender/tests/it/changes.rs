//! Files that change under the sender while it runs again and again: a
//! writer that replaces files by renaming new ones over them (same size,
//! same mtime), and logrotate's copytruncate. What is set aside must be
//! exactly what the receiver stored, and no content may be lost.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crate::harness::*;

/// Sender runs in each test, and the time they may take in all.
const RUNS: usize = 20;
const TIME: Duration = Duration::from_secs(20);

/// The content of every file below `root`.
fn contents(root: &Path) -> BTreeSet<Vec<u8>> {
    files(root).iter().map(|name| std::fs::read(root.join(name)).expect("read")).collect()
}

/// Every file in the sent folder has its exact bytes in the store. (Not
/// necessarily under the same name: the sent folder and the store each give
/// a taken name's next content the first free conflict name, and which
/// content came first can differ between them.)
fn assert_sent_is_stored(h: &Harness) -> usize {
    let stored = contents(&h.stored());
    let sent = files(&h.sent());
    for name in &sent {
        let bytes = std::fs::read(h.sent().join(name)).expect("read sent");
        assert!(stored.contains(&bytes), "{name} was set aside, but the receiver has no file with its bytes");
    }
    sent.len()
}

/// Runs the sender until `RUNS` runs or `TIME` have passed, while `writer`
/// runs on its own thread until the runs are over; returns the number of runs.
fn race(h: &Harness, writer: impl FnOnce(&AtomicBool) + Send) -> usize {
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let writing = scope.spawn(|| writer(&stop));
        let started = Instant::now();
        let mut runs = 0;
        while runs < RUNS && started.elapsed() < TIME {
            let run = h.send(&["--retries", "0"]);
            // 1: a name whose three stored versions are all taken is refused (409).
            assert!(matches!(run.code, Some(0 | 1)), "{run:?}");
            runs += 1;
        }
        stop.store(true, Ordering::Relaxed);
        writing.join().expect("writer");
        runs
    })
}

#[test]
fn a_writer_renaming_same_size_same_mtime_files_over_the_logs_never_gets_new_content_set_aside() {
    let h = Harness::start();
    let (logs, temp) = (h.logs(), h.path("status.json.tmp"));
    let mtime = SystemTime::now() - Duration::from_secs(3600);
    let replaced = AtomicU64::new(0);
    // The last content written under each name: what the writer left behind.
    let left_behind = std::sync::Mutex::new(Vec::new());
    let runs = race(&h, |stop| {
        let mut generation = 0u64;
        while !stop.load(Ordering::Relaxed) {
            // Fifty replacements per name, then the next name: each name is
            // raced while the receiver still takes new versions of it.
            let name = logs.join(format!("status-{:03}.json", generation / 50));
            let content = format!("{{\"generation\":{generation:012}}}\n");
            // Written beside the log folder (same file system), so that the
            // sender never sees the half-made file, only the renames.
            std::fs::write(&temp, &content).expect("write");
            std::fs::File::options().write(true).open(&temp).expect("open").set_modified(mtime).expect("utimens");
            std::fs::rename(&temp, &name).expect("rename over");
            generation += 1;
            if generation.is_multiple_of(50) {
                left_behind.lock().expect("lock").push(content.into_bytes());
            }
            replaced.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_micros(500));
        }
        if !generation.is_multiple_of(50) {
            let last = format!("{{\"generation\":{:012}}}\n", generation - 1);
            left_behind.lock().expect("lock").push(last.into_bytes());
        }
    });
    let set_aside = assert_sent_is_stored(&h);
    let (in_logs, stored) = (contents(&logs), contents(&h.stored()));
    let left_behind = left_behind.into_inner().expect("lock");
    for content in &left_behind {
        let text = String::from_utf8_lossy(content);
        assert!(in_logs.contains(content) || stored.contains(content), "lost: {text}");
    }
    let replaced = replaced.load(Ordering::Relaxed);
    assert!(set_aside > 0, "the race was never run: nothing was delivered");
    eprintln!(
        "FIGURE rename-over: runs={runs} replacements={replaced} set_aside={set_aside} names={} lost=0 \
         set_aside_but_not_stored=0",
        left_behind.len()
    );
}

#[test]
fn logrotate_copytruncate_while_sending_loses_no_line_and_sets_aside_only_stored_bytes() {
    let h = Harness::start();
    let (logs, copying, rotations) = (h.logs(), h.path("app.log.copying"), AtomicU64::new(0));
    let written = AtomicU64::new(0);
    let runs = race(&h, |stop| {
        let live = logs.join("app.log");
        let mut line = 0u64;
        while !stop.load(Ordering::Relaxed) {
            for _ in 0..20 {
                let mut file = std::fs::File::options().create(true).append(true).open(&live).expect("open");
                std::io::Write::write_all(&mut file, format!("line {line:08}\n").as_bytes()).expect("append");
                line += 1;
                std::thread::sleep(Duration::from_micros(500));
            }
            // copytruncate, with the writer paused so that logrotate's own
            // window (lines between copy and truncate) loses nothing here.
            // The copy is made beside the log folder and renamed in: a copy
            // still being written is what --min-age waits out, and these
            // runs use 0.
            let n = rotations.fetch_add(1, Ordering::Relaxed);
            std::fs::copy(&live, &copying).expect("copy");
            std::fs::rename(&copying, logs.join(format!("app.log.{n}"))).expect("rename");
            std::fs::File::options().write(true).open(&live).expect("open").set_len(0).expect("truncate");
        }
        written.store(line, Ordering::Relaxed);
    });
    let set_aside = assert_sent_is_stored(&h);
    // After the writer stopped, one more run takes everything that is left.
    let last = h.send(&["--retries", "0"]);
    assert!(matches!(last.code, Some(0 | 1)), "{last:?}");
    assert_sent_is_stored(&h);
    let mut seen = BTreeSet::new();
    for content in contents(&h.stored()).iter().chain(&contents(&logs)) {
        seen.extend(String::from_utf8_lossy(content).lines().filter(|l| l.starts_with("line ")).map(str::to_owned));
    }
    let written = written.load(Ordering::Relaxed);
    for line in 0..written {
        assert!(seen.contains(&format!("line {line:08}")), "line {line} of {written} was lost");
    }
    eprintln!(
        "FIGURE copytruncate: runs={runs} rotations={} lines={written} set_aside={set_aside} lost=0",
        rotations.load(Ordering::Relaxed)
    );
}

/// A run killed after taking a delivered file off its name leaves it under
/// its hidden name; the next run sends it under the name it was taken from,
/// so the receiver keeps no second copy, and sets it aside there. A taken
/// file the receiver has not seen goes under its own name too.
#[test]
fn a_file_left_under_its_taken_name_is_sent_under_its_own_and_stored_once() {
    let h = Harness::start();
    h.log("day/temp.csv", b"t,v\n1,2\n");
    assert_eq!(h.send(&[]).code, Some(0));
    assert_eq!(files(&h.sent()), ["day/temp.csv"]);
    // As a kill between taking and moving leaves them.
    h.log("day/.logferry-taking.temp.csv", b"t,v\n1,2\n");
    h.log("day/.logferry-taking.new.csv", b"t,v\n3,4\n");

    let run = h.send(&[]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.contains("1 sent") && run.stdout.contains("1 already stored"), "{run:?}");
    assert_eq!(files(&h.logs()), Vec::<String>::new(), "{run:?}");
    assert_eq!(files(&h.sent()), ["day/new.csv", "day/temp.csv"]);
    assert_eq!(
        files(&h.stored()),
        ["day/new.csv", "day/new.csv.sha256", "day/temp.csv", "day/temp.csv.sha256"],
        "no copy under a hidden name"
    );
}
