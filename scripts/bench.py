"""The logferry benchmark (run it through scripts/bench.sh).

Each case is measured end to end on loopback with release builds, set
against a floor measured in the same run on the same disk, and reported as
the median of several runs. Runs of different cases and their floors are
interleaved round by round, so that a noisy neighbour on the machine slows
ours and the floor alike. Test data is made once and moved back into place
after each run. Writes the table to BENCHMARKS.md.
"""

import hashlib
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
RUNS = int(os.environ.get("RUNS", "3"))
SMALL_FILES = int(os.environ.get("SMALL_FILES", "10000"))
LARGE_MIB = int(os.environ.get("LARGE_MIB", "1024"))
MIXED_FILES = int(os.environ.get("MIXED_FILES", "1000"))
SENDERS = int(os.environ.get("SENDERS", "50"))
PER_SENDER = int(os.environ.get("PER_SENDER", "200"))
JOBS_SWEEP = [int(j) for j in os.environ.get("JOBS_SWEEP", "1 2 4 8 16").split()]
BENCH_DIR = os.environ.get("BENCH_DIR", "/var/tmp")
# Each sender run is killed after this long: every loop here is bounded.
RUN_TIMEOUT = 300
SENT = "sent_files"
LOCK_FILE = ".logferry-sender.lock"


def log(message):
    print(message, file=sys.stderr, flush=True)


def default_jobs():
    """The sender's built-in --jobs default, as its --help states it."""
    help_text = subprocess.run([os.path.join(BIN, "sender"), "--help"], capture_output=True, text=True).stdout
    match = re.search(r"--jobs <JOBS>.*?\[default: (\d+)\]", help_text, re.S)
    return int(match.group(1)) if match else None


