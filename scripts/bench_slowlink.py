"""Case 10 of the benchmark: a slow link (run it through scripts/bench.sh,
CASES=slowlink).

A network namespace made for the run, whose loopback is shaped by a token
bucket (tc tbf, 20 Mbit/s), carries every process of the case: the
receiver and the sender, an rsync daemon and its client, rclone's WebDAV
server and its client. Text logs made here (seeded) are delivered by each
in turn, round by round: logferry as it runs by default (`--compress
auto`), logferry `--compress none`, `rsync -z --compress-choice=zstd
--fsync --remove-source-files`, and `rclone move` to `rclone serve webdav`.
The bytes on the wire are the namespace's loopback counter (every packet,
both directions, headers included). A large file cut off mid-upload with
SIGKILL, then sent again, shows what a resumed upload sends twice.

bench.py calls `slowlink_section(work, bench)` with itself as `bench`, for
its helpers (`log`, `run_header`, `at_least`, `at_most`, `listed`) and its
settings (`BIN`, `RUNS`, `RUN_TIMEOUT`, `SENT`, `LOCK_FILE`). What its peers
share with those of the transfer section is in bench_peers.py.
"""

import hashlib
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import tempfile
import time

from bench_peers import (check_peers, cpu_seconds, files_in, interrupted, put_back, rclone_webdav,
                         rsync_daemon, stop, tool_env, verify, wait_listening)

SLOW_FILES = int(os.environ.get("SLOW_FILES", "200"))
SLOW_MB = float(os.environ.get("SLOW_MB", "100"))
RESUME_MIB = int(os.environ.get("RESUME_MIB", "64"))
# The shaping of the namespace's loopback. netem is not available here; a
# token bucket is. Without an MTU of 1500 on lo (65536 by default), a
# packet is larger than the bucket and tbf drops every one.
RATE_MBIT = 20
TBF = ["rate", f"{RATE_MBIT}mbit", "burst", "32kbit", "latency", "400ms"]
# The peers' servers listen from this port up, a new one for each run,
# inside the namespace, which is new and holds nothing else.
FIRST_PORT = 8730
# Targets: rsync's time over ours; our wire bytes over the raw bytes; the
# share of a cut-off file sent twice; the memory compression may add.
RSYNC_OVER_OURS = 1.2
WIRE_OVER_RAW = 0.2
RESENT_PERCENT = 10
COMPRESS_RSS_MIB = 4
# A file cut off mid-upload is killed when this share of a full run's wire
# bytes has gone out.
CUT_AT = 0.5

HOSTS = [f"{kind}-{n}" for kind in ("greenhouse", "coldroom", "field", "tunnel", "nursery") for n in range(1, 9)]
# name: (lowest, highest, decimals, step of the random walk per line)
SENSORS = {
    "soil_moisture": (20, 60, 1, 1.2), "temp_c": (12, 30, 2, 0.15), "rh": (35, 90, 1, 0.9),
    "co2_ppm": (380, 1400, 0, 18), "lux": (0, 42000, 0, 900), "ph": (5.2, 7.4, 2, 0.03),
    "ec_ms": (0.8, 3.2, 2, 0.03), "flow_lpm": (0, 14, 1, 0.6), "battery_v": (3.3, 4.2, 3, 0.006),
    "pressure_hpa": (990, 1030, 1, 0.15), "wind_ms": (0, 12, 1, 0.9),
}
WARNINGS = ['status=warn msg="sensor read retry {n}"', 'status=warn msg="value out of range"',
            'status=error msg="i2c timeout on bus {n}"', 'status=warn msg="battery low"']
# 2026-12-01T00:00:00Z
EPOCH = 1795996800


