"""The logferry benchmark (run it through scripts/bench.sh).

Each case is measured end to end on loopback with release builds, set
against a floor measured in the same run on the same disk, and reported as
the median of several runs. Writes the table to BENCHMARKS.md.
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


def log(message):
    print(message, file=sys.stderr, flush=True)


class Receiver:
    """The release receiver on a free loopback port, in its own folder."""

    def __init__(self, work):
        self.dir = tempfile.mkdtemp(dir=work, prefix="receiver-")
        open(os.path.join(self.dir, "ids.txt"), "w").close()
        self.process = subprocess.Popen(
            [os.path.join(BIN, "receiver"), "--bind", "127.0.0.1", "--port", "0",
             "--max-uploads", "256", "--max-uploads-per-device", "64"],
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

    def add_device(self, folder):
        made = subprocess.run([os.path.join(BIN, "receiver"), "--ids", "ids.txt", "add-device"],
                              cwd=self.dir, check=True, capture_output=True, text=True)
        id_file = os.path.join(folder, "device-id")
        with open(id_file, "w") as f:
            f.write(made.stdout)
        os.chmod(id_file, 0o600)
        return id_file

    def peak_rss_kib(self):
        with open(f"/proc/{self.process.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        return 0

    def stop(self):
        self.process.terminate()
        self.process.wait()
        self.drain.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def sender(receiver, device, jobs=None):
    """Starts one sender run; returns the process."""
    args = [os.path.join(BIN, "sender"), receiver.address, os.path.join(device, "logs"),
            "--id-file", os.path.join(device, "device-id"), "--min-age", "0"]
    if jobs is not None:
        args += ["--jobs", str(jobs)]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(process):
    """Waits for a sender; returns its peak RSS in KiB; fails on errors."""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    err = process.stderr.read()
    if process.returncode != 0:
        raise RuntimeError(f"sender exited {process.returncode}: {err}")
    return usage.ru_maxrss


def make_device(work, receiver, files):
    """A device folder whose logs hold `files` (relative path -> size)."""
    device = tempfile.mkdtemp(dir=work, prefix="device-")
    rng = random.Random(len(files))
    for rel, size in files.items():
        path = os.path.join(device, "logs", rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            remaining = size
            while remaining:
                chunk = min(remaining, 1 << 20)
                f.write(rng.randbytes(chunk))
                remaining -= chunk
    receiver.add_device(device)
    return device


def small_files(count):
    return {f"d{i // 100:03}/f{i % 100:03}.log": 4096 for i in range(count)}


def mixed_files(count):
    rng = random.Random(7)
    # Log-uniform from 1 KiB to 8 MiB: many small files, a few large ones.
    return {f"m{i // 50:02}/f{i:04}.bin": int(1024 * 2 ** rng.uniform(0, 13)) for i in range(count)}


def timed_send(work, files, jobs=None):
    """One end-to-end run: returns (seconds, sender peak KiB, receiver peak KiB)."""
    receiver = Receiver(work)
    try:
        device = make_device(work, receiver, files)
        os.sync()
        start = time.perf_counter()
        rss = finish(sender(receiver, device, jobs))
        seconds = time.perf_counter() - start
        left = sum(len(names) for _, _, names in os.walk(os.path.join(device, "logs")))
        assert left == 0, f"{left} files were not delivered"
        return seconds, rss, receiver.peak_rss_kib()
    finally:
        receiver.stop()
        shutil.rmtree(device, ignore_errors=True)


def durable_copy_floor(work, files):
    """Sequential: read, hash, write a copy, fsync it, rename it, fsync the folder."""
    src = tempfile.mkdtemp(dir=work, prefix="floor-src-")
    dst = tempfile.mkdtemp(dir=work, prefix="floor-dst-")
    rng = random.Random(1)
    for rel, size in files.items():
        path = os.path.join(src, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(rng.randbytes(size))
    os.sync()
    start = time.perf_counter()
    for rel in files:
        with open(os.path.join(src, rel), "rb") as f:
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
    seconds = time.perf_counter() - start
    shutil.rmtree(src)
    shutil.rmtree(dst)
    return seconds


def cp_sync_floor(work, size_mib):
    src = os.path.join(work, "floor-large.bin")
    with open(src, "wb") as f:
        for _ in range(size_mib):
            f.write(os.urandom(1 << 20))
    os.sync()
    dst = os.path.join(work, "floor-large-copy.bin")
    start = time.perf_counter()
    subprocess.run(["cp", src, dst], check=True)
    subprocess.run(["sync"], check=True)
    seconds = time.perf_counter() - start
    os.remove(src)
    os.remove(dst)
    return seconds


def many_senders(work):
    """SENDERS devices with PER_SENDER small files each, all at once."""
    receiver = Receiver(work)
    try:
        devices = [make_device(work, receiver, {f"s{i:03}.log": 4096 for i in range(PER_SENDER)}) for _ in range(SENDERS)]
        os.sync()
        start = time.perf_counter()
        processes = [sender(receiver, device) for device in devices]
        rss = max(finish(p) for p in processes)
        seconds = time.perf_counter() - start
        return seconds, rss, receiver.peak_rss_kib()
    finally:
        receiver.stop()
        for device in devices:
            shutil.rmtree(device, ignore_errors=True)


def median(values):
    return statistics.median(values)


def main():
    work = tempfile.mkdtemp(prefix="logferry-bench-", dir=os.environ.get("BENCH_DIR", "/var/tmp"))
    rows = []
    try:
        log(f"jobs sweep over {SMALL_FILES} files of 4 KiB: {JOBS_SWEEP}")
        sweep = {}
        for jobs in JOBS_SWEEP:
            seconds, _, _ = timed_send(work, small_files(SMALL_FILES), jobs)
            sweep[jobs] = SMALL_FILES / seconds
            log(f"  --jobs {jobs}: {sweep[jobs]:.0f} files/s")
        best = max(sweep, key=sweep.get)

        log("case 1: small files, default --jobs")
        runs = [timed_send(work, small_files(SMALL_FILES)) for _ in range(RUNS)]
        ours_small = median([SMALL_FILES / r[0] for r in runs])
        sender_rss_small = max(r[1] for r in runs)
        floor_small = median([SMALL_FILES / durable_copy_floor(work, small_files(SMALL_FILES)) for _ in range(RUNS)])

        log(f"case 2: one file of {LARGE_MIB} MiB")
        large = {"large.bin": LARGE_MIB << 20}
        runs = [timed_send(work, large) for _ in range(RUNS)]
        ours_large = median([LARGE_MIB * 1.048576 / r[0] for r in runs])
        sender_rss_large = max(r[1] for r in runs)
        receiver_rss_large = max(r[2] for r in runs)
        floor_large = median([LARGE_MIB * 1.048576 / cp_sync_floor(work, LARGE_MIB) for _ in range(RUNS)])

        log(f"case 3: {MIXED_FILES} mixed files, 1 KiB to 8 MiB")
        mixed = mixed_files(MIXED_FILES)
        mixed_mb = sum(mixed.values()) / 1e6
        runs = [timed_send(work, mixed) for _ in range(RUNS)]
        mixed_seconds = median([r[0] for r in runs])

        log(f"case 4: {SENDERS} senders at once, {PER_SENDER} small files each")
        runs = [many_senders(work) for _ in range(RUNS)]
        many_rate = median([SENDERS * PER_SENDER / r[0] for r in runs])
        receiver_rss_many = max(r[2] for r in runs)
        sender_rss_many = max(r[1] for r in runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    binary_kib = os.path.getsize(os.path.join(BIN, "sender")) / 1024
    def target(ok):
        return "met" if ok else "**missed**"
    rows = [
        ("1. small files: 4 KiB each, one sender", f"{ours_small:.0f} files/s", f"durable-copy loop {floor_small:.0f} files/s",
         f"{ours_small / floor_small:.2f}x", f"≥ 1.0x: {target(ours_small >= floor_small)}"),
        (f"2. one {LARGE_MIB} MiB file", f"{ours_large:.0f} MB/s", f"cp + sync {floor_large:.0f} MB/s",
         f"{ours_large / floor_large:.2f}x", f"≥ 0.85x: {target(ours_large >= 0.85 * floor_large)}"),
        (f"3. mixed: {MIXED_FILES} files, 1 KiB–8 MiB ({mixed_mb:.0f} MB)", f"{mixed_seconds:.1f} s, {mixed_mb / mixed_seconds:.0f} MB/s",
         "", "", ""),
        (f"4. {SENDERS} senders at once × {PER_SENDER} files", f"{many_rate:.0f} files/s", "", "", ""),
        ("5. receiver peak RSS, case 2", f"{receiver_rss_large / 1024:.1f} MiB", "", "", f"≤ 32 MiB: {target(receiver_rss_large <= 32 * 1024)}"),
        ("5. receiver peak RSS, case 4", f"{receiver_rss_many / 1024:.1f} MiB", "", "", f"≤ 128 MiB: {target(receiver_rss_many <= 128 * 1024)}"),
        ("5. sender peak RSS, cases 1 / 2 / 4", f"{sender_rss_small / 1024:.1f} / {sender_rss_large / 1024:.1f} / {sender_rss_many / 1024:.1f} MiB",
         "", "", f"≤ 16 MiB: {target(max(sender_rss_small, sender_rss_large, sender_rss_many) <= 16 * 1024)}"),
        ("release `sender` binary", f"{binary_kib / 1024:.1f} MiB", "", "", ""),
    ]
    sweep_row = ", ".join(f"{j}: {rate:.0f}" for j, rate in sweep.items())

    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    lines = [
        "# Benchmarks",
        "",
        "Produced by `scripts/bench.sh` (this file is rewritten by each run).",
        "",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- Machine: {os.cpu_count()} cores, {cpu}, {platform.system()} {platform.release()}",
        f"- Disk: the one under {os.environ.get('BENCH_DIR', '/var/tmp')}; loopback network; release builds",
        f"- Each figure is the median of {RUNS} runs; floors are measured in the same run on the same disk.",
        f"- Command: `{os.environ.get('BENCH_COMMAND', 'scripts/bench.sh')}`",
        "",
        "| case | ours | floor | ratio | target |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    lines += [
        "",
        f"`--jobs` sweep, case 1 (files/s, one run each): {sweep_row}; fastest: {best}.",
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
