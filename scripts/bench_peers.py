"""What the benchmark's peers share (rsync, rclone): their servers'
configuration and command lines, stopping them, checking what they
delivered and putting the files back. Used by bench.py (cases 1 and 2, on
the machine's loopback) and bench_slowlink.py (case 10, in a network
namespace of its own).
"""

import hashlib
import os
import re
import shutil
import signal
import subprocess
import time


def tool_env():
    """The environment without the variables that would steer rsync or
    rclone (a user's remotes, passwords, options)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("RCLONE_", "RSYNC_"))}


def cpu_seconds(pid, waited=False):
    """User + system CPU seconds of a running process (`ip netns exec` execs
    the command, so the pid is the receiver's own); with `waited`, those of
    the children it has waited for too (an rsync daemon reaps the process
    it forks for each connection, and that one its own)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15 if waited else 13]) / os.sysconf("SC_CLK_TCK")


def interrupted(signum, frame):
    """A SIGTERM handler: ends a case like a Ctrl-C, through its `finally`s,
    which stop the servers it started."""
    raise KeyboardInterrupt(f"signal {signum}")


def signal_group(process, sig):
    """Signals a process we started and whatever it started: its own process
    group (GNU time does not pass a SIGTERM on to the sender). False when
    none of them is left."""
    try:
        os.killpg(process.pid, sig)
        return True
    except ProcessLookupError:
        return False


def stop(*processes):
    """Ends processes we started, and theirs: SIGTERM, then SIGKILL to what
    is left after 10 s."""
    for process in processes:
        signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for process in processes:
        while (process.poll() is None or signal_group(process, 0)) and time.monotonic() < deadline:
            time.sleep(0.05)
        signal_group(process, signal.SIGKILL)
        process.wait(timeout=10)


def files_in(folder):
    return sorted(os.path.relpath(os.path.join(d, n), folder) for d, _, names in os.walk(folder) for n in names)


def verify(folder, files, what):
    """Every file in `folder` with its size and SHA-256 (a missing, short or
    altered one fails the benchmark)."""
    for rel, (size, digest) in files.items():
        path = os.path.join(folder, rel)
        if not os.path.isfile(path):
            raise RuntimeError(f"{what}: {rel} is missing from {folder}")
        with open(path, "rb") as f:
            data = f.read()
        if len(data) != size or hashlib.sha256(data).hexdigest() != digest:
            raise RuntimeError(f"{what}: {rel} arrived with {len(data)} bytes, not the {size} sent, or altered")


def put_back(origin, logs, files):
    """Moves the files from where a run left them back into `logs`, and
    removes what else is left there (empty folders, a lock file)."""
    for rel in files:
        target = os.path.join(logs, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.rename(os.path.join(origin, rel), target)
    shutil.rmtree(origin)
    os.makedirs(origin)


def children(pid):
    """The pids of a running process's children."""
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found += f.read().split()
    return found


def wait_listening(connects, process, what):
    """Until `connects()` holds (bounded: 10 s)."""
    for _ in range(100):
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited {process.returncode} before listening")
        if connects():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} is not listening after 10 s")


def rsync_daemon(work, port, dest):
    """The command of an rsync daemon on `port` whose module `logs` is
    `dest` (its config written into `work`), and the URL to push to."""
    conf = os.path.join(work, f"rsyncd-{port}.conf")
    with open(conf, "w") as f:
        f.write(f"use chroot = no\nuid = 0\ngid = 0\nlog file = {work}/rsyncd.log\n"
                f"[logs]\n    path = {dest}\n    read only = no\n")
    return (["rsync", "--daemon", "--no-detach", f"--config={conf}", f"--port={port}"],
            f"rsync://127.0.0.1:{port}/logs/")


def rclone_webdav(work, port, dest, source):
    """The commands of `rclone serve webdav` of `dest` on `port` and of an
    `rclone move` of `source` to it, with an empty rclone config."""
    conf = os.path.join(work, "rclone.conf")
    open(conf, "w").close()
    server = ["rclone", "serve", "webdav", dest, "--addr", f"127.0.0.1:{port}", "--config", conf]
    client = ["rclone", "move", source, ":webdav:", "--webdav-url", f"http://127.0.0.1:{port}", "--config", conf]
    return server, client


def check_peers(tools, compress=False):
    """The peers' tools, as a case needs them; fails early with what is
    missing. rsync needs --fsync (and with `compress`, zstd): 3.2.4 or later.
    Returns the rsync and rclone versions, as they print them."""
    for tool in tools:
        if not shutil.which(tool):
            raise RuntimeError(f"the benchmark needs {tool} (scripts/bench.sh installs it)")
    version = subprocess.run(["rsync", "--version"], capture_output=True, text=True, timeout=30).stdout
    usage = subprocess.run(["rsync", "--help"], capture_output=True, text=True, timeout=30).stdout
    if "--fsync" not in usage:
        raise RuntimeError("this rsync has no --fsync (3.2.4 or later has it)")
    if compress:
        compressors = re.search(r"Compress list:\s*\n\s*(.*)", version)
        if not compressors or "zstd" not in compressors.group(1).split():
            raise RuntimeError("this rsync has no zstd compression (3.2.4 or later has it)")
    rclone = subprocess.run(["rclone", "version"], capture_output=True, text=True, timeout=30).stdout
    return " ".join(version.split("\n")[0].split("protocol")[0].split()), rclone.split("\n")[0].strip()