def log_text(rng, size):
    """`size` bytes of one device's log: a line a second or so, 3 to 5 of its
    sensors on random walks, a sequence number, now and then a warning."""
    host = rng.choice(HOSTS)
    names = rng.sample(sorted(SENSORS), rng.randint(3, 5))
    values = {name: rng.uniform(*SENSORS[name][:2]) for name in names}
    ms = rng.randrange(30 * 86400) * 1000
    seq = rng.randint(1, 10 ** 6)
    lines, length = [], 0
    while length < size:
        ms += rng.randint(900, 1100)
        seq += 1
        fields = []
        for name in names:
            low, high, decimals, step = SENSORS[name]
            values[name] = min(high, max(low, values[name] + rng.gauss(0, step)))
            fields.append(f"{name}={values[name]:.{decimals}f}")
        status = "status=ok" if rng.random() > 0.02 else rng.choice(WARNINGS).format(n=rng.randint(1, 4))
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(EPOCH + ms // 1000))
        line = f"{stamp}.{ms % 1000:03}Z {host} seq={seq} {' '.join(fields)} {status}\n"
        lines.append(line)
        length += len(line)
    text = "".join(lines).encode()[:size]
    # End on a whole line.
    return text[:text.rindex(b"\n") + 1] if b"\n" in text else text


def make_logs(folder, count, total, seed):
    """`count` log files of `total` bytes in all (sizes log-normal), two to a
    device folder. Returns {relative path: (size, sha256)}."""
    rng = random.Random(seed)
    weights = [rng.lognormvariate(0, 0.8) for _ in range(count)]
    sizes = [max(1024, int(total * w / sum(weights))) for w in weights]
    files = {}
    for i, size in enumerate(sizes):
        rel = f"{HOSTS[i // 2 % len(HOSTS)]}/2026-12-{1 + i % 30:02}-{i:04}.log"
        data = log_text(rng, size)
        path = os.path.join(folder, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        files[rel] = (len(data), hashlib.sha256(data).hexdigest())
    return files


def compressed_sizes(folder, files):
    """{compressor: the files' bytes after it, each file on its own}: the zstd
    CLI at levels 1, 3 (its default) and 9, or zlib's
    level 6 without the CLI."""
    sizes = {}
    for rel in files:
        path = os.path.join(folder, rel)
        if shutil.which("zstd"):
            for level in (1, 3, 9):
                out = subprocess.run(["zstd", f"-{level}", "-q", "-c", path], check=True, capture_output=True,
                                     timeout=120).stdout
                sizes[f"zstd -{level}"] = sizes.get(f"zstd -{level}", 0) + len(out)
        else:
            import zlib
            with open(path, "rb") as f:
                sizes["zlib -6 (no zstd CLI)"] = sizes.get("zlib -6 (no zstd CLI)", 0) + len(zlib.compress(f.read(), 6))
    return sizes


# Levels shown: the sender's (sender/src/body.rs, ZSTD_LEVELS: 1, 9, 15) and,
# to show why not them, 6 and 12.
SENDER_LEVELS = (1, 6, 9, 12, 15)
LEVEL_SAMPLE = 20_000_000


def level_table(folder, files):
    """[(level, ratio, MB/s of one core)] of `zstd -b` in 128 KiB frames, as
    the sender compresses, over the first LEVEL_SAMPLE bytes of the logs;
    empty without the zstd CLI."""
    if not shutil.which("zstd"):
        return []
    sample = os.path.join(folder, "..", "level-sample")
    with open(sample, "wb") as out:
        for rel in sorted(files):
            if out.tell() >= LEVEL_SAMPLE:
                break
            with open(os.path.join(folder, rel), "rb") as f:
                out.write(f.read())
    table = []
    for level in SENDER_LEVELS:
        done = subprocess.run(["zstd", f"-b{level}", "-B128K", "-i1", sample], capture_output=True, text=True,
                              timeout=300)
        found = re.findall(r"\(x([\d.]+)\),\s+([\d.]+) MB/s", (done.stdout + done.stderr).replace("\r", "\n"))
        if found:
            ratio, speed = found[-1]
            table.append((level, float(ratio), float(speed)))
    os.remove(sample)
    return table


class Namespace:
    """A network namespace of our own whose loopback is the slow link."""

    def __init__(self):
        self.name = f"logferry-bench-{os.getpid()}"
        subprocess.run(["ip", "netns", "add", self.name], check=True, timeout=30)
        try:
            subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "mtu", "1500", "up"], check=True, timeout=30)
            self.run("tc", "qdisc", "add", "dev", "lo", "root", "tbf", *TBF)
        except BaseException:
            self.delete()
            raise

    def args(self, *command):
        return ["ip", "netns", "exec", self.name, *command]

    def run(self, *command, timeout=60):
        return subprocess.run(self.args(*command), check=True, capture_output=True, text=True,
                              timeout=timeout).stdout

    def tx_bytes(self):
        return int(self.run("cat", "/sys/class/net/lo/statistics/tx_bytes"))

    def qdisc(self):
        return " ".join(self.run("tc", "-s", "qdisc", "show", "dev", "lo").split())

    def wait_port(self, port, process, what):
        """Until something listens on `port` in the namespace (bounded)."""
        probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), 1).close()"
        wait_listening(lambda: subprocess.run(self.args("python3", "-c", probe), capture_output=True,
                                              timeout=30).returncode == 0, process, what)

    def delete(self):
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True, timeout=30)



