"""The history section of the benchmark (issue 17): a receiver whose cost
does not grow with the files ever stored.

For each size in HISTORY_SIZES, a disk store of that many files over
HISTORY_DEVICES devices (each device's files 100 a day back from now, so
the last 24 hours hold 100 per device whatever the size; sparse 4 KiB
files, no checksum files, which no count reads) is made once, then:
`receiver reindex` (the rebuild: wall time, CPU, peak RSS), and a receiver
started on it with the summary there (time from exec until /v1/health
answers, CPU of the start) that then refreshes every second for
HISTORY_REFRESHES seconds (CPU per refresh, RSS). The page cache is
dropped before the rebuild and the start when run as root.
"""

import http.client
import os
import subprocess
import time

SIZES = [int(n) for n in os.environ.get("HISTORY_SIZES", "10000 100000 1000000").split()]
DEVICES = int(os.environ.get("HISTORY_DEVICES", "200"))
REFRESHES = int(os.environ.get("HISTORY_REFRESHES", "10"))
PER_DAY = 100
# Targets at a million files.
READY_S, REFRESH_CPU_S, RSS_MIB = 1.0, 0.1, 32


def device_ids():
    return [f"{0x4A5B0000_00000000 + n:016X}" for n in range(DEVICES)]


def make_store(root, files):
    """`files` files over the devices, newest now, PER_DAY a day each."""
    now = time.time()
    ids = device_ids()
    per_device = files // DEVICES
    for device in ids:
        for j in range(per_device):
            folder = os.path.join(root, device, f"day-{j // PER_DAY:05}")
            if j % PER_DAY == 0:
                os.makedirs(folder)
            path = os.path.join(folder, f"log-{j % PER_DAY:03}.log")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.ftruncate(fd, 4096)
            at = now - (per_device - j) * 86400 / PER_DAY
            os.utime(fd, (at, at))
            os.close(fd)
    return per_device * DEVICES


def drop_caches():
    if os.geteuid() == 0:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    return False


def reindex(b, ids_file, store):
    """(wall s, CPU s, peak RSS MiB, its log's last line) of `receiver reindex`,
    its CPU and peak RSS as `/usr/bin/time` reports them: the rusage of a
    child of this process would count the pages of this process that the
    child had before its exec (about 1 GiB after the transfer section)."""
    usage_file = os.path.join(os.path.dirname(store), "reindex-usage")
    started = time.perf_counter()
    process = subprocess.run(["/usr/bin/time", "-f", "%U %S %M", "-o", usage_file,
                              os.path.join(b.BIN, "receiver"), "--ids", ids_file, "--store", store, "reindex"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - started
    said = process.stderr.strip().splitlines()
    if process.returncode != 0:
        raise RuntimeError(f"reindex failed: {said}")
    with open(usage_file) as f:
        user, system, peak_kib = f.read().split()[-3:]
    return wall, float(user) + float(system), int(peak_kib) / 1024, said[-1] if said else ""


def rss_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def healthy(port):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        connection.request("GET", "/v1/health")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def serve(b, work, ids_file, store):
    """(ready s, CPU of the start s, CPU per refresh s, RSS MiB, peak RSS MiB)."""
    port = b.free_port()
    log = open(os.path.join(work, f"receiver-{port}.log"), "w")
    started = time.perf_counter()
    process = subprocess.Popen(
        [os.path.join(b.BIN, "receiver"), "--ids", ids_file, "--store", store, "--bind", "127.0.0.1",
         "--port", str(port), "--fleet-refresh", "1s"], stdout=subprocess.DEVNULL, stderr=log)
    try:
        while not healthy(port):
            if process.poll() is not None or time.perf_counter() - started > b.RUN_TIMEOUT:
                raise RuntimeError(f"receiver did not start; see {log.name}")
            time.sleep(0.005)
        ready = time.perf_counter() - started
        at_ready = b.cpu_seconds(process.pid)
        time.sleep(REFRESHES + 0.5)
        per_refresh = (b.cpu_seconds(process.pid) - at_ready) / REFRESHES
        return ready, at_ready, per_refresh, rss_kib(process.pid, "VmRSS") / 1024, rss_kib(process.pid, "VmHWM") / 1024
    finally:
        process.terminate()
        process.wait()
        log.close()


def history_section(work, b):
    started = time.perf_counter()
    rows, dropped = [], True
    for size in SIZES:
        root = os.path.join(work, f"history-{size}")
        store = os.path.join(root, "received_files")
        ids_file = os.path.join(root, "ids.txt")
        os.makedirs(store)
        with open(ids_file, "w") as f:
            f.write("".join(f"{device} pi-{n:03}\n" for n, device in enumerate(device_ids())))
        b.log(f"history: making a store of {size} files")
        made = make_store(store, size)
        dropped &= drop_caches()
        b.log(f"history: reindex of {made} files")
        wall, cpu, peak, said = reindex(b, ids_file, store)
        b.log(f"history: {said}")
        dropped &= drop_caches()
        b.log(f"history: start and {REFRESHES} refreshes")
        ready, start_cpu, per_refresh, rss, peak_serving = serve(b, work, ids_file, store)
        rows.append((made, wall, cpu, peak, ready, start_cpu, per_refresh, rss, peak_serving))
    table = [
        "| stored files | reindex: time | CPU | peak RSS | start with the summary: ready | CPU | "
        "per refresh: CPU | RSS after the refreshes | peak RSS serving |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for made, wall, cpu, peak, ready, start_cpu, per_refresh, rss, peak_serving in rows:
        table.append(f"| {made:,} | {wall:.2f} s | {cpu:.2f} s | {peak:.1f} MiB | {ready:.2f} s | {start_cpu:.2f} s | "
                     f"{per_refresh * 1e3:.1f} ms | {rss:.1f} MiB | {peak_serving:.1f} MiB |")
    largest = rows[-1]
    verdict = (f"At {largest[0]:,} files: ready {largest[4]:.2f} s (target <= {READY_S:.0f} s), "
               f"{largest[6] * 1e3:.1f} ms CPU per refresh (target <= {REFRESH_CPU_S * 1e3:.0f} ms), "
               f"RSS {largest[7]:.1f} MiB, peak {largest[8]:.1f} MiB (target <= {RSS_MIB} MiB).")
    return [
        "## History: a receiver whose cost does not grow with the files stored",
        "",
        *b.run_header(time.perf_counter() - started),
        f"- A disk store of each size over {DEVICES} devices ({PER_DAY} files a day each, newest now, so the last "
        f"24 hours hold {PER_DAY * DEVICES:,} files at every size), all listed in the ids file (their keys are "
        f"derived at start); the page cache {'dropped' if dropped else 'not dropped (not root)'} before the reindex "
        f"and before the start. The receiver refreshes every second, {REFRESHES} times; CPU per refresh includes "
        "its once-a-second ids file check.",
        "",
        *table,
        "",
        verdict,
    ]
