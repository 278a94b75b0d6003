"""The logferry benchmark (run it through scripts/bench.sh).

Each case is measured end to end on loopback with release builds, set
against a floor measured in the same run on the same disk, and reported as
the median of several runs. Runs of different cases and their floors are
interleaved round by round, so that a noisy neighbour on the machine slows
ours and the floor alike. Test data is made once and moved back into place
after each run. Writes the tables to BENCHMARKS.md.

Four sections, chosen with CASES (all by default): `transfer` (cases 1-5
and 11: delivering files, cases 1 and 2 also against rsync, to its daemon
and over ssh, and rclone, all on loopback), `keys` (cases 6-9: the device key derivation, and the
receiver's start-up and reload with DEVICES devices) and `slowlink` (case
10, in scripts/bench_slowlink.py: text logs over a 20 Mbit/s link, against
rsync and rclone, and a resumed upload) and `history` (in
scripts/bench_history.py: start-up, refreshes and `receiver reindex` with
10,000 to 1,000,000 stored files). A section not measured is kept in
BENCHMARKS.md as the run that measured it left it.
"""

import hashlib
import hmac
import http.client
import json
import socket
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import bench_history
import bench_peers
import bench_slowlink
from bench_peers import cpu_seconds, files_in, put_back, rclone_webdav, rsync_daemon, stop, tool_env, verify

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
RUNS = int(os.environ.get("RUNS", "3"))
SMALL_FILES = int(os.environ.get("SMALL_FILES", "10000"))
LARGE_MIB = int(os.environ.get("LARGE_MIB", "1024"))
MIXED_FILES = int(os.environ.get("MIXED_FILES", "1000"))
SENDERS = int(os.environ.get("SENDERS", "50"))
PER_SENDER = int(os.environ.get("PER_SENDER", "200"))
# Case 11: FLEET_DEVICES senders at once, each its own device, FLEET_FILES files each.
FLEET_DEVICES = int(os.environ.get("FLEET_DEVICES", "200"))
FLEET_FILES = int(os.environ.get("FLEET_FILES", "50"))
JOBS_SWEEP = [int(j) for j in os.environ.get("JOBS_SWEEP", "1 2 4 8 16").split()]
BENCH_DIR = os.environ.get("BENCH_DIR", "/var/tmp")
SECTIONS = ("transfer", "keys", "slowlink", "history")
CASES = os.environ.get("CASES", " ".join(SECTIONS)).split()
DEVICES = int(os.environ.get("DEVICES", "1000"))
# Each sender run is killed after this long: every loop here is bounded.
RUN_TIMEOUT = 300
SENT = "sent_files"
LOCK_FILE = ".logferry-sender.lock"
# The sender's peak RSS budget, derivation of its key included (8 MiB).
SENDER_RSS_MIB = 24
# Targets of cases 1 and 2: ours over the floor, over rsync to its daemon,
# over rsync over ssh (case 2 only).
SMALL_OVER_FLOOR, SMALL_OVER_RSYNCD = 1.5, 1.5
LARGE_OVER_CP, LARGE_OVER_RSYNCD, LARGE_OVER_SSH = 0.5, 1.5, 3.0
# Case 11 before the work of issue 15, at full size (200 devices x 50 files
# of 4 KiB): median of 3 runs (1159, 1128, 926 files/s), code 339bfb7,
# 2026-12-02 15:02 UTC, on this project's 2-core AMD EPYC VM (load average
# 5-6 from other work). The target is twice that.
FLEET_BEFORE_FILES_S = 1128
FLEET_OVER_BEFORE = 2.0


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
        # {relative path: (size, SHA-256)}, to check what a peer delivered.
        self.digests = {}
        rng = random.Random(seed)
        for rel, size in files.items():
            path = os.path.join(self.logs, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            digest = hashlib.sha256()
            with open(path, "wb") as f:
                remaining = size
                while remaining:
                    chunk = rng.randbytes(min(remaining, 1 << 20))
                    f.write(chunk)
                    digest.update(chunk)
                    remaining -= len(chunk)
            self.digests[rel] = (size, digest.hexdigest())
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
    (seconds until the last one finished, peak sender KiB, peak receiver KiB,
    the receiver's CPU seconds during the run, start-up not counted)."""
    receiver = Receiver(work, ids_file)
    try:
        os.sync()
        cpu_before = cpu_seconds(receiver.process.pid)
        start = time.perf_counter()
        processes = [device.start(receiver.address, jobs) for device in devices]
        sender_rss = max(finish(p) for p in processes)
        seconds = time.perf_counter() - start
        receiver_rss = receiver.peak_rss_kib()
        receiver_cpu = cpu_seconds(receiver.process.pid) - cpu_before
    finally:
        receiver.stop()
    for device in devices:
        device.reset()
    return seconds, sender_rss, receiver_rss, receiver_cpu


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


PEERS = {"rsyncd": "rsync daemon", "ssh": "rsync over ssh", "rclone": "rclone move to WebDAV"}
SSHD = "/usr/sbin/sshd"


def listening(port):
    try:
        socket.create_connection(("127.0.0.1", port), 1).close()
        return True
    except OSError:
        return False


def peer_timeout(device):
    """How long a peer's run may take: more than ours, as rclone's WebDAV
    backend spaces its requests 10 ms apart (about 30 small files a second;
    1.60 has no option to change that)."""
    return RUN_TIMEOUT + 0.1 * len(device.files) + sum(device.files.values()) / 10e6


class Peers:
    """The peers of cases 1 and 2 on loopback, each pushing a device's files
    with its sources removed: `rsync -a --fsync --remove-source-files` to an
    rsync daemon, the same over ssh to an sshd of our own, and `rclone move`
    to `rclone serve webdav`. A daemon and a WebDAV server are started
    fresh for each run, serving an empty folder; the sshd serves the whole
    section. After each run the destination is checked (every file, its
    size and SHA-256; no source left) and the files go back."""

    def __init__(self, work):
        self.work = work
        self.versions = bench_peers.check_peers(("rsync", "rclone", "ssh", "ssh-keygen", SSHD, "/usr/bin/time"))
        self.ssh_dir = tempfile.mkdtemp(dir=work, prefix="sshd-")
        self.key = os.path.join(self.ssh_dir, "client_key")
        for key in (self.key, os.path.join(self.ssh_dir, "host_key")):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True, timeout=60)
        shutil.copy(self.key + ".pub", os.path.join(self.ssh_dir, "authorized_keys"))
        self.ssh_port = free_port()
        config = os.path.join(self.ssh_dir, "sshd_config")
        with open(config, "w") as f:
            f.write(f"Port {self.ssh_port}\nListenAddress 127.0.0.1\nHostKey {self.ssh_dir}/host_key\n"
                    f"AuthorizedKeysFile {self.ssh_dir}/authorized_keys\nPidFile {self.ssh_dir}/sshd.pid\n"
                    "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
                    "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n")
        # sshd refuses to start without its privilege separation folder.
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self.sshd = self.spawn([SSHD, "-D", "-e", "-f", config], "sshd.log")
        try:
            bench_peers.wait_listening(lambda: listening(self.ssh_port), self.sshd, "sshd")
        except BaseException:
            self.close()
            raise

    def spawn(self, command, log_name):
        logfile = open(os.path.join(self.work, log_name), "a")
        # In a process group of its own, which `stop` ends whole.
        process = subprocess.Popen(command, stdout=logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True, env=tool_env())
        process.logfile = logfile
        return process

    def close(self):
        stop(self.sshd)
        self.sshd.logfile.close()

    def rsyncd(self, device):
        dest = tempfile.mkdtemp(dir=self.work, prefix="rsyncd-dest-")
        port = free_port()
        daemon, url = rsync_daemon(self.work, port, dest)
        client = ["rsync", "-a", "--fsync", "--remove-source-files", device.logs + "/", url]
        return self.run("rsyncd", device, client, dest, self.spawn(daemon, "rsyncd.out"), port)

    def ssh(self, device):
        dest = tempfile.mkdtemp(dir=self.work, prefix="ssh-dest-")
        shell = (f"ssh -p {self.ssh_port} -i {self.key} -o StrictHostKeyChecking=no "
                 "-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR")
        client = ["rsync", "-a", "--fsync", "--remove-source-files", "-e", shell, device.logs + "/",
                  f"root@127.0.0.1:{dest}/"]
        return self.run("ssh", device, client, dest)

    def rclone(self, device):
        dest = tempfile.mkdtemp(dir=self.work, prefix="webdav-dest-")
        port = free_port()
        server, client = rclone_webdav(self.work, port, dest, device.logs)
        return self.run("rclone", device, client, dest, self.spawn(server, "webdav.log"), port)

    def run(self, name, device, client, dest, server=None, port=None):
        """One run of a peer's client (bounded), timed from its start; with
        the server started for it, that server's CPU seconds over the run
        (its process tree: the children it forked and reaped count)."""
        try:
            if server:
                bench_peers.wait_listening(lambda: listening(port), server, PEERS[name])
                cpu_before = cpu_seconds(server.pid, waited=True)
            os.sync()
            start = time.perf_counter()
            done = subprocess.run(client, capture_output=True, text=True, timeout=peer_timeout(device), env=tool_env())
            seconds = time.perf_counter() - start
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(client)} exited {done.returncode}: {done.stderr[-2000:]}")
            cpu = None
            if server:
                # The daemon reaps the process it forked for the connection
                # just after the client ends (bounded: 10 s).
                for _ in range(200):
                    if not bench_peers.children(server.pid):
                        break
                    time.sleep(0.05)
                cpu = cpu_seconds(server.pid, waited=True) - cpu_before
        finally:
            if server:
                stop(server)
                server.logfile.close()
        verify(dest, device.digests, PEERS[name])
        left = files_in(device.logs)
        if left:
            raise RuntimeError(f"{PEERS[name]} left {len(left)} source files, e.g. {left[0]}")
        put_back(dest, device.logs, device.files)
        return {"s": seconds, "cpu": cpu}


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