class Case:
    """What the case needs across its runs: the namespace, its processes, the
    test data, the ids file."""

    def __init__(self, work, bench, ns):
        self.work, self.bench, self.ns = work, bench, ns
        self.processes = []
        self.ports = FIRST_PORT - 1
        self.ids_file = os.path.join(work, "slow-ids.txt")
        open(self.ids_file, "w").close()
        raw = int(SLOW_MB * 1e6)
        # Each run is killed after this long: ample for the raw bytes at the
        # link's rate.
        self.timeout = max(bench.RUN_TIMEOUT, 60 + 4 * max(raw, RESUME_MIB << 20) * 8 / (RATE_MBIT * 1e6))

    def spawn(self, command, log_name, **kwargs):
        logfile = open(os.path.join(self.work, log_name), "a")
        # Each in a process group of its own, which `stop` ends whole.
        process = subprocess.Popen(self.ns.args(*command), stdout=logfile, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True, **kwargs)
        process.logfile = logfile
        self.processes.append(process)
        return process

    def stop_all(self):
        stop(*self.processes)
        for process in self.processes:
            process.logfile.close()
        self.processes = []

    def device(self, name, files_maker):
        """A device folder: logs/ to send (made by `files_maker(logs)`), its
        ID file; logferry moves what it delivered to sent_files/."""
        folder = os.path.join(self.work, name)
        logs = os.path.join(folder, "logs")
        os.makedirs(logs)
        files = files_maker(logs)
        made = subprocess.run([os.path.join(self.bench.BIN, "receiver"), "--ids", self.ids_file, "add-device"],
                              check=True, capture_output=True, text=True, timeout=60)
        id_file = os.path.join(folder, "device-id")
        with open(id_file, "w") as f:
            f.write(made.stdout)
        os.chmod(id_file, 0o600)
        return {"dir": folder, "logs": logs, "files": files, "id_file": id_file,
                "sent": os.path.join(folder, self.bench.SENT)}

    def receiver(self):
        """The release receiver in the namespace, in a fresh folder; returns
        (its process, its address, its store)."""
        folder = tempfile.mkdtemp(dir=self.work, prefix="slow-receiver-")
        shutil.copy(self.ids_file, os.path.join(folder, "ids.txt"))
        log_name = os.path.relpath(os.path.join(folder, "receiver.log"), self.work)
        process = self.spawn([os.path.join(self.bench.BIN, "receiver"), "--bind", "127.0.0.1", "--port", "0"],
                             log_name, cwd=folder)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with open(os.path.join(folder, "receiver.log")) as f:
                match = re.search(r"address=(\S+)", f.read())
            if match:
                return process, match.group(1), os.path.join(folder, "received_files")
            if process.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"the receiver did not start; see {folder}/receiver.log")

    def timed(self, command, log_name):
        """Runs a client in the namespace to its end (bounded), under GNU
        time: returns {"s": wall seconds, "wire": bytes on the wire, "rss":
        its peak RSS in KiB, "cpu": its CPU seconds (user + system)}."""
        rss_file = os.path.join(self.work, "peak-rss")
        command = ["/usr/bin/time", "-f", "%M %U %S", "-o", rss_file, *command]
        before = self.ns.tx_bytes()
        start = time.perf_counter()
        process = self.spawn(command, log_name, env=tool_env())
        try:
            code = process.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{command} took more than {self.timeout:.0f} s")
        seconds = time.perf_counter() - start
        wire = self.ns.tx_bytes() - before
        self.processes.remove(process)
        process.logfile.close()
        if code != 0:
            raise RuntimeError(f"{' '.join(command)} exited {code}; see {os.path.join(self.work, log_name)}")
        with open(rss_file) as f:
            peak, user, system = f.read().split()[-3:]
        return {"s": seconds, "wire": wire, "rss": int(peak), "cpu": float(user) + float(system)}

    def sender_args(self, device, address, compress):
        args = [os.path.join(self.bench.BIN, "sender"), f"http://{address}", device["logs"],
                "--id-file", device["id_file"], "--min-age", "0"]
        return args + (["--compress", compress] if compress else [])

    def check_delivered(self, device, store):
        """The receiver holds every file intact, the sender moved them all to
        its sent folder; then they go back for the next run."""
        stored = [n for n in os.listdir(store) if not n.startswith(".")]
        if len(stored) != 1:
            raise RuntimeError(f"the store holds {stored}, not one device folder")
        verify(os.path.join(store, stored[0]), device["files"], "logferry")
        left = files_in(device["logs"])
        if left:
            raise RuntimeError(f"{len(left)} files were not delivered, e.g. {left[0]}")
        verify(device["sent"], device["files"], "logferry's sent folder")
        put_back(device["sent"], device["logs"], device["files"])

    def stop_receiver(self, receiver):
        stop(receiver)
        self.processes.remove(receiver)
        receiver.logfile.close()

    def logferry(self, device, compress, name):
        receiver, address, store = self.receiver()
        try:
            run = self.timed(self.sender_args(device, address, compress), f"{name}.log")
            run["receiver_cpu"] = cpu_seconds(receiver.pid)
        finally:
            self.stop_receiver(receiver)
        self.check_delivered(device, store)
        shutil.rmtree(os.path.dirname(store))
        return run

    def rsync(self, device):
        """rsync -z zstd to a fresh rsync daemon with an empty module folder."""
        dest = tempfile.mkdtemp(dir=self.work, prefix="rsync-dest-")
        port = self.port()
        daemon, url = rsync_daemon(self.work, port, dest)
        server = self.spawn(daemon, "rsyncd.out", env=tool_env())
        client = ["rsync", "-a", "-z", "--compress-choice=zstd", "--fsync", "--remove-source-files",
                  device["logs"] + "/", url]
        return self.peer(server, port, client, device, dest, "rsync")

    def rclone(self, device):
        """rclone move to a fresh `rclone serve webdav` of an empty folder (a
        server kept from an earlier run would answer from its directory
        cache that the files are there already, and rclone would delete the
        sources without sending them)."""
        dest = tempfile.mkdtemp(dir=self.work, prefix="webdav-dest-")
        port = self.port()
        command, client = rclone_webdav(self.work, port, dest, device["logs"])
        server = self.spawn(command, "webdav.log", env=tool_env())
        return self.peer(server, port, client, device, dest, "rclone")

    def port(self):
        """A port not used before in the namespace (none left in TIME_WAIT)."""
        self.ports += 1
        return self.ports

    def peer(self, server, port, client, device, dest, name):
        """A peer's run: timed from its client's start, the destination
        checked, the files put back."""
        try:
            self.ns.wait_port(port, server, f"the {name} server")
            run = self.timed(client, f"{name}.log")
        finally:
            stop(server)
            self.processes.remove(server)
            server.logfile.close()
        verify(dest, device["files"], name)
        left = files_in(device["logs"])
        if left:
            raise RuntimeError(f"{name} left {len(left)} source files, e.g. {left[0]}")
        put_back(dest, device["logs"], device["files"])
        return run

    def resume(self, device):
        """One large file, `--compress none`: a run uncut, then a run killed
        with SIGKILL once about half of that is on the wire, then a run that
        finishes it, against the same receiver. Returns the wire bytes of
        each and what the receiver held in .partial/ between the two."""
        full = self.logferry(device, "none", "resume-full")
        receiver, address, store = self.receiver()
        try:
            cut_at = full["wire"] * CUT_AT
            before = self.ns.tx_bytes()
            process = self.spawn(self.sender_args(device, address, "none"), "resume-cut.log", env=tool_env())
            deadline = time.monotonic() + self.timeout
            while self.ns.tx_bytes() - before < cut_at:
                if process.poll() is not None:
                    raise RuntimeError(f"the sender to be cut off exited {process.returncode} before half-way")
                if time.monotonic() > deadline:
                    raise RuntimeError("the sender to be cut off did not get half-way in time")
                time.sleep(0.02)
            # The sender itself (`ip netns exec` execs it): it gets no chance
            # to tidy up.
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
            self.processes.remove(process)
            process.logfile.close()
            # What the kernel still had queued goes out after the kill: count
            # it, until the counter has stood still for half a second (bounded).
            last, still = self.ns.tx_bytes(), 0
            for _ in range(200):
                time.sleep(0.1)
                now = self.ns.tx_bytes()
                still = still + 1 if now == last else 0
                last = now
                if still >= 5:
                    break
            first = last - before
            partial_dir = os.path.join(store, ".partial")
            held = sum(os.path.getsize(os.path.join(partial_dir, p)) for p in files_in(partial_dir)) \
                if os.path.isdir(partial_dir) else 0
            second = self.timed(self.sender_args(device, address, "none"), "resume-finish.log")
        finally:
            self.stop_receiver(receiver)
        self.check_delivered(device, store)
        shutil.rmtree(os.path.dirname(store))
        return {"full": full["wire"], "first": first, "second": second["wire"], "held": held,
                "full_s": full["s"], "second_s": second["s"]}


