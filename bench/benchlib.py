"""Shared pieces of the bench scripts: paths, starting and stopping servers by PID,
perf_analyzer runs with CPU accounting, statistics deltas, loadgen runs and markdown tables.
Standard library only, so any python3 can run the scripts (the servers and clients run from
their own venvs)."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
ANCHORS = Path(os.environ.get("ANCHORS", ROOT.parent / "shared" / "anchors")).resolve()
VENVS = Path(os.environ.get("BENCH_VENVS", ROOT / ".bench-venvs")).resolve()
NAIAD_VENV = Path(os.environ.get("NAIAD_VENV", ROOT / ".venv")).resolve()
PA = VENVS / "client" / "bin" / "perf_analyzer"
LOADGEN_PY = VENVS / "loadgen" / "bin" / "python"
TRITON_VENV = VENVS / "triton"
CLK = os.sysconf("SC_CLK_TCK")
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def need(path: Path, what: str) -> None:
    if not path.exists():
        sys.exit(f"{what} not found at {path}: run  bash bench/setup.sh")


def port_free(port: int) -> bool:
    with socket.socket() as c:
        c.settimeout(0.3)
        if c.connect_ex(("127.0.0.1", port)) == 0:
            return False
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(start: int, n: int) -> int:
    """First base >= start with start..start+n-1 all free on 127.0.0.1 (step 10)."""
    base = start
    while not all(port_free(base + i) for i in range(n)):
        base += 10
        if base > start + 2000:
            sys.exit(f"no {n} free ports from {start}")
    return base


def http_get(url: str, timeout: float = 2.0):
    try:
        with _OPENER.open(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except Exception as e:
        return None, str(e).encode()


# ----------------------------------------------------------------------------------- CPU


def _stat(pid: int):
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return int(rest[1]), int(rest[11]) + int(rest[12])  # ppid, utime + stime (ticks)
    except (OSError, IndexError, ValueError):
        return None


def tree_ticks(pid: int) -> int:
    """CPU ticks of pid and all its live descendants."""
    if not pid:
        return 0
    procs = {}
    for d in os.listdir("/proc"):
        if d.isdigit() and (s := _stat(int(d))):
            procs[int(d)] = s
    kids: dict[int, list[int]] = {}
    for p, (pp, _) in procs.items():
        kids.setdefault(pp, []).append(p)
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        if p in procs:
            total += procs[p][1]
        todo.extend(kids.get(p, []))
    return total


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return sum(v) - idle, sum(v)


class CpuMeter:
    """CPU % (of one core) used by a server tree and by the whole machine over a window."""

    def __init__(self, server_pid: int = 0):
        self.pid = server_pid
        self.t0 = time.monotonic()
        self.s0 = tree_ticks(server_pid)
        self.m0 = machine_ticks()

    def stop(self) -> dict:
        dt = time.monotonic() - self.t0
        s1, m1 = tree_ticks(self.pid), machine_ticks()
        busy, total = m1[0] - self.m0[0], m1[1] - self.m0[1]
        ncpu = os.cpu_count() or 1
        return {
            "server_cpu_pct": 100.0 * (s1 - self.s0) / CLK / dt if self.pid else None,
            "machine_cpu_pct": 100.0 * ncpu * busy / total if total else None,
            "wall_s": dt,
        }


# ----------------------------------------------------------------------------------- servers


class Server:
    def __init__(self, name: str, pid: int, url: str, log_path: Path, popen=None, kind=""):
        self.name, self.pid, self.url, self.log, self.popen, self.kind = (
            name,
            pid,
            url,
            log_path,
            popen,
            kind,
        )

    @property
    def hostport(self) -> str:
        return self.url.split("://", 1)[1]

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        s = _stat(self.pid)
        if s is None:
            return False
        with open(f"/proc/{self.pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"

    def stop(self, timeout: float = 30.0) -> None:
        if not self.pid or not self.alive():
            return
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        end = time.monotonic() + timeout
        while time.monotonic() < end and self.alive():
            time.sleep(0.2)
        if self.alive():
            log(f"{self.name}: pid {self.pid} still up after SIGTERM, sending SIGKILL")
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.popen is not None:
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                pass
        log(f"stopped {self.name} (pid {self.pid})")


def wait_ready(srv: Server, models: list[str], timeout: float = 180.0) -> None:
    paths = ["/v2/health/ready"] + [f"/v2/models/{m}/ready" for m in models]
    end = time.monotonic() + timeout
    while True:
        if not srv.alive():
            tail = srv.log.read_text(errors="replace")[-3000:] if srv.log.exists() else ""
            raise RuntimeError(f"{srv.name} exited during start-up; log {srv.log}:\n{tail}")
        if all(http_get(srv.url + p)[0] == 200 for p in paths):
            return
        if time.monotonic() > end:
            st = {p: http_get(srv.url + p) for p in paths}
            srv.stop()
            raise RuntimeError(f"{srv.name} not ready after {timeout:.0f}s: {st}; log {srv.log}")
        time.sleep(0.3)


def _naiad_ports(exe: Path, port: int, env: dict[str, str] | None = None) -> list[str]:
    """Triton's layout for the other endpoints naiad has (gRPC = HTTP + 1, metrics = HTTP + 2),
    so that a default port (8001, 8002) taken by other work on the machine cannot stop it."""
    text = subprocess.run(
        [str(exe), "serve", "--help"],
        capture_output=True,
        text=True,
        env=dict(os.environ, **(env or {})),
    ).stdout
    flags = []
    for flag, offset in (("--grpc-port", 1), ("--metrics-port", 2)):
        if flag in text:
            flags += [flag, str(port + offset)]
    return flags


def start_naiad(
    repo: Path,
    port: int,
    workdir: Path,
    models: list[str],
    name="naiad",
    extra: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> Server:
    """``env``: added to the environment (e.g. PYTHONPATH of another checkout's packages)."""
    exe = NAIAD_VENV / "bin" / "naiad"
    need(exe, "naiad")
    logp = workdir / f"{name}.log"
    cmd = [
        str(exe),
        "serve",
        "--model-repository",
        str(repo),
        "--http-address",
        "127.0.0.1",
        "--http-port",
        str(port),
        "--exit-on-error=false",
        *_naiad_ports(exe, port, env),
        *(extra or []),
    ]
    f = open(logp, "wb")
    p = subprocess.Popen(
        cmd,
        stdout=f,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=dict(os.environ, **(env or {})),
    )
    srv = Server(name, p.pid, f"http://127.0.0.1:{port}", logp, p, "naiad")
    wait_ready(srv, models)
    log(f"{name} ready: {srv.url} pid {srv.pid} (log {logp})")
    return srv


def start_triton(repo: Path, port: int, workdir: Path, models: list[str], name="triton") -> Server:
    need(TRITON_VENV / "bin" / "tritonserver", "tritonserver")
    logp = workdir / f"{name}.log"
    env = dict(os.environ, VENV=str(TRITON_VENV))
    f = open(logp, "wb")
    # serve.sh execs tritonserver: the Popen pid is the server's
    p = subprocess.Popen(
        [
            "bash",
            str(ANCHORS / "triton" / "serve.sh"),
            str(repo),
            str(port),
            str(port + 1),
            str(port + 2),
        ],
        stdout=f,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    srv = Server(name, p.pid, f"http://127.0.0.1:{port}", logp, p, "triton")
    wait_ready(srv, models)
    log(f"{name} ready: {srv.url} pid {srv.pid} (log {logp})")
    return srv


def start_anchor(kind: str, port: int, workdir: Path, args: list[str], name: str) -> Server:
    """MLServer or KServe through the anchor's serve.sh (prints the PID once ready)."""
    venv = VENVS / kind
    need(venv / "bin" / "python", f"{kind} venv")
    wd = workdir / name
    r = subprocess.run(
        [
            "bash",
            str(ANCHORS / kind / "serve.sh"),
            str(port),
            "--venv",
            str(venv),
            "--workdir",
            str(wd),
            *args,
        ],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    if r.returncode != 0 or not r.stdout.strip().isdigit():
        raise RuntimeError(f"{name}: serve.sh failed (rc {r.returncode}):\n{r.stderr[-3000:]}")
    srv = Server(
        name, int(r.stdout.strip()), f"http://127.0.0.1:{port}", wd / "server.log", None, kind
    )
    log(f"{name} ready: {srv.url} pid {srv.pid} (log {srv.log})")
    return srv


class Servers:
    """Every server started, stopped (by PID) on exit, SIGINT or SIGTERM."""

    def __init__(self):
        self.all: list[Server] = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._signal)

    def add(self, srv: Server) -> Server:
        self.all.append(srv)
        return srv

    def _signal(self, signum, frame):
        log(f"signal {signum}: stopping servers")
        self.stop_all()
        sys.exit(130)

    def stop_all(self):
        while self.all:
            self.all.pop().stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop_all()


# ----------------------------------------------------------------------------------- stats


def model_counts(srv: Server, model: str) -> tuple[int, int] | None:
    """(inference_count, execution_count) from the V2 statistics extension."""
    code, body = http_get(f"{srv.url}/v2/models/{model}/stats")
    if code != 200:
        return None
    try:
        s = json.loads(body)["model_stats"]
        return sum(m["inference_count"] for m in s), sum(m["execution_count"] for m in s)
    except (ValueError, KeyError):
        return None


# ----------------------------------------------------------------------------------- perf_analyzer


def run_pa(
    srv: Server,
    model: str,
    conc: int,
    interval_ms: int,
    outdir: Path,
    tag: str,
    batch: int = 1,
    extra: list[str] | None = None,
    timeout: float = 300,
    protocol: str = "http",
    hostport: str | None = None,
) -> dict:
    """One perf_analyzer level (HTTP binary tensors, or ``protocol="grpc"`` at ``hostport``;
    sync), with CPU and batching accounting."""
    need(PA, "perf_analyzer")
    outdir.mkdir(parents=True, exist_ok=True)
    stem = f"{tag}-{model}-b{batch}-c{conc}".replace("/", "_")
    csvp, logp = outdir / f"{stem}.csv", outdir / f"{stem}.log"
    cmd = [
        str(PA),
        "-m",
        model,
        "-u",
        hostport or srv.hostport,
        "-i",
        protocol,
        "-b",
        str(batch),
        "--concurrency-range",
        f"{conc}:{conc}",
        "--measurement-interval",
        str(interval_ms),
        "--stability-percentage",
        "999",
        "-f",
        str(csvp),
        *(extra or []),
    ]
    row = {
        "tool": "perf_analyzer",
        "target": srv.name,
        "model": model,
        "batch": batch,
        "concurrency": conc,
        "tag": tag,
        "protocol": protocol,
        "cmd": " ".join(cmd[1:]),
    }
    c0 = model_counts(srv, model)
    meter = CpuMeter(srv.pid)
    r0 = os.times()
    with open(logp, "wb") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            rc = p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            rc = "timeout"
    cpu = meter.stop()
    r1 = os.times()
    c1 = model_counts(srv, model)
    client = (
        100.0
        * ((r1.children_user - r0.children_user) + (r1.children_system - r0.children_system))
        / cpu["wall_s"]
    )
    row.update(cpu, client_cpu_pct=client)
    if c0 and c1 and c1[1] > c0[1]:
        row["avg_batch"] = (c1[0] - c0[0]) / (c1[1] - c0[1])
    if rc != 0 or not csvp.exists() or csvp.stat().st_size == 0:
        text = logp.read_text(errors="replace")
        err = [
            ln for ln in text.splitlines() if "rror" in ln or "ailed" in ln
        ] or text.splitlines()[-3:]
        row.update(failed=True, error=f"rc={rc}: " + " / ".join(err)[-400:])
        return row
    with open(csvp, newline="") as f:
        rec = next(csv.DictReader(f))
    row.update(
        infer_per_s=float(rec["Inferences/Second"]),
        p50_ms=float(rec["p50 latency"]) / 1000,
        p90_ms=float(rec["p90 latency"]) / 1000,
        p99_ms=float(rec["p99 latency"]) / 1000,
        server_us=sum(
            float(rec.get(k) or 0)
            for k in (
                "Server Queue",
                "Server Compute Input",
                "Server Compute Infer",
                "Server Compute Output",
            )
        ),
    )
    return row


# ----------------------------------------------------------------------------------- loadgen


def run_loadgen(
    srv: Server,
    model: str,
    conc: int,
    seconds: float,
    warmup: float,
    binary: bool,
    label: str,
    group: str,
    shape: str = "16",
    check: bool = True,
    timeout_s: float = 60,
    input_name: str = "input",
    output_name: str = "output",
) -> dict:
    """One loadgen.py level; the JSON line it prints (or a failed row)."""
    need(LOADGEN_PY, "loadgen venv")
    cmd = [
        str(LOADGEN_PY),
        str(ANCHORS / "loadgen.py"),
        "--url",
        srv.url,
        "--model",
        model,
        "--group",
        group,
        "--concurrency",
        str(conc),
        "--seconds",
        str(seconds),
        "--warmup",
        str(warmup),
        "--shape",
        shape,
        "--label",
        label,
        "--server-pid",
        str(srv.pid),
        "--timeout",
        str(timeout_s),
        "--input-name",
        input_name,
        "--output-name",
        output_name,
    ]
    if binary:
        cmd.append("--binary")
    if not check:
        cmd.append("--no-check")
    r = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=seconds + warmup + timeout_s + 60,
    )
    base = {
        "tool": "loadgen",
        "label": label,
        "target": label,
        "model": model,
        "group": group,
        "protocol": "binary" if binary else "json",
        "batch": 1,
        "concurrency": conc,
        "url": srv.url,
    }
    if r.returncode != 0 or not r.stdout.strip():
        return dict(
            base, failed=True, error=" ".join(r.stderr.split())[-400:] or f"rc {r.returncode}"
        )
    line = json.loads(r.stdout.strip().splitlines()[-1])
    return dict(line, tool="loadgen", target=label)


# ----------------------------------------------------------------------------------- tables


def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def fmt(v, nd=0):
    return "-" if v is None else f"{v:.{nd}f}"


def aggregate(rows: list[dict], key_fields: tuple[str, ...]) -> dict:
    """Median over runs of each key: infer/s, p50/p99, CPU, avg batch; min-max of infer/s."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in key_fields), []).append(r)
    out = {}
    for k, runs in groups.items():
        ok = [r for r in runs if not r.get("failed") and r.get("p50_ms") is not None]
        if not ok:
            last = runs[-1]
            err = last.get("error") or (
                f"no request that started in the {last.get('seconds')} s window completed "
                f"({last.get('requests')} requests)"
            )
            out[k] = {"failed": True, "error": err, "runs": 0}
            continue
        a = {
            f: med([r.get(f) for r in ok])
            for f in (
                "infer_per_s",
                "p50_ms",
                "p90_ms",
                "p99_ms",
                "client_cpu_pct",
                "server_cpu_pct",
                "machine_cpu_pct",
                "avg_batch",
                "server_us",
            )
        }
        a["runs"] = len(ok)
        a["min"] = min(r["infer_per_s"] for r in ok)
        a["max"] = max(r["infer_per_s"] for r in ok)
        a["errors"] = sum(r.get("errors", 0) or 0 for r in ok)
        parts = [a["machine_cpu_pct"], a["client_cpu_pct"], a["server_cpu_pct"]]
        a["other_cpu_pct"] = parts[0] - parts[1] - parts[2] if None not in parts else None
        a["failed_runs"] = len(runs) - len(ok)
        out[k] = a
    return out


def rotated(names: list, rnd: int) -> list:
    """``names`` rotated by round ``rnd``: each server takes each place in turn, so that the
    host's drift hits all of them alike."""
    k = rnd % len(names)
    return names[k:] + names[:k]


def md_table(head: list[str], rows: list[list[str]], left: int = 3) -> str:
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" if i < left else "---:" for i in range(len(head))) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def perf_cells(a: dict | None) -> list[str]:
    """infer/s, (min-max), p50, p99, cli/srv/other cpu%."""
    if a is None:
        return ["n/a"] + [""] * 6
    if a.get("failed"):
        return ["failed"] + [""] * 6
    rng = f"{a['min']:.0f}-{a['max']:.0f}" if a["runs"] > 1 else ""
    return [
        fmt(a["infer_per_s"]),
        rng,
        fmt(a["p50_ms"], 2),
        fmt(a["p99_ms"], 2),
        fmt(a["client_cpu_pct"]),
        fmt(a["server_cpu_pct"]),
        fmt(a["other_cpu_pct"]),
    ]


def ratio(a: dict | None, b: dict | None, field: str = "infer_per_s") -> str:
    if not a or not b or a.get("failed") or b.get("failed") or not b.get(field):
        return "-"
    return f"{a[field] / b[field]:.2f}"


def machine_info() -> str:
    py = sys.version.split()[0]
    try:
        model = next(
            ln.split(":", 1)[1].strip()
            for ln in open("/proc/cpuinfo")
            if ln.startswith("model name")
        )
    except (OSError, StopIteration):
        model = "?"
    mem = ""
    try:
        kb = int(next(ln.split()[1] for ln in open("/proc/meminfo") if ln.startswith("MemTotal")))
        mem = f", {kb / 1048576:.0f} GiB"
    except (OSError, StopIteration):
        pass
    return (
        f"nproc {os.cpu_count()} ({model}){mem}, Python {py} (bench driver), "
        f"loadavg {open('/proc/loadavg').read().split()[:3]}"
    )


def naiad_rev() -> str:
    """The checkout's commit, and whether core/ or plugins/ had uncommitted changes."""

    def git(*args):
        r = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
        return r.stdout.strip()

    head = git("log", "-1", "--format=%h %cI")
    dirty = git("status", "--porcelain", "--", "core", "plugins")
    return f"{head}{' + uncommitted changes in core/ or plugins/' if dirty else ''}" or "?"


def pkg_versions(python: Path, pkgs: list[str]) -> str:
    code = (
        "import importlib.metadata as m, sys\n"
        "out = []\n"
        "for p in sys.argv[1:]:\n"
        "    try: out.append(f'{p} {m.version(p)}')\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(', '.join(out) + f'; Python {sys.version.split()[0]}')"
    )
    r = subprocess.run([str(python), "-c", code, *pkgs], capture_output=True, text=True)
    return r.stdout.strip() or r.stderr.strip()[-200:]


def new_outdir(kind: str, out: str | None) -> Path:
    if out:
        p = Path(out).resolve()
    else:
        p = BENCH / "results" / f"{time.strftime('%Y%m%d-%H%M%S')}-{kind}"
    p.mkdir(parents=True, exist_ok=True)
    return p


def tempdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


def load_rows(paths: list[str]) -> tuple[list[dict], list[dict], list[str], float]:
    """(measurement rows, settings rows, notes, total seconds) of one or more rows.jsonl files."""
    rows, settings, notes, elapsed = [], [], [], 0.0
    for path in paths:
        for line in open(path):
            if not line.strip():
                continue
            r = json.loads(line)
            tool = r.get("tool")
            if tool == "settings":
                settings.append(r)
            elif tool == "note":
                if r["text"] not in notes:
                    notes.append(r["text"])
            elif tool == "done":
                elapsed += r.get("elapsed", 0.0)
            else:
                rows.append(r)
    return rows, settings, notes, elapsed


def log_row(row: dict) -> None:
    if row.get("failed") or row.get("p50_ms") is None:
        why = row.get("error") or f"{row.get('requests')} requests completed"
        log(f"  {row['target']} {row['model']} c={row['concurrency']}: FAILED {why}")
        return
    log(
        f"  {row['target']} {row['model']} {row.get('protocol', 'pa')} "
        f"c={row['concurrency']}: {row['infer_per_s']:.0f} infer/s "
        f"p50 {row['p50_ms']:.2f} p99 {row['p99_ms']:.2f} ms "
        f"batch {fmt(row.get('avg_batch'), 2)} srv {fmt(row.get('server_cpu_pct'))}% "
        f"mach {fmt(row.get('machine_cpu_pct'))}%"
    )