def at_least(value, goal, unit):
    gap = f"{goal - value:.2f}{unit}" if unit == "x" else f"{goal - value:.1f} {unit}"
    return f"≥ {goal}{unit}: " + ("met" if value >= goal else f"**missed** by {gap}")


def at_most(value, goal, unit):
    return f"≤ {goal} {unit}: " + ("met" if value <= goal else f"**missed** by {value - goal:.1f} {unit}")


def listed(values, form):
    return ", ".join(form.format(v) for v in values)


def run_header(elapsed):
    """Where a section's figures come from: this run's command, date, machine."""
    return [
        f"- Command: `{os.environ.get('BENCH_COMMAND', 'scripts/bench.sh')}`",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, code {commit()}; the release build took "
        f"{int(os.environ.get('BENCH_BUILD_SECONDS', '0')) / 60:.1f} min (none when already built), "
        f"this section {elapsed / 60:.1f} min",
        f"- Machine: {os.cpu_count()} cores, {cpu_model()}, {platform.system()} {platform.release()}",
    ]


def commit():
    """The commit measured, marked when the work tree differs from it."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + (" with local changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def peer_rows(case, ours, peer_rates, unit, goals):
    """Rows of ours against each peer of a case: `peer_rates` {peer: rate},
    `goals` {peer: the least ratio, or None for no target}."""
    return [(f"{case}. against {PEERS[name]}", f"{ours:.0f} {unit}", f"{PEERS[name]} {rate:.0f} {unit}",
             f"{ours / rate:.2f}x", at_least(round(ours / rate, 2), goals[name], "x") if goals.get(name) else "")
            for name, rate in peer_rates.items()]


def transfer_section(work):
    """Cases 1-5 and 11: delivering files. Returns the section's lines."""
    started = time.perf_counter()
    ids_file = os.path.join(work, "ids.txt")
    open(ids_file, "w").close()
    # Case 11's devices have an ids file of their own, so that the
    # receivers of the other cases derive the same 53 keys as before.
    crowd_ids = os.path.join(work, "crowd-ids.txt")
    open(crowd_ids, "w").close()
    jobs_default = default_jobs()
    # A SIGTERM, like a Ctrl-C, ends the section through the `finally`s
    # below, which stop the peers' servers.
    previous = signal.signal(signal.SIGTERM, bench_peers.interrupted)
    try:
        log("transfer: starting the peers' sshd")
        peers = Peers(work)
        try:
            return measure_transfer(work, ids_file, crowd_ids, jobs_default, peers, started)
        finally:
            peers.close()
    finally:
        signal.signal(signal.SIGTERM, previous)