def check_tools():
    """The peers as the case needs them: fails early, with what is missing."""
    return check_peers(("ip", "tc", "rsync", "rclone", "/usr/bin/time"), compress=True)


def ratio_at_most(value, goal):
    return f"≤ {goal}x: " + ("met" if value <= goal else f"**missed** by {value - goal:.3f}x")


def slowlink_section(work, bench):
    """Case 10. Returns the section's lines."""
    started = time.perf_counter()
    rsync_version, rclone_version = check_tools()
    # A SIGTERM, like a Ctrl-C, ends the case through the `finally` below.
    previous = signal.signal(signal.SIGTERM, interrupted)
    ns = Namespace()
    try:
        case = Case(work, bench, ns)
        try:
            return measure(case, bench, started, rsync_version, rclone_version)
        finally:
            case.stop_all()
    finally:
        ns.delete()
        signal.signal(signal.SIGTERM, previous)


def measure(case, bench, started, rsync_version, rclone_version):
    ns, log = case.ns, bench.log
    log(f"slowlink: namespace {ns.name}, lo shaped by tbf {' '.join(TBF)}")
    log(f"slowlink: making the test data ({SLOW_FILES} files, {SLOW_MB:g} MB; one of {RESUME_MIB} MiB)")
    logs = case.device("slow-device", lambda logs: make_logs(logs, SLOW_FILES, int(SLOW_MB * 1e6), 10))
    big = case.device("slow-resume", lambda logs: make_logs(logs, 1, RESUME_MIB << 20, 11))
    raw = sum(size for size, _ in logs["files"].values())
    compressed = compressed_sizes(logs["logs"], logs["files"])
    levels = level_table(logs["logs"], logs["files"])

    runs = {"auto": [], "none": [], "rsync": [], "rclone": []}
    resumes = []
    for round_ in range(1, bench.RUNS + 1):
        log(f"slowlink: round {round_} of {bench.RUNS}")
        for key, run in (("auto", lambda: case.logferry(logs, None, "logferry-auto")),
                         ("rsync", lambda: case.rsync(logs)),
                         ("none", lambda: case.logferry(logs, "none", "logferry-none")),
                         ("rclone", lambda: case.rclone(logs))):
            runs[key].append(run())
            r = runs[key][-1]
            log(f"  {LABELS[key]}: {r['s']:.1f} s, {r['wire'] / 1e6:.2f} MB on the wire, "
                f"client CPU {r['cpu']:.1f} s")
        resumes.append(case.resume(big))
        r = resumes[-1]
        log(f"  resume: uncut {r['full'] / 1e6:.1f} MB, cut off at {r['first'] / 1e6:.1f} MB "
            f"(the receiver held {r['held'] / 1e6:.1f} MB), then {r['second'] / 1e6:.1f} MB")
    qdisc = ns.qdisc()
    elapsed = time.perf_counter() - started
    return report(runs, resumes, raw, compressed, levels, qdisc, elapsed, bench, rsync_version, rclone_version)