class Receiver:
    """The release receiver on a free loopback port, in a fresh folder, with
    upload limits raised so that they never decide a figure."""

    def __init__(self, work, ids_file):
        self.dir = tempfile.mkdtemp(dir=work, prefix="receiver-")
        shutil.copy(ids_file, os.path.join(self.dir, "ids.txt"))
        self.process = subprocess.Popen(
            [os.path.join(BIN, "receiver"), "--bind", "127.0.0.1", "--port", "0",
             "--max-uploads", "1024", "--max-uploads-per-device", "64"],
            cwd=self.dir, stderr=subprocess.PIPE, text=True)
        for line in self.process.stderr:
            match = re.search(r"address=(\S+)", line)
            if match:
                self.address = match.group(1)
                break
        else:
            raise RuntimeError("receiver did not start")
        # Keep draining its log so it never blocks on a full pipe.
        self.drain = subprocess.Popen(["cat"], stdin=self.process.stderr, stdout=subprocess.DEVNULL)

    def peak_rss_kib(self):
        with open(f"/proc/{self.process.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        return 0

    def stop(self):
        """Stops it; its store stays until the end (see `main`)."""
        self.process.terminate()
        self.process.wait()
        self.drain.wait()


class Device:
    """A device folder: `logs/` to send, its ID file; the sender moves what it
    delivered to `sent_files/`, and `reset` moves it all back."""

    def __init__(self, work, ids_file, files, seed):
        self.dir = tempfile.mkdtemp(dir=work, prefix="device-")
        self.logs = os.path.join(self.dir, "logs")
        self.files = files
        rng = random.Random(seed)
        for rel, size in files.items():
            path = os.path.join(self.logs, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                remaining = size
                while remaining:
                    chunk = min(remaining, 1 << 20)
                    f.write(rng.randbytes(chunk))
                    remaining -= chunk
        made = subprocess.run([os.path.join(BIN, "receiver"), "--ids", ids_file, "add-device"],
                              check=True, capture_output=True, text=True)
        self.id_file = os.path.join(self.dir, "device-id")
        with open(self.id_file, "w") as f:
            f.write(made.stdout)
        os.chmod(self.id_file, 0o600)

    def start(self, address, jobs=None):
        """Starts the sender under `/usr/bin/time`, which reports its peak RSS.
        (The rusage of a child started from here would not do: it counts the
        pages of this Python process that the child had before its exec.)"""
        self.rss_file = os.path.join(self.dir, "peak-rss")
        args = ["/usr/bin/time", "-f", "%M", "-o", self.rss_file,
                os.path.join(BIN, "sender"), address, self.logs, "--id-file", self.id_file, "--min-age", "0"]
        if jobs is not None:
            args += ["--jobs", str(jobs)]
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        process.device = self
        return process

    def reset(self):
        """Checks that everything was delivered and puts it back for the next run."""
        sent = os.path.join(self.dir, SENT)
        left = sum(len(names) for _, _, names in os.walk(self.logs))
        assert left == 0, f"{left} files were not delivered"
        moved = sum(len(names) for _, _, names in os.walk(sent)) - 1
        assert moved == len(self.files), f"{moved} of {len(self.files)} files are in {SENT}"
        os.remove(os.path.join(sent, LOCK_FILE))
        shutil.rmtree(self.logs)
        os.rename(sent, self.logs)


def finish(process):
    """Waits for a sender (bounded); returns its peak RSS in KiB; fails on errors."""
    try:
        _, err = process.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        raise RuntimeError(f"a sender run took more than {RUN_TIMEOUT} s")
    if process.returncode != 0:
        raise RuntimeError(f"sender exited {process.returncode}: {err}")
    with open(process.device.rss_file) as f:
        return int(f.read().split()[-1])


def timed_send(work, ids_file, devices, jobs=None):
    """One end-to-end run of every device's sender at once: returns
    (seconds until the last one finished, peak sender KiB, peak receiver KiB)."""
    receiver = Receiver(work, ids_file)
    try:
        os.sync()
        start = time.perf_counter()
        processes = [device.start(receiver.address, jobs) for device in devices]
        sender_rss = max(finish(p) for p in processes)
        seconds = time.perf_counter() - start
        receiver_rss = receiver.peak_rss_kib()
    finally:
        receiver.stop()
    for device in devices:
        device.reset()
    return seconds, sender_rss, receiver_rss


def durable_copy_floor(work, device):
    """Sequential: read, hash, write a copy, fsync it, rename it into place,
    fsync the folder; per file, from the same source files as ours."""
    dst = tempfile.mkdtemp(dir=work, prefix="floor-")
    os.sync()
    start = time.perf_counter()
    for rel in device.files:
        with open(os.path.join(device.logs, rel), "rb") as f:
            data = f.read()
        hashlib.sha256(data).hexdigest()
        folder = os.path.dirname(os.path.join(dst, rel))
        os.makedirs(folder, exist_ok=True)
        temp = os.path.join(folder, ".tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        os.rename(temp, os.path.join(dst, rel))
        dfd = os.open(folder, os.O_RDONLY)
        os.fsync(dfd)
        os.close(dfd)
    return time.perf_counter() - start


def cp_sync_floor(work, device):
    """`cp` of the same large file, then `sync`."""
    (rel,) = device.files
    dst = os.path.join(work, "floor-copy.bin")
    os.sync()
    start = time.perf_counter()
    subprocess.run(["cp", os.path.join(device.logs, rel), dst], check=True)
    subprocess.run(["sync"], check=True)
    seconds = time.perf_counter() - start
    os.remove(dst)
    return seconds


def small_files(count, prefix=""):
    """4 KiB files, 100 to a folder, two levels deep."""
    return {f"{prefix}a{i // 1000:02}/b{i // 100 % 10}/f{i % 100:02}.log": 4096 for i in range(count)}


def mixed_files(count):
    rng = random.Random(7)
    # Log-uniform from 1 KiB to 8 MiB: many small files, a few large ones.
    return {f"m{i // 50:02}/f{i:04}.bin": int(1024 * 2 ** rng.uniform(0, 13)) for i in range(count)}


def cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


def main():
    started = time.perf_counter()
    # Nothing is deleted until the end: on ext4 a file created soon after
    # many were deleted costs measurably more (the allocator steps over
    # recently freed inodes), which would slow whichever case came next.
    work = tempfile.mkdtemp(prefix="logferry-bench-", dir=BENCH_DIR)
    ids_file = os.path.join(work, "ids.txt")
    open(ids_file, "w").close()
    jobs_default = default_jobs()
    try:
        log("making the test data")
        small = Device(work, ids_file, small_files(SMALL_FILES), 1)
        large = Device(work, ids_file, {"large.bin": LARGE_MIB << 20}, 2)
        mixed = Device(work, ids_file, mixed_files(MIXED_FILES), 3)
        fleet = [Device(work, ids_file, small_files(PER_SENDER, f"s{n:02}-"), 10 + n) for n in range(SENDERS)]
        sweep = {j: [] for j in JOBS_SWEEP}
        small_runs, small_floor, large_runs, large_floor, mixed_runs, fleet_runs = [], [], [], [], [], []
        for round_ in range(1, RUNS + 1):
            log(f"round {round_} of {RUNS}")
            for jobs in JOBS_SWEEP:
                if jobs == jobs_default:
                    continue
                sweep[jobs].append(timed_send(work, ids_file, [small], jobs))
                log(f"  case 1, --jobs {jobs}: {SMALL_FILES / sweep[jobs][-1][0]:.0f} files/s")
            small_runs.append(timed_send(work, ids_file, [small]))
            small_floor.append(durable_copy_floor(work, small))
            log(f"  case 1, default --jobs: {SMALL_FILES / small_runs[-1][0]:.0f} files/s, "
                f"floor {SMALL_FILES / small_floor[-1]:.0f} files/s")
            large_runs.append(timed_send(work, ids_file, [large]))
            large_floor.append(cp_sync_floor(work, large))
            log(f"  case 2: {large_runs[-1][0]:.2f} s, floor {large_floor[-1]:.2f} s")
            mixed_runs.append(timed_send(work, ids_file, [mixed]))
            log(f"  case 3: {mixed_runs[-1][0]:.2f} s")
            fleet_runs.append(timed_send(work, ids_file, fleet))
            log(f"  case 4: {fleet_runs[-1][0]:.2f} s")
        if jobs_default in sweep:
            sweep[jobs_default] = small_runs
    finally:
        shutil.rmtree(work, ignore_errors=True)
    elapsed = time.perf_counter() - started

    median = statistics.median
    large_mb = (LARGE_MIB << 20) / 1e6
    mixed_mb = sum(mixed.files.values()) / 1e6
    fleet_files = SENDERS * PER_SENDER
    ours_small = SMALL_FILES / median(r[0] for r in small_runs)
    floor_small = SMALL_FILES / median(small_floor)
    ours_large = large_mb / median(r[0] for r in large_runs)
    floor_large = large_mb / median(large_floor)
    mixed_seconds = median(r[0] for r in mixed_runs)
    fleet_rate = fleet_files / median(r[0] for r in fleet_runs)
    peak = lambda runs, side: max(r[side] for r in runs) / 1024  # noqa: E731
    sender_peaks = [peak(small_runs, 1), peak(large_runs, 1), peak(mixed_runs, 1), peak(fleet_runs, 1)]
    binary_mib = os.path.getsize(os.path.join(BIN, "sender")) / (1 << 20)
    sweep_rates = {j: SMALL_FILES / median(r[0] for r in runs) for j, runs in sweep.items() if runs}
    fastest = max(sweep_rates, key=sweep_rates.get)

    def at_least(value, goal, unit):
        gap = f"{goal - value:.2f}{unit}" if unit == "x" else f"{goal - value:.1f} {unit}"
        return f"≥ {goal}{unit}: " + ("met" if value >= goal else f"**missed** by {gap}")

    def at_most(value, goal, unit):
        return f"≤ {goal} {unit}: " + ("met" if value <= goal else f"**missed** by {value - goal:.1f} {unit}")

    rows = [
        (f"1. {SMALL_FILES:,} files of 4 KiB in nested folders, one sender (--jobs {jobs_default})",
         f"{ours_small:.0f} files/s", f"sequential durable copy {floor_small:.0f} files/s",
         f"{ours_small / floor_small:.2f}x", at_least(round(ours_small / floor_small, 2), 1.0, "x")),
        (f"2. one file of {LARGE_MIB} MiB", f"{ours_large:.0f} MB/s", f"cp + sync {floor_large:.0f} MB/s",
         f"{ours_large / floor_large:.2f}x", at_least(round(ours_large / floor_large, 2), 0.85, "x")),
        (f"3. {MIXED_FILES:,} files of 1 KiB–8 MiB ({mixed_mb:.0f} MB)",
         f"{mixed_seconds:.1f} s: {mixed_mb / mixed_seconds:.0f} MB/s, {MIXED_FILES / mixed_seconds:.0f} files/s",
         "", "", ""),
        (f"4. {SENDERS} senders at once × {PER_SENDER} files of 4 KiB", f"{fleet_rate:.0f} files/s",
         f"(case 1's floor: {floor_small:.0f} files/s)", f"{fleet_rate / floor_small:.2f}x", ""),
        ("5. receiver peak RSS during case 2", f"{peak(large_runs, 2):.1f} MiB", "", "",
         at_most(peak(large_runs, 2), 32, "MiB")),
        ("5. receiver peak RSS during case 4", f"{peak(fleet_runs, 2):.1f} MiB", "", "",
         at_most(peak(fleet_runs, 2), 128, "MiB")),
        ("5. sender peak RSS during cases 1 / 2 / 3 / 4", " / ".join(f"{p:.1f}" for p in sender_peaks) + " MiB",
         "", "", at_most(max(sender_peaks), 16, "MiB")),
        ("release `sender` binary", f"{binary_mib:.1f} MiB", "", "", ""),
    ]
    def listed(values, form):
        return ", ".join(form.format(v) for v in values)

    run_rows = [
        f"- case 1: ours {listed([SMALL_FILES / r[0] for r in small_runs], '{:.0f}')} files/s; "
        f"floor {listed([SMALL_FILES / s for s in small_floor], '{:.0f}')} files/s",
        f"- case 2: ours {listed([large_mb / r[0] for r in large_runs], '{:.0f}')} MB/s; "
        f"floor {listed([large_mb / s for s in large_floor], '{:.0f}')} MB/s",
        f"- case 3: {listed([r[0] for r in mixed_runs], '{:.2f}')} s",
        f"- case 4: {listed([fleet_files / r[0] for r in fleet_runs], '{:.0f}')} files/s",
    ]
    sweep_rows = [f"| {j} | {rate:.0f} | {rate / floor_small:.2f}x |" for j, rate in sweep_rates.items()]
    lines = [
        "# Benchmarks",
        "",
        "Produced by `scripts/bench.sh`; this table is rewritten by each run, the notes below it are kept",
        "in `scripts/bench-notes.md`.",
        "",
        f"- Command: `{os.environ.get('BENCH_COMMAND', 'scripts/bench.sh')}`",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; the release build took "
        f"{int(os.environ.get('BENCH_BUILD_SECONDS', '0')) / 60:.1f} min (none when already built), "
        f"the benchmark {elapsed / 60:.1f} min",
        f"- Machine: {os.cpu_count()} cores, {cpu_model()}, {platform.system()} {platform.release()}",
        f"- Disk: the one under {BENCH_DIR}; loopback network; release builds; receiver upload limits raised "
        "(`--max-uploads 1024 --max-uploads-per-device 64`) so that they never decide a figure",
        f"- Each figure is the median of {RUNS} runs (peak RSS: the highest of them). Floors are measured in the",
        "  same rounds, interleaved with ours, on the same disk and from the same source files.",
        "",
        "| case | ours | floor | ratio | target |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    # Measured by scripts/bench-s3.sh just before, in the same bench.sh run.
    s3_rows = os.environ.get("BENCH_S3_ROWS", "").strip()
    lines += s3_rows.splitlines() if s3_rows else ["| S3 (Garage): skipped, Garage not installed |  |  |  |  |"]
    lines += [
        "",
        f"`--jobs` sweep over case 1 (median of {RUNS} runs each); the fastest is {fastest}, "
        f"the sender's default is {jobs_default}:",
        "",
        "| --jobs | files/s | ratio to the floor |",
        "|---|---|---|",
        *sweep_rows,
        "",
        "Every run, in the order of the rounds:",
        "",
        *run_rows,
        "",
    ]
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(ROOT, "BENCHMARKS.md"), "w") as f:
        f.write(table)
        notes = os.path.join(ROOT, "scripts", "bench-notes.md")
        if os.path.exists(notes):
            with open(notes) as n:
                f.write("\n" + n.read())


if __name__ == "__main__":
    main()