def measure_transfer(work, ids_file, crowd_ids, jobs_default, peers, started):
    log("transfer: making the test data")
    small = Device(work, ids_file, small_files(SMALL_FILES), 1)
    large = Device(work, ids_file, {"large.bin": LARGE_MIB << 20}, 2)
    mixed = Device(work, ids_file, mixed_files(MIXED_FILES), 3)
    fleet = [Device(work, ids_file, small_files(PER_SENDER, f"s{n:02}-"), 10 + n) for n in range(SENDERS)]
    crowd = [Device(work, crowd_ids, small_files(FLEET_FILES, f"d{n:03}-"), 1000 + n) for n in range(FLEET_DEVICES)]
    sweep = {j: [] for j in JOBS_SWEEP}
    small_runs, small_floor, large_runs, large_floor, mixed_runs, fleet_runs, crowd_runs = [], [], [], [], [], [], []
    small_peers, large_peers = {name: [] for name in PEERS}, {name: [] for name in PEERS}
    for round_ in range(1, RUNS + 1):
        log(f"transfer: round {round_} of {RUNS}")
        for jobs in JOBS_SWEEP:
            if jobs == jobs_default:
                continue
            sweep[jobs].append(timed_send(work, ids_file, [small], jobs))
            log(f"  case 1, --jobs {jobs}: {SMALL_FILES / sweep[jobs][-1][0]:.0f} files/s")
        small_runs.append(timed_send(work, ids_file, [small]))
        small_floor.append(durable_copy_floor(work, small))
        for name, runs in small_peers.items():
            # rclone's WebDAV pacing (about 30 files/s) would take most of
            # the section's time: its small-file figure is the first round's.
            if name != "rclone" or round_ == 1:
                runs.append(getattr(peers, name)(small))
        log(f"  case 1, default --jobs: {SMALL_FILES / small_runs[-1][0]:.0f} files/s, "
            f"floor {SMALL_FILES / small_floor[-1]:.0f} files/s, "
            + ", ".join(f"{PEERS[n]} {SMALL_FILES / r[-1]['s']:.0f}" for n, r in small_peers.items()))
        large_runs.append(timed_send(work, ids_file, [large]))
        large_floor.append(cp_sync_floor(work, large))
        for name, runs in large_peers.items():
            runs.append(getattr(peers, name)(large))
        log(f"  case 2: {large_runs[-1][0]:.2f} s, floor {large_floor[-1]:.2f} s, "
            + ", ".join(f"{PEERS[n]} {r[-1]['s']:.2f} s" for n, r in large_peers.items()))
        mixed_runs.append(timed_send(work, ids_file, [mixed]))
        log(f"  case 3: {mixed_runs[-1][0]:.2f} s")
        fleet_runs.append(timed_send(work, ids_file, fleet))
        log(f"  case 4: {fleet_runs[-1][0]:.2f} s")
        crowd_runs.append(timed_send(work, crowd_ids, crowd))
        log(f"  case 11: {crowd_runs[-1][0]:.2f} s, {FLEET_DEVICES * FLEET_FILES / crowd_runs[-1][0]:.0f} files/s")
    if jobs_default in sweep:
        sweep[jobs_default] = small_runs
    elapsed = time.perf_counter() - started

    median = statistics.median
    large_mb = (LARGE_MIB << 20) / 1e6
    mixed_mb = sum(mixed.files.values()) / 1e6
    fleet_files = SENDERS * PER_SENDER
    crowd_files = FLEET_DEVICES * FLEET_FILES
    ours_small = SMALL_FILES / median(r[0] for r in small_runs)
    floor_small = SMALL_FILES / median(small_floor)
    ours_large = large_mb / median(r[0] for r in large_runs)
    floor_large = large_mb / median(large_floor)
    small_peer = {n: SMALL_FILES / median(r["s"] for r in runs) for n, runs in small_peers.items()}
    large_peer = {n: large_mb / median(r["s"] for r in runs) for n, runs in large_peers.items()}
    # CPU per file of case 1: our receiver's, the rsync daemon's process tree.
    ours_cpu_us = median(r[3] for r in small_runs) / SMALL_FILES * 1e6
    rsyncd_cpu_us = median(r["cpu"] for r in small_peers["rsyncd"]) / SMALL_FILES * 1e6
    mixed_seconds = median(r[0] for r in mixed_runs)
    fleet_rate = fleet_files / median(r[0] for r in fleet_runs)
    crowd_rate = crowd_files / median(r[0] for r in crowd_runs)
    peak = lambda runs, side: max(r[side] for r in runs) / 1024  # noqa: E731
    sender_peaks = [peak(small_runs, 1), peak(large_runs, 1), peak(mixed_runs, 1), peak(fleet_runs, 1),
                    peak(crowd_runs, 1)]
    binary_mib = os.path.getsize(os.path.join(BIN, "sender")) / (1 << 20)
    sweep_rates = {j: SMALL_FILES / median(r[0] for r in runs) for j, runs in sweep.items() if runs}
    fastest = max(sweep_rates, key=sweep_rates.get)
    # The before figure was measured at the full size only.
    full_crowd = (FLEET_DEVICES, FLEET_FILES) == (200, 50)
    crowd_goal = at_least(round(crowd_rate / FLEET_BEFORE_FILES_S, 2), FLEET_OVER_BEFORE, "x") if full_crowd \
        else f"≥ {FLEET_OVER_BEFORE}x at 200 × 50 only"

    rows = [
        (f"1. {SMALL_FILES:,} files of 4 KiB in nested folders, one sender (--jobs {jobs_default})",
         f"{ours_small:.0f} files/s", f"sequential durable copy {floor_small:.0f} files/s",
         f"{ours_small / floor_small:.2f}x", at_least(round(ours_small / floor_small, 2), SMALL_OVER_FLOOR, "x")),
        *peer_rows(1, ours_small, small_peer, "files/s", {"rsyncd": SMALL_OVER_RSYNCD}),
        ("1. CPU time per file: our receiver / the rsync daemon's processes (user + system)",
         f"{ours_cpu_us:.0f} µs", f"rsync daemon {rsyncd_cpu_us:.0f} µs", f"{ours_cpu_us / rsyncd_cpu_us:.2f}x", ""),
        (f"2. one file of {LARGE_MIB} MiB", f"{ours_large:.0f} MB/s",
         f"cp + sync {floor_large:.0f} MB/s (the disk in this run)",
         f"{ours_large / floor_large:.2f}x", at_least(round(ours_large / floor_large, 2), LARGE_OVER_CP, "x")),
        *peer_rows(2, ours_large, large_peer, "MB/s", {"rsyncd": LARGE_OVER_RSYNCD, "ssh": LARGE_OVER_SSH}),
        (f"3. {MIXED_FILES:,} files of 1 KiB–8 MiB ({mixed_mb:.0f} MB)",
         f"{mixed_seconds:.1f} s: {mixed_mb / mixed_seconds:.0f} MB/s, {MIXED_FILES / mixed_seconds:.0f} files/s",
         "", "", ""),
        (f"4. {SENDERS} senders at once × {PER_SENDER} files of 4 KiB", f"{fleet_rate:.0f} files/s",
         f"(case 1's floor: {floor_small:.0f} files/s)", f"{fleet_rate / floor_small:.2f}x", ""),
        (f"11. {FLEET_DEVICES} devices at once (a sender each) × {FLEET_FILES} files of 4 KiB",
         f"{crowd_rate:.0f} files/s", f"before, 200 × 50 at 339bfb7: {FLEET_BEFORE_FILES_S} files/s",
         f"{crowd_rate / FLEET_BEFORE_FILES_S:.2f}x", crowd_goal),
        ("5. receiver peak RSS during case 2", f"{peak(large_runs, 2):.1f} MiB", "", "",
         at_most(peak(large_runs, 2), 32, "MiB")),
        ("5. receiver peak RSS during case 4", f"{peak(fleet_runs, 2):.1f} MiB", "", "",
         at_most(peak(fleet_runs, 2), 128, "MiB")),
        (f"11. receiver peak RSS during case 11 ({FLEET_DEVICES} devices listed)", f"{peak(crowd_runs, 2):.1f} MiB",
         "", "", ""),
        ("5. sender peak RSS during cases 1 / 2 / 3 / 4 / 11",
         " / ".join(f"{p:.1f}" for p in sender_peaks) + " MiB", "", "",
         at_most(max(sender_peaks), SENDER_RSS_MIB, "MiB")),
        ("release `sender` binary", f"{binary_mib:.1f} MiB", "", "", ""),
    ]
    peer_runs = lambda case, by_peer, rate, unit: [  # noqa: E731
        f"- case {case}: {PEERS[n]} {listed([rate(r['s']) for r in runs], '{:.0f}')} {unit}"
        for n, runs in by_peer.items()]
    run_rows = [
        f"- case 1: ours {listed([SMALL_FILES / r[0] for r in small_runs], '{:.0f}')} files/s; "
        f"floor {listed([SMALL_FILES / s for s in small_floor], '{:.0f}')} files/s",
        *peer_runs(1, small_peers, lambda s: SMALL_FILES / s, "files/s"),
        f"- case 1, CPU per file: our receiver {listed([r[3] / SMALL_FILES * 1e6 for r in small_runs], '{:.0f}')} µs; "
        f"rsync daemon {listed([r['cpu'] / SMALL_FILES * 1e6 for r in small_peers['rsyncd']], '{:.0f}')} µs",
        f"- case 2: ours {listed([large_mb / r[0] for r in large_runs], '{:.0f}')} MB/s; "
        f"floor {listed([large_mb / s for s in large_floor], '{:.0f}')} MB/s",
        *peer_runs(2, large_peers, lambda s: large_mb / s, "MB/s"),
        f"- case 3: {listed([r[0] for r in mixed_runs], '{:.2f}')} s",
        f"- case 4: {listed([fleet_files / r[0] for r in fleet_runs], '{:.0f}')} files/s",
        f"- case 11: {listed([crowd_files / r[0] for r in crowd_runs], '{:.0f}')} files/s; receiver peak RSS "
        f"{listed([r[2] / 1024 for r in crowd_runs], '{:.1f}')} MiB",
    ]
    sweep_rows = [f"| {j} | {rate:.0f} | {rate / floor_small:.2f}x |" for j, rate in sweep_rates.items()]
    rsync_version, rclone_version = peers.versions
    lines = [
        "## Transfer: cases 1-5 and 11",
        "",
        *run_header(elapsed),
        f"- Disk: the one under {BENCH_DIR}; loopback network; release builds; receiver upload limits raised "
        "(`--max-uploads 1024 --max-uploads-per-device 64`) so that they never decide a figure",
        f"- Each figure is the median of {RUNS} runs (peak RSS: the highest of them). Floors and peers are measured",
        "  in the same rounds, interleaved with ours, on the same disk and from the same source files.",
        f"- Peers (cases 1 and 2): {rsync_version}, `rsync -a --fsync --remove-source-files` to an rsync daemon "
        "and over ssh (OpenSSH, an sshd of the run's own); "
        f"{rclone_version}, `rclone move` to `rclone serve webdav`; all on loopback.",
        "",
        "| case | ours | floor or peer | ratio | target |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    # Measured by scripts/bench-s3.sh just before, in the same bench.sh run.
    s3_rows = os.environ.get("BENCH_S3_ROWS", "").strip()
    lines += s3_rows.splitlines() if s3_rows else [
        "| S3 (Garage): skipped, " + ("S3=0" if os.environ.get("S3") == "0" else "Garage not installed")
        + " |  |  |  |  |"]
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
    ]
    return lines