LABELS = {"auto": "logferry (auto)", "none": "logferry --compress none", "rsync": "rsync -z zstd",
          "rclone": "rclone move"}


def report(runs, resumes, raw, compressed, levels, qdisc, elapsed, bench, rsync_version, rclone_version):
    median, listed = statistics.median, bench.listed
    seconds = {k: median(r["s"] for r in v) for k, v in runs.items()}
    wire = {k: median(r["wire"] for r in v) for k, v in runs.items()}
    peak = {k: max(r["rss"] for r in runs[k]) / 1024 for k in ("auto", "none")}
    resent = [(r["first"] + r["second"] - r["full"]) / r["full"] for r in resumes]
    # A file sent once measures a hair either side of 0 (the ACKs vary): no -0.0.
    resent = [round(f, 3) + 0.0 for f in resent]
    resent_pct = median(resent) * 100
    rss_gap = peak["auto"] - peak["none"]
    link_seconds = raw * 8 / (RATE_MBIT * 1e6)
    mb = lambda b: f"{b / 1e6:.1f} MB"  # noqa: E731
    rows = [
        ("10. logferry (default `--compress auto`): time",
         f"{seconds['auto']:.1f} s ({raw / 1e6 / seconds['auto']:.2f} MB/s of logs)",
         f"rsync -z zstd {seconds['rsync']:.1f} s", f"{seconds['rsync'] / seconds['auto']:.2f}x",
         bench.at_least(round(seconds["rsync"] / seconds["auto"], 2), RSYNC_OVER_OURS, "x")),
        ("10. logferry (auto): its wire bytes at the link's rate, against its time",
         f"{wire['auto'] * 8 / (RATE_MBIT * 1e6):.1f} s of {seconds['auto']:.1f} s",
         f"rsync: {wire['rsync'] * 8 / (RATE_MBIT * 1e6):.1f} s of {seconds['rsync']:.1f} s",
         f"{wire['auto'] * 8 / (RATE_MBIT * 1e6) / seconds['auto']:.2f}x", ""),
        ("10. logferry (auto): bytes on the wire", mb(wire["auto"]), f"the logs: {mb(raw)}",
         f"{wire['auto'] / raw:.3f}x", ratio_at_most(round(wire["auto"] / raw, 3), WIRE_OVER_RAW)),
        ("10. logferry `--compress none`: time / bytes on the wire",
         f"{seconds['none']:.1f} s / {mb(wire['none'])}",
         f"the logs at {RATE_MBIT} Mbit/s: {link_seconds:.1f} s",
         f"{seconds['none'] / link_seconds:.2f}x / {wire['none'] / raw:.3f}x", ""),
        ("10. rsync -z zstd: time / bytes on the wire", f"{seconds['rsync']:.1f} s / {mb(wire['rsync'])}",
         f"logferry (auto) {seconds['auto']:.1f} s",
         f"{seconds['rsync'] / seconds['auto']:.2f}x / {wire['rsync'] / raw:.3f}x", ""),
        ("10. rclone move to WebDAV: time / bytes on the wire", f"{seconds['rclone']:.1f} s / {mb(wire['rclone'])}",
         f"logferry (auto) {seconds['auto']:.1f} s",
         f"{seconds['rclone'] / seconds['auto']:.2f}x / {wire['rclone'] / raw:.3f}x", ""),
        (f"10. resume: one {RESUME_MIB} MiB log (`--compress none`) killed about half-way, then sent again: "
         "bytes sent twice", f"{resent_pct:.1f} %", f"the uncut run: {mb(median(r['full'] for r in resumes))}", "",
         bench.at_most(round(resent_pct, 1), RESENT_PERCENT, "%")),
        ("10. sender peak RSS, auto / none", f"{peak['auto']:.1f} / {peak['none']:.1f} MiB", "",
         f"{rss_gap:+.1f} MiB", bench.at_most(round(rss_gap, 1), COMPRESS_RSS_MIB, "MiB")),
    ]
    run_rows = []
    for key, label in LABELS.items():
        rs = runs[key]
        row = (f"- {label}: {listed([r['s'] for r in rs], '{:.1f}')} s; "
               f"{listed([r['wire'] / 1e6 for r in rs], '{:.2f}')} MB on the wire; "
               f"client CPU {listed([r['cpu'] for r in rs], '{:.1f}')} s, "
               f"peak RSS {listed([r['rss'] / 1024 for r in rs], '{:.1f}')} MiB")
        if "receiver_cpu" in rs[0]:
            row += f"; receiver CPU {listed([r['receiver_cpu'] for r in rs], '{:.1f}')} s"
        run_rows.append(row)
    run_rows += [
        f"- resume: uncut {listed([r['full'] / 1e6 for r in resumes], '{:.2f}')} MB in "
        f"{listed([r['full_s'] for r in resumes], '{:.1f}')} s; cut off at "
        f"{listed([r['first'] / 1e6 for r in resumes], '{:.2f}')} MB "
        f"({listed([100 * r['first'] / r['full'] for r in resumes], '{:.0f}')} % of the uncut run; the receiver "
        f"then held {listed([r['held'] / 1e6 for r in resumes], '{:.2f}')} MB in `.partial/`); the run after it "
        f"{listed([r['second'] / 1e6 for r in resumes], '{:.2f}')} MB in "
        f"{listed([r['second_s'] for r in resumes], '{:.1f}')} s; sent twice "
        f"{listed([f * 100 for f in resent], '{:.1f}')} %",
        f"- the link at the end of the case: `{qdisc}`",
    ]
    compression = " / ".join(f"`{name}` {raw / size:.2f}x" for name, size in compressed.items())
    rounds = f"{bench.RUNS} round" + ("s" if bench.RUNS != 1 else "")
    return [
        "## Slow link: case 10",
        "",
        *bench.run_header(elapsed),
        "- A network namespace made by the run, its loopback at MTU 1500 and shaped by "
        f"`tc qdisc add dev lo root tbf {' '.join(TBF)}`; every process of the case runs in it. "
        "Bytes on the wire: the namespace's `lo` tx counter over the run (both directions, headers included).",
        f"- {SLOW_FILES} text logs, {raw / 1e6:.1f} MB in all (seeded: timestamped sensor lines, a few "
        f"warnings); each file on its own, {compression} smaller (logferry's wire bytes: "
        f"{raw / wire['auto']:.2f}x). Each run starts from the same files and an empty destination, "
        "checked file by file afterwards (size and SHA-256).",
        f"- Peers: {rsync_version}, `rsync -a -z --compress-choice=zstd --fsync --remove-source-files` to an "
        f"rsync daemon; {rclone_version}, `rclone move` (its defaults: 4 transfers, no compression on the wire) "
        "to `rclone serve webdav`; both on the namespace's loopback.",
        f"- {rounds}, the runs interleaved within each; the median of the rounds (peak RSS: the highest).",
        *([f"- zstd levels on {LEVEL_SAMPLE / 1e6:g} MB of these logs in 128 KiB frames, as it "
           "compresses them (`zstd -b<level> -B128K -i1`, one core of this machine): "
           + ", ".join(f"level {lv} {ratio:.2f}x at {speed:.0f} MB/s" for lv, ratio, speed in levels)
           + ". The sender uses 1, 9 and 15: it starts at level 1 and moves up while the device's CPU is mostly idle, down when it is busy (sender/src/body.rs)."]
          if levels else []),
        "",
        "| case | ours | peer or reference | ratio | target |",
        "|---|---|---|---|---|",
        *[f"| {' | '.join(row)} |" for row in rows],
        "",
        "Every round, in order:",
        "",
        *run_rows,
    ]