# Cases 6-9: the device key. A device's key is Argon2id of its ID (8 MiB,
# 2 passes, fixed salt); the receiver derives every listed device's key when
# it loads ids.txt, the sender its own once per run.
KDF_ROUNDS, KDF_DERIVATIONS, KDF_HMACS = 7, 20, 200_000
# The receiver checks ids.txt for edits this often (receiver/src/app.rs IDS_POLL).
IDS_POLL_SECONDS = 1.0
# Targets: an offline guess at an ID costs at least 10^4 HMAC-SHA256; an edit
# that derives nothing applies within one poll and a little more; no request
# from a listed device waits for a reload's derivations.
GUESS_COST_HMACS = 10_000
LABEL_EDIT_SECONDS = 1.2
RELOAD_LATENCY_MS = 100


def device_key(device_id):
    """The key, as PROTOCOL.md v2 derives it; a mismatch with the receiver's
    would show as a device never accepted, and fail the benchmark."""
    from argon2.low_level import Type, hash_secret_raw
    return hash_secret_raw(secret=device_id.upper().encode(), salt=b"logferry device key v2", time_cost=2,
                           memory_cost=8192, parallelism=1, hash_len=32, type=Type.ID)


class Signer:
    """Signs auth checks as one device, and checks the receipts of the answers."""

    def __init__(self, device_id):
        self.key = device_key(device_id)
        self.key_id = hmac.new(self.key, b"logferry key id v2", hashlib.sha256).digest()[:16].hex()

    def auth_check(self, address):
        """(HTTP status, the label from a signed 200 or None)."""
        timestamp = int(time.time())
        canonical = f"LOGFERRY-HMAC-SHA256-V2\nGET\n/v1/auth-check\n{timestamp}\n\n\n"
        signature = hmac.new(self.key, canonical.encode(), hashlib.sha256).hexdigest()
        host, port = address.rsplit(":", 1)
        connection = http.client.HTTPConnection(host, int(port), timeout=RUN_TIMEOUT)
        try:
            connection.request("GET", "/v1/auth-check", headers={
                "Authorization": f"LOGFERRY-HMAC-SHA256 KeyId={self.key_id}, Timestamp={timestamp}, "
                                 f"Signature={signature}"})
            response = connection.getresponse()
            body = response.read()
        finally:
            connection.close()
        if response.status != 200:
            return response.status, None
        signed = f"LOGFERRY-RECEIPT-V2\n{response.status}\n{signature}\n".encode() + body
        receipt = hmac.new(self.key, signed, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(response.getheader("X-Logferry-Receipt") or "", receipt):
            raise RuntimeError("a 200 to an auth check without a valid receipt")
        return 200, json.loads(body)["label"]


def peak_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class KeysReceiver:
    """The release receiver on a free loopback port with `ids` as its ids
    file; `startup` is the time from its exec until /v1/health answered."""

    def __init__(self, work, ids):
        self.dir = tempfile.mkdtemp(dir=work, prefix="keys-receiver-")
        with open(os.path.join(self.dir, "ids.txt"), "w") as f:
            f.write(ids)
        self.address = f"127.0.0.1:{free_port()}"
        self.log = open(os.path.join(self.dir, "receiver.log"), "w")
        started = time.perf_counter()
        self.process = subprocess.Popen(
            [os.path.join(BIN, "receiver"), "--bind", "127.0.0.1", "--port", self.address.rsplit(":", 1)[1]],
            cwd=self.dir, stdout=subprocess.DEVNULL, stderr=self.log)
        while not self.healthy():
            if self.process.poll() is not None or time.perf_counter() - started > RUN_TIMEOUT:
                self.stop()
                raise RuntimeError(f"receiver did not start; see {self.log.name}")
            time.sleep(0.005)
        self.startup = time.perf_counter() - started

    def healthy(self):
        host, port = self.address.rsplit(":", 1)
        connection = http.client.HTTPConnection(host, int(port), timeout=1)
        try:
            connection.request("GET", "/v1/health")
            return connection.getresponse().status == 200
        except OSError:
            return False
        finally:
            connection.close()

    def replace_ids(self, ids):
        """A new ids.txt in one step, as an editor's save or a deploy does."""
        path = os.path.join(self.dir, "ids.txt")
        with open(path + ".new", "w") as f:
            f.write(ids)
        os.replace(path + ".new", path)

    def peak_rss_kib(self):
        return peak_rss_kib(self.process.pid)

    def stop(self):
        self.process.terminate()
        self.process.wait()
        self.log.close()


def edit_until(receiver, ids, probe, done):
    """Replaces the ids file by `ids` and, until `done()` holds, asks the auth
    check of `probe` (a device listed before and after) every 10 ms. Returns
    (seconds from the replacement until `done()` held, the probe's
    latencies in ms meanwhile, how many of its answers were not 200)."""
    latencies, failures = [], 0
    started = time.perf_counter()
    receiver.replace_ids(ids)
    while True:
        asked = time.perf_counter()
        status, _ = probe.auth_check(receiver.address)
        latencies.append((time.perf_counter() - asked) * 1e3)
        failures += status != 200
        if done():
            return time.perf_counter() - started, latencies, failures
        if time.perf_counter() - started > RUN_TIMEOUT:
            raise RuntimeError(f"the ids edit did not apply within {RUN_TIMEOUT} s")
        time.sleep(0.01)


def kdf_cost():
    """One run of common/examples/kdf_cost (release)."""
    out = subprocess.run([os.path.join(BIN, "examples", "kdf_cost"), str(KDF_ROUNDS), str(KDF_DERIVATIONS),
                          str(KDF_HMACS)], check=True, capture_output=True, text=True, timeout=RUN_TIMEOUT).stdout
    return json.loads(out)


def ids_text(ids, suffix=""):
    return "".join(f"{device_id} pi-{n:04}{suffix}\n" for n, device_id in enumerate(ids))


def keys_section(work):
    """Cases 6-9. Returns the section's lines."""
    started = time.perf_counter()
    cores = os.cpu_count()
    log("keys: making the ids files")
    probe_ids = os.path.join(work, "probe-ids.txt")
    # The probe device: listed in every ids file; its sender delivers 3 files.
    probe_device = Device(work, probe_ids, {f"p{i}.log": 4096 for i in range(3)}, 99)
    with open(probe_device.id_file) as f:
        probe_id = f.read().strip().upper()
    rng = random.Random(6)
    fresh = []
    while len(fresh) < 2 * DEVICES - 1:
        candidate = f"{rng.getrandbits(64):016X}"
        if candidate != probe_id and candidate not in fresh:
            fresh.append(candidate)
    # Before: the probe and DEVICES - 1 others. After: the probe and DEVICES
    # others, so that the reload derives as many keys as the start-up.
    before, after = [probe_id] + fresh[:DEVICES - 1], [probe_id] + fresh[DEVICES - 1:]
    probe, newcomer = Signer(probe_id), Signer(after[-1])

    kdf_runs, one_runs, fleet_runs = [], [], []
    for round_ in range(1, RUNS + 1):
        log(f"keys: round {round_} of {RUNS}")
        kdf_runs.append(kdf_cost())
        log(f"  case 6: derivation {statistics.median(kdf_runs[-1]['derive_ms']):.2f} ms, "
            f"HMAC {statistics.median(kdf_runs[-1]['hmac_ns']):.0f} ns")
        one = KeysReceiver(work, ids_text([probe_id]))
        one_runs.append({"startup": one.startup, "rss": one.peak_rss_kib()})
        one.stop()
        fleet = KeysReceiver(work, ids_text(before))
        try:
            run = {"startup": fleet.startup, "rss_started": fleet.peak_rss_kib()}
            log(f"  case 7: start-up with {DEVICES:,} devices {run['startup']:.2f} s "
                f"(1 device: {one_runs[-1]['startup']:.2f} s)")
            idle = []
            for _ in range(30):
                asked = time.perf_counter()
                if probe.auth_check(fleet.address)[0] != 200:
                    raise RuntimeError("the probe device is not accepted")
                idle.append((time.perf_counter() - asked) * 1e3)
                time.sleep(0.01)
            run["idle_ms"] = statistics.median(idle)
            run["reload"], run["reload_ms"], run["reload_failed"] = edit_until(
                fleet, ids_text(after), probe, lambda: newcomer.auth_check(fleet.address)[0] == 200)
            label = f"pi-{len(after) - 1:04}-v2"
            run["label"], run["label_ms"], run["label_failed"] = edit_until(
                fleet, ids_text(after, "-v2"), probe, lambda: newcomer.auth_check(fleet.address)[1] == label)
            log(f"  case 8: reload {run['reload']:.2f} s, label edit {run['label']:.2f} s; case 9: worst "
                f"latency {max(run['reload_ms']):.1f} ms ({len(run['reload_ms'])} probes)")
            sender = probe_device.start(fleet.address)
            run["sender_rss"] = finish(sender)
            probe_device.reset()
            run["rss_end"] = fleet.peak_rss_kib()
        finally:
            fleet.stop()
        fleet_runs.append(run)
    elapsed = time.perf_counter() - started

    median = statistics.median
    derive_ms = median(v for k in kdf_runs for v in k["derive_ms"])
    hmac_ns = median(v for k in kdf_runs for v in k["hmac_ns"])
    ratio = median(v for k in kdf_runs for v in k["ratio"])
    first_ms = median(k["first_derive_ms"] for k in kdf_runs)
    # The start-up's peer: its derivations alone, spread over every core, at
    # the rate measured in the same round.
    bounds = [DEVICES * median(k["derive_ms"]) / 1e3 / cores for k in kdf_runs]
    startup = median(r["startup"] for r in fleet_runs)
    bound = median(bounds)
    reload = median(r["reload"] for r in fleet_runs)
    label = median(r["label"] for r in fleet_runs)
    worst = max(max(r["reload_ms"]) for r in fleet_runs)
    idle = median(r["idle_ms"] for r in fleet_runs)
    failed = sum(r["reload_failed"] + r["label_failed"] for r in fleet_runs)
    rss_one = max(r["rss"] for r in one_runs) / 1024
    rss_started = max(r["rss_started"] for r in fleet_runs) / 1024
    rss_end = max(r["rss_end"] for r in fleet_runs) / 1024
    sender_rss = max(r["sender_rss"] for r in fleet_runs) / 1024
    label_goal = f"≤ {LABEL_EDIT_SECONDS} s: " + ("met" if label <= LABEL_EDIT_SECONDS else
                                                 f"**missed** by {label - LABEL_EDIT_SECONDS:.2f} s")
    latency_goal = f"≤ {RELOAD_LATENCY_MS} ms, every answer 200: " + (
        "met" if worst <= RELOAD_LATENCY_MS and not failed else
        f"**missed** ({worst:.1f} ms, {failed} answers not 200)")
    rows = [
        ("6. one key derivation (Argon2id, 8 MiB, 2 passes) against one HMAC-SHA256 of a 56-byte message",
         f"{derive_ms:.2f} ms", f"HMAC {hmac_ns:.0f} ns", f"{ratio:,.0f}x",
         "≥ 10^4x: " + ("met" if ratio >= GUESS_COST_HMACS else "**missed**")),
        ("6. a process's first derivation (fresh pages: what a sender run pays once)", f"{first_ms:.2f} ms",
         f"later ones {derive_ms:.2f} ms", f"{first_ms / derive_ms:.2f}x", ""),
        (f"7. receiver start-up with {DEVICES:,} devices: exec until `GET /v1/health` answers",
         f"{startup:.2f} s", f"{DEVICES:,} derivations ÷ {cores} cores at case 6's rate: {bound:.2f} s",
         f"{startup / bound:.2f}x", ""),
        (f"7. receiver peak RSS after start-up with {DEVICES:,} devices / by the end of cases 8-9",
         f"{rss_started:.1f} / {rss_end:.1f} MiB", f"started with 1 device: {rss_one:.1f} MiB",
         f"{rss_started / rss_one:.2f}x / {rss_end / rss_one:.2f}x", ""),
        (f"8. reload: ids.txt replaced by {DEVICES:,} other devices (and the probe), until one of them is accepted",
         f"{reload:.2f} s", f"case 7's start-up: {startup:.2f} s", f"{reload / startup:.2f}x", ""),
        (f"8. reload: a label-only edit of the {DEVICES + 1:,}, until the new label is answered",
         f"{label:.2f} s", f"case 8's reload: {reload:.2f} s", f"{label / reload:.2f}x", label_goal),
        ("9. worst auth-check latency of a device listed throughout, during case 8's reload",
         f"{worst:.1f} ms", f"idle: {idle:.1f} ms", f"{worst / idle:.1f}x", latency_goal),
        ("9. sender peak RSS, a run delivering 3 files of 4 KiB (its key derived once)", f"{sender_rss:.1f} MiB",
         "", "", at_most(sender_rss, SENDER_RSS_MIB, "MiB")),
    ]
    run_rows = [
        f"- case 6: derivation {listed([median(k['derive_ms']) for k in kdf_runs], '{:.2f}')} ms, "
        f"first of the process {listed([k['first_derive_ms'] for k in kdf_runs], '{:.2f}')} ms; "
        f"HMAC {listed([median(k['hmac_ns']) for k in kdf_runs], '{:.0f}')} ns; "
        f"ratio {listed([median(k['ratio']) for k in kdf_runs], '{:,.0f}')}x",
        f"- case 7: start-up {listed([r['startup'] for r in fleet_runs], '{:.2f}')} s, "
        f"bound {listed(bounds, '{:.2f}')} s; with 1 device {listed([r['startup'] for r in one_runs], '{:.2f}')} s",
        f"- case 8: reload {listed([r['reload'] for r in fleet_runs], '{:.2f}')} s; "
        f"label-only edit {listed([r['label'] for r in fleet_runs], '{:.2f}')} s",
        f"- case 9: worst latency during the reload {listed([max(r['reload_ms']) for r in fleet_runs], '{:.1f}')} ms "
        f"over {listed([len(r['reload_ms']) for r in fleet_runs], '{}')} probes; during the label edit "
        f"{listed([max(r['label_ms']) for r in fleet_runs], '{:.1f}')} ms; idle "
        f"{listed([r['idle_ms'] for r in fleet_runs], '{:.1f}')} ms; answers not 200: {failed}",
        f"- sender peak RSS: {listed([r['sender_rss'] / 1024 for r in fleet_runs], '{:.1f}')} MiB",
    ]
    return [
        "## Device keys: cases 6-9",
        "",
        *run_header(elapsed),
        f"- Loopback; release builds; {RUNS} rounds, the cases interleaved within each. Case 6 is "
        f"`common/examples/kdf_cost` on one thread ({KDF_ROUNDS} rounds of {KDF_DERIVATIONS} derivations, then "
        f"{KDF_HMACS:,} HMACs, each keyed anew); its figures are the medians over all rounds. Other times: "
        "the median of the rounds; RSS and latency: the highest.",
        "",
        "| case | ours | floor or peer | ratio | target |",
        "|---|---|---|---|---|",
        *[f"| {' | '.join(row)} |" for row in rows],
        "",
        "Every round, in order:",
        "",
        *run_rows,
    ]


MARK = "<!-- bench section {}: rewritten by a run that measures it -->"
END = "<!-- end of bench section {} -->"
TITLES = {"transfer": "Transfer: cases 1-5 and 11", "keys": "Device keys: cases 6-9", "slowlink": "Slow link: case 10",
          "history": "History: a receiver whose cost does not grow with the files stored"}


def main():
    unknown = [c for c in CASES if c not in SECTIONS]
    if unknown:
        sys.exit(f"unknown CASES {unknown}: choose from {' '.join(SECTIONS)}")
    # Nothing is deleted until the end: on ext4 a file created soon after
    # many were deleted costs measurably more (the allocator steps over
    # recently freed inodes), which would slow whichever case came next.
    work = tempfile.mkdtemp(prefix="logferry-bench-", dir=BENCH_DIR)
    measured = {}
    try:
        if "transfer" in CASES:
            measured["transfer"] = transfer_section(work)
        if "keys" in CASES:
            measured["keys"] = keys_section(work)
        if "slowlink" in CASES:
            measured["slowlink"] = bench_slowlink.slowlink_section(work, sys.modules[__name__])
        if "history" in CASES:
            measured["history"] = bench_history.history_section(work, sys.modules[__name__])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    path = os.path.join(ROOT, "BENCHMARKS.md")
    previous = open(path).read() if os.path.exists(path) else ""
    lines = [
        "# Benchmarks",
        "",
        "Produced by `scripts/bench.sh`. A run rewrites the sections it measures and keeps the others as",
        "they were (`CASES`, see the script), so each section says which run its figures come from. The notes",
        "below the tables are kept in `scripts/bench-notes.md`.",
        "",
    ]
    for name in SECTIONS:
        start, end = MARK.format(name), END.format(name)
        if name in measured:
            section = measured[name]
            print("\n".join(section) + "\n")
        elif start in previous and end in previous:
            section = previous[previous.index(start) + len(start):previous.index(end)].strip("\n").split("\n")
        else:
            section = [f"## {TITLES[name]}", "", f"Not measured yet: `CASES={name} scripts/bench.sh`."]
        lines += [start, *section, end, ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))
        notes = os.path.join(ROOT, "scripts", "bench-notes.md")
        if os.path.exists(notes):
            with open(notes) as n:
                f.write("\n" + n.read())


if __name__ == "__main__":
    main()
