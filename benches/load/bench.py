#!/usr/bin/env python3
"""The load harness's orchestrator (run by benches/load/run.sh, which installs and builds first).

Starts the mock upstream and every target, pins them (target on CPU 0; mock, load generators and
this script on CPU 1), warms each target up, then runs every scenario on every target, targets
interleaved (the order rotates each repeat), REPEATS times. Writes raw samples, a JSON summary and
a markdown report under benches/load/results/. Standard library only.

Targets: direct (the mock itself: the floor), nginx, pingora (benches/pingora-ref), gem-proxy
(every layer on: JWT auth with a real token, client limits, a key pool of 4 keys with limits,
metrics), litellm (with --with-litellm).

Scenarios (see benches/load/README.md for what each number means):
  c1, c64, c256  closed loop (wrk, HTTP/1.1 keep-alive), non-streaming generateContent
  open           open loop at a fixed rate (bench-driver open-loop), tail latency
  sse            streams of 64 events 20 ms apart (bench-driver sse): time to first event, gaps
  hold           N concurrent slow streams on a freshly started target (bench-driver hold): RSS per stream
  live           N concurrent Live API (WebSocket) sessions, a turn every 100 ms each (bench-driver live):
                 time from a turn to its first answer frame, RSS per session (direct and gem-proxy only:
                 the nginx and Pingora references are not set up for WebSocket upgrades)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import statistics
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024

# A real model name. The mock's canned answer is then ~0.6 KiB of JSON (~0.7 KiB with headers);
# padding the name to reach 1 KiB was tried and dropped: LiteLLM treats an unknown model name as
# uncosted and loses ~40% of its throughput to that, which would flatter gem-proxy's ratio.
MODEL = "gemini-2.5-flash"
GENERATE_PATH = f"/v1beta/models/{MODEL}:generateContent"
STREAM_PATH = f"/v1beta/models/{MODEL}:streamGenerateContent?alt=sse"
REQUEST_BODY = '{"contents":[{"role":"user","parts":[{"text":"Say hello in one short paragraph."}]}]}'
SSE_EVENTS = 64
SSE_DELAY_MS = 20
# Held streams: the mock's 64 events, one every 2 s (a stream lasts ~2 min, longer than any hold).
HOLD_DELAY_MS = 2000
LITELLM_MASTER_KEY = "sk-bench-litellm-master-key-0123456789"
UPSTREAM_KEYS = [f"bench-upstream-key-{i}" for i in range(1, 5)]

PROXY_CPU = 0
LOAD_CPU = 1

ALL_TARGETS = ["direct", "nginx", "pingora", "gem-proxy", "gem-proxy-redis", "litellm"]
PROXIES = ["nginx", "pingora", "gem-proxy", "gem-proxy-redis", "litellm"]
GEM_PROXIES = ("gem-proxy", "gem-proxy-redis")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


# ---------------------------------------------------------------- /proc accounting


def children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def tree(pid: int) -> list[int]:
    """pid and all its descendants (nginx's worker, LiteLLM's helpers)."""
    kids = children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of pid and its descendants, in seconds (/proc/PID/stat fields 14 and 15)."""
    ticks = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return ticks / CLK_TCK


def memory_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in KiB, summed over pid and its descendants."""
    rss = hwm = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
                    elif line.startswith("VmHWM:"):
                        hwm += int(line.split()[1])
        except OSError:
            pass
    return rss, hwm


# ---------------------------------------------------------------- processes


class Service:
    """One process we started (and only we stop), pinned with taskset."""

    def __init__(self, name: str, cmd: list[str], cpu: int, log_path: Path, env: dict | None = None,
                 stop_signal: int = signal.SIGTERM):
        self.name = name
        self.log_path = log_path
        self.stop_signal = stop_signal
        self.log_file = open(log_path, "ab")
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        self.proc = subprocess.Popen(["taskset", "-c", str(cpu), *cmd], stdout=self.log_file,
                                     stderr=subprocess.STDOUT, env=full_env, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(self.stop_signal)
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log_file.close()

    def tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def start_mock(tools: dict, run_dir: Path) -> tuple[Service, int]:
    log_path = run_dir / "mock.log"
    log_path.unlink(missing_ok=True)  # its first line tells the port: never read an old one
    svc = Service("mock", [tools["mock"], "--host", "127.0.0.1", "--port", "0", "--chunks", str(SSE_EVENTS),
                           "--chunk-delay-ms", str(SSE_DELAY_MS), "--no-record"], LOAD_CPU, log_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        for line in text.splitlines():
            if line.startswith("listening on http://"):
                port = int(line.rsplit(":", 1)[1].strip().rstrip("/"))
                return svc, port
        if svc.proc.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"mock did not start:\n{svc.tail()}")


# ---------------------------------------------------------------- target configs


def nginx_conf(port: int, upstream_port: int, run_dir: Path, max_fds: int) -> str:
    template = (HERE / "nginx.conf.template").read_text()
    return (template.replace("@PORT@", str(port)).replace("@UPSTREAM_PORT@", str(upstream_port))
            .replace("@RUN_DIR@", str(run_dir)).replace("@MAX_FDS@", str(max_fds))
            .replace("@WORKER_CONNECTIONS@", str(max_fds - 64)))


def gem_proxy_conf(port: int, admin_port: int, upstream_port: int, secret: str) -> str:
    keys = "\n".join(
        f"""    - id: "key{i}"
      key: "{key}"
      weight: 100
      max_requests_per_minute: 100000000
      max_requests_per_day: 2000000000
      max_tokens_per_minute: 2000000000"""
        for i, key in enumerate(UPSTREAM_KEYS, 1))
    return f"""# Generated by benches/load/bench.py: gem-proxy with every layer on, plain HTTP.
server:
  host: "127.0.0.1"
  port: {port}
  # One core, like every other target (the harness pins it to CPU {PROXY_CPU}).
  workers: 1
  max_connections: 30000
  tls:
    enabled: false
gemini:
  base_url: "http://127.0.0.1:{upstream_port}"
  # A key pool with per-key limits far above what the run sends.
  api_keys:
{keys}
auth:
  enabled: true
  jwt_secret: "{secret}"
  # Client limits on, high enough never to refuse a benchmark request.
  rate_limit_per_minute: 100000000
metrics:
  enabled: true
  host: "127.0.0.1"
  prometheus_port: {admin_port}
log:
  # Access logs are off on every target (nginx: access_log off).
  level: "warn"
"""


def redis_state_conf(redis_port: int) -> str:
    """gem-proxy-redis: the same gateway with its key state shared through Redis."""
    return f"""state:
  backend: "redis"
  redis:
    url: "redis://127.0.0.1:{redis_port}/0"
    key_prefix: "gem-proxy-bench"
    sync_interval_ms: 200
"""


def litellm_conf(upstream_port: int) -> str:
    deployments = "\n".join(
        f"""  - model_name: {MODEL}
    litellm_params:
      model: gemini/{MODEL}
      api_base: http://127.0.0.1:{upstream_port}/v1beta
      api_key: {key}"""
        for key in UPSTREAM_KEYS)
    return f"""# Generated by benches/load/bench.py: LiteLLM's proxy on the native Gemini routes, 4 keys.
model_list:
{deployments}
router_settings:
  routing_strategy: simple-shuffle
litellm_settings:
  telemetry: false
  turn_off_message_logging: true
general_settings:
  # LiteLLM refuses to start without one; checked on every request like gem-proxy's token.
  master_key: {LITELLM_MASTER_KEY}
  disable_spend_logs: true
"""


class Target:
    """A proxy (or the mock itself for `direct`) the scenarios are run against."""

    def __init__(self, name: str, tools: dict, run_dir: Path, mock_port: int, max_fds: int):
        self.name = name
        self.tools = tools
        self.run_dir = run_dir
        self.mock_port = mock_port
        self.max_fds = max_fds
        self.svc: Service | None = None
        self.port = mock_port if name == "direct" else free_port()
        self.key = "bench-direct-key"
        self.starts = 0
        self.redis: Service | None = None
        self.redis_port = 0

    @property
    def pid(self) -> int | None:
        return self.svc.pid if self.svc else None

    def prepare(self) -> None:
        """Writes config files (and issues gem-proxy's client token); checks them."""
        d = self.run_dir
        if self.name == "nginx":
            for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
                (d / "nginx" / sub).mkdir(parents=True, exist_ok=True)
            (d / "nginx.conf").write_text(nginx_conf(self.port, self.mock_port, d / "nginx", self.max_fds))
            if not self.tools.get("nginx"):
                return  # --dry-run without nginx installed (run.sh says so)
            check = subprocess.run([self.tools["nginx"], "-t", "-q", "-p", str(d / "nginx"), "-c",
                                    str(d / "nginx.conf"), "-e", str(d / "nginx" / "error.log")],
                                   capture_output=True, text=True)
            if check.returncode != 0:
                raise RuntimeError(f"nginx -t failed:\n{check.stderr}")
        elif self.name in GEM_PROXIES:
            secret = "".join(random.SystemRandom().choice(string.ascii_letters + string.digits) for _ in range(48))
            self.admin_port = free_port()
            conf = d / f"{self.name}.yaml"
            text = gem_proxy_conf(self.port, self.admin_port, self.mock_port, secret)
            if self.name == "gem-proxy-redis":
                self.redis_port = free_port()
                text += redis_state_conf(self.redis_port)
            conf.write_text(text)
            check = subprocess.run([self.tools["gem-proxy"], "check-config", "--config", str(conf)],
                                   capture_output=True, text=True)
            if check.returncode != 0:
                raise RuntimeError(f"gem-proxy check-config failed:\n{check.stdout}{check.stderr}")
            token = subprocess.run([self.tools["gem-proxy"], "token", "--sub", "bench-client", "--ttl", "7d",
                                    "--config", str(conf)], capture_output=True, text=True)
            if token.returncode != 0:
                raise RuntimeError(f"gem-proxy token failed:\n{token.stderr}")
            self.key = token.stdout.strip().splitlines()[-1].strip()
        elif self.name == "litellm":
            (d / "litellm.yaml").write_text(litellm_conf(self.mock_port))
            self.key = LITELLM_MASTER_KEY
        elif self.name == "pingora":
            pass

    def start(self) -> None:
        d = self.run_dir
        self.starts += 1
        log_path = d / f"{self.name}.log"
        if self.name == "direct":
            return
        if self.name == "nginx":
            cmd = [self.tools["nginx"], "-p", str(d / "nginx"), "-c", str(d / "nginx.conf"),
                   "-e", str(d / "nginx" / "error.log")]
            # nginx: SIGTERM is its fast shutdown.
            self.svc = Service("nginx", cmd, PROXY_CPU, log_path)
        elif self.name == "pingora":
            cmd = [self.tools["pingora"], "--listen", f"127.0.0.1:{self.port}", "--upstream",
                   f"127.0.0.1:{self.mock_port}", "--threads", "1", "--pool", "1024"]
            # Pingora: SIGINT is its fast shutdown (SIGTERM waits for a grace period).
            self.svc = Service("pingora", cmd, PROXY_CPU, log_path, stop_signal=signal.SIGINT)
        elif self.name in GEM_PROXIES:
            if self.name == "gem-proxy-redis" and self.redis is None:
                # Redis on the load side's CPU: in a deployment it runs elsewhere too.
                (d / "redis").mkdir(exist_ok=True)
                self.redis = Service("redis-server", [self.tools["redis"], "--bind", "127.0.0.1", "--port",
                                                      str(self.redis_port), "--save", "", "--appendonly", "no",
                                                      "--dir", str(d / "redis")], LOAD_CPU, d / "redis.log")
                wait_port(self.redis_port, 10, self.redis.proc)
            cmd = [self.tools["gem-proxy"], "serve", "--config", str(d / f"{self.name}.yaml")]
            self.svc = Service(self.name, cmd, PROXY_CPU, log_path, stop_signal=signal.SIGINT)
        elif self.name == "litellm":
            cmd = [self.tools["litellm"], "--config", str(d / "litellm.yaml"), "--host", "127.0.0.1",
                   "--port", str(self.port), "--num_workers", "1"]
            env = {"LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False", "DISABLE_ADMIN_UI": "True",
                   "NO_DOCS": "True"}
            self.svc = Service("litellm", cmd, PROXY_CPU, log_path, env=env, stop_signal=signal.SIGINT)
        try:
            wait_port(self.port, 180 if self.name == "litellm" else 30, self.svc.proc)
        except RuntimeError as e:
            raise RuntimeError(f"{self.name}: {e}\n{self.svc.tail()}") from e

    def stop(self) -> None:
        if self.svc:
            self.svc.stop()
            self.svc = None

    def stop_all(self) -> None:
        """Stops the target and what it needs (Redis)."""
        self.stop()
        if self.redis:
            self.redis.stop()
            self.redis = None

    def restart(self) -> None:
        self.stop()
        time.sleep(0.3)
        self.start()

    def cpu(self) -> float | None:
        return cpu_seconds(self.pid) if self.pid else None

    def memory(self) -> tuple[int, int] | tuple[None, None]:
        return memory_kb(self.pid) if self.pid else (None, None)


# ---------------------------------------------------------------- load generators


def pinned(cmd: list[str]) -> list[str]:
    return ["taskset", "-c", str(LOAD_CPU), *cmd]


def run_json(cmd: list[str], timeout: float) -> dict:
    out = subprocess.run(pinned(cmd), capture_output=True, text=True, timeout=timeout)
    for line in reversed(out.stdout.splitlines()):
        line = line.strip()
        if line.startswith("JSON "):
            line = line[5:]
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"no JSON from {' '.join(cmd[:2])} (exit {out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")


def wrk(tools: dict, target: Target, conns: int, seconds: float) -> dict:
    env_key = target.key
    cmd = [tools["wrk"], "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s", "--timeout", "10s", "-s", str(HERE / "generate.lua"),
           f"http://127.0.0.1:{target.port}{GENERATE_PATH}", "--", env_key, REQUEST_BODY]
    return run_json(cmd, timeout=seconds + 60)


def driver(tools: dict, target: Target, mode: str, args: list[str], timeout: float) -> dict:
    cmd = [tools["driver"], mode, "--addr", f"127.0.0.1:{target.port}", "--header", f"x-goog-api-key: {target.key}",
           "--body", REQUEST_BODY, *args]
    return run_json(cmd, timeout=timeout)


# ---------------------------------------------------------------- scenarios


def measure_closed(tools, target: Target, conns: int, seconds: float) -> dict:
    cpu0 = target.cpu()
    r = wrk(tools, target, conns, seconds)
    cpu1 = target.cpu()
    rss, hwm = target.memory()
    out = {
        "rps": r["requests"] / (r["duration_us"] / 1e6),
        "requests": r["requests"],
        "p50_us": r["p50_us"], "p99_us": r["p99_us"], "p999_us": r["p999_us"], "max_us": r["max_us"],
        "mean_us": r["mean_us"],
        "non_2xx": r["status_errors"],
        "socket_errors": r["connect_errors"] + r["read_errors"] + r["write_errors"] + r["timeouts"],
        "bytes_per_response": r["bytes"] / max(r["requests"], 1),
        "rss_kb": rss, "hwm_kb": hwm,
    }
    if cpu0 is not None and r["requests"]:
        out["cpu_s"] = cpu1 - cpu0
        out["cpu_s_per_1k"] = (cpu1 - cpu0) / r["requests"] * 1000
    return out


def measure_open(tools, target: Target, rate: float, seconds: float) -> dict:
    cpu0 = target.cpu()
    r = driver(tools, target, "open-loop", ["--path", GENERATE_PATH, "--rate", str(rate), "--duration-seconds",
                                            str(seconds), "--connections", "64", "--grace-seconds", "5"],
               timeout=seconds + 120)
    cpu1 = target.cpu()
    out = {"rate": rate, "achieved_rps": r["achieved_rps"], "ok": r["ok"], "errors": r["errors"],
           "dropped": r["dropped"], "p50_us": r["latency_p50_us"], "p90_us": r["latency_p90_us"],
           "p99_us": r["latency_p99_us"], "p999_us": r["latency_p999_us"], "max_us": r["latency_max_us"]}
    if cpu0 is not None and r["ok"]:
        out["cpu_s_per_1k"] = (cpu1 - cpu0) / r["ok"] * 1000
    return out


def measure_sse(tools, target: Target, streams: int, rounds: int) -> dict:
    r = driver(tools, target, "sse", ["--path", STREAM_PATH, "--streams", str(streams), "--rounds", str(rounds),
                                      "--events", str(SSE_EVENTS)],
               timeout=rounds * (SSE_EVENTS * SSE_DELAY_MS / 1000 + 30) + 30)
    return {"streams": streams * rounds, "ok": r["ok"], "errors": r["errors"],
            "wrong_event_count": r["wrong_event_count"],
            "ttfe_p50_us": r["ttfe_p50_us"], "ttfe_p99_us": r["ttfe_p99_us"], "ttfe_max_us": r["ttfe_max_us"],
            "gap_p50_us": r["gap_p50_us"], "gap_p99_us": r["gap_p99_us"], "gap_p999_us": r["gap_p999_us"],
            "gap_max_us": r["gap_max_us"]}


def measure_hold(tools, target: Target, streams: int, hold_seconds: float, open_timeout: float) -> dict:
    """Fresh target, a few requests, idle RSS; then `streams` held streams and RSS while they are open."""
    if target.name != "direct":
        target.restart()
    # A handful of requests so lazily built state exists, then let it settle.
    driver(tools, target, "open-loop", ["--path", GENERATE_PATH, "--rate", "200", "--duration-seconds", "0.5",
                                        "--connections", "4"], timeout=60)
    time.sleep(1.0)
    idle_rss, _ = target.memory()
    cmd = pinned([tools["driver"], "hold", "--addr", f"127.0.0.1:{target.port}", "--header",
                  f"x-goog-api-key: {target.key}", "--header", f"x-mock-chunk-delay-ms: {HOLD_DELAY_MS}",
                  "--body", REQUEST_BODY, "--path", STREAM_PATH, "--streams", str(streams), "--hold-seconds",
                  str(hold_seconds), "--open-timeout-seconds", str(open_timeout), "--open-parallel", "256"])
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True)
        held_rss = None
        opened = 0
        deadline = time.monotonic() + open_timeout + 30
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                out.seek(0)
                ready = [line for line in out.read().splitlines() if line.startswith("ready ")]
                if ready:
                    opened = int(ready[0].split()[1])
                    # Sample while everything is held: the largest of a few readings.
                    samples = []
                    for _ in range(3):
                        time.sleep(min(0.5, hold_seconds / 4))
                        samples.append(target.memory()[0])
                    held_rss = max(s for s in samples if s is not None) if target.pid else None
                    break
                time.sleep(0.05)
            proc.wait(timeout=hold_seconds + 60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        out.seek(0)
        text = out.read()
    result = next((json.loads(line) for line in reversed(text.splitlines()) if line.startswith("{")), {})
    opened = result.get("opened", opened)
    out_d = {"streams": streams, "opened": opened, "failed": result.get("failed"),
             "ended_early": result.get("ended_early"), "open_ms": result.get("open_ms"),
             "idle_rss_kb": idle_rss, "held_rss_kb": held_rss}
    if idle_rss is not None and held_rss is not None and opened:
        out_d["kb_per_stream"] = (held_rss - idle_rss) / opened
    return out_d


LIVE_PATH = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
LIVE_TARGETS = ("direct", "gem-proxy", "gem-proxy-redis")


def measure_live(tools, target: Target, sessions: int, seconds: float, interval_ms: int) -> dict:
    """`sessions` Live sessions sending a turn every `interval_ms` for `seconds`: per-turn latency, and
    (proxies) RSS while they are open against the idle RSS before."""
    if target.name != "direct":
        target.restart()
    time.sleep(1.0)
    idle_rss, _ = target.memory()
    cmd = pinned([tools["driver"], "live", "--addr", f"127.0.0.1:{target.port}", "--header",
                  f"x-goog-api-key: {target.key}", "--path", LIVE_PATH, "--streams", str(sessions),
                  "--duration-seconds", str(seconds), "--interval-ms", str(interval_ms),
                  "--open-timeout-seconds", "60", "--open-parallel", "128"])
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True)
        held_rss = None
        deadline = time.monotonic() + 90
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                out.seek(0)
                if any(line.startswith("ready ") for line in out.read().splitlines()):
                    time.sleep(min(1.0, seconds / 2))
                    held_rss = target.memory()[0] if target.pid else None
                    break
                time.sleep(0.05)
            proc.wait(timeout=seconds + 90)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        out.seek(0)
        text = out.read()
    r = next((json.loads(line) for line in reversed(text.splitlines()) if line.startswith("{")), {})
    d = {"sessions": sessions, "opened": r.get("opened"), "failed": r.get("failed"), "frames": r.get("frames"),
         "errors": r.get("errors"), "open_ms": r.get("open_ms"), "rtt_p50_us": r.get("rtt_p50_us"),
         "rtt_p99_us": r.get("rtt_p99_us"), "rtt_max_us": r.get("rtt_max_us"), "idle_rss_kb": idle_rss,
         "held_rss_kb": held_rss}
    if idle_rss is not None and held_rss is not None and r.get("opened"):
        d["kb_per_session"] = (held_rss - idle_rss) / r["opened"]
    return d


# ---------------------------------------------------------------- the run


def settings(args) -> dict:
    hard = __import__("resource").getrlimit(__import__("resource").RLIMIT_NOFILE)[1]
    if hard == __import__("resource").RLIM_INFINITY:
        hard = 1 << 20
    # A proxy holds two sockets per stream (client and upstream) plus a few of its own.
    max_streams = max(100, (min(hard, 65536) - 512) // 2)
    holds = [1000] if args.quick else [1000, 10000]
    s = {
        "quick": args.quick,
        "repeats": args.repeats or (1 if args.quick else 3),
        "seconds": args.seconds or (3.0 if args.quick else 10.0),
        "warmup_seconds": 2.0 if args.quick else 5.0,
        "concurrency": [1, 64, 256],
        "open_rate": args.rate or (1000.0 if args.quick else 2000.0),
        "sse_streams": 32,
        "sse_rounds": 1 if args.quick else 3,
        "hold_requested": holds,
        "hold": [min(h, max_streams) for h in holds],
        "hold_seconds": 3.0,
        # Live API sessions (a proxy holds two sockets per session, like a held stream).
        "live_sessions": min(100 if args.quick else 1000, max_streams),
        "live_seconds": 3.0 if args.quick else 10.0,
        "live_interval_ms": 100,
        "nofile_hard_limit": hard,
    }
    return s


def machine_info() -> dict:
    info = {"nproc": os.cpu_count()}
    try:
        with open("/proc/loadavg") as f:
            info["loadavg"] = f.read().split()[:3]
    except OSError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info["kernel"] = os.uname().release
    return info


def busy_processes() -> list[str]:
    """Other processes using CPU right now (the machine may be shared): `ps` top 5."""
    out = subprocess.run(["ps", "-eo", "pcpu,comm", "--sort=-pcpu", "--no-headers"], capture_output=True, text=True)
    return [" ".join(line.split()) for line in out.stdout.splitlines()[:5]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--with-litellm", action="store_true")
    ap.add_argument("--dry-run", action="store_true", help="write and check every config, start nothing")
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--seconds", type=float, help="length of each closed- and open-loop run")
    ap.add_argument("--rate", type=float, help="open-loop rate (requests/s)")
    ap.add_argument("--targets", help="comma-separated subset of " + ",".join(ALL_TARGETS))
    ap.add_argument("--tools", required=True, help="JSON object: binary paths")
    ap.add_argument("--results", default=str(HERE / "results"))
    ap.add_argument("--command", default="benches/load/run.sh", help="the command line, for the report")
    ap.add_argument("--rig", choices=["mock", "nginx-upstream"], default="mock",
                    help="mock: the standard run; nginx-upstream: every proxy in front of a fixed-answer nginx")
    args = ap.parse_args()
    tools = json.loads(args.tools)
    if args.rig == "nginx-upstream":
        import rig_nginx
        if args.dry_run:
            rig_nginx.dry_run(tools)
            log("dry run: nginx-upstream rig configs checked, self-test passed")
            return 0
        try:
            os.sched_setaffinity(0, {LOAD_CPU})
        except OSError:
            pass
        return rig_nginx.run(args, tools, Path(args.results))

    try:
        os.sched_setaffinity(0, {LOAD_CPU})
    except OSError:
        pass
    s = settings(args)
    names = ["direct", "nginx", "pingora", "gem-proxy", "gem-proxy-redis"] + (["litellm"] if args.with_litellm else [])
    if args.targets:
        wanted = args.targets.split(",")
        names = [n for n in names if n in wanted] or names
        if "direct" not in names:
            names.insert(0, "direct")

    run_id = time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(tempfile.mkdtemp(prefix=f"gem-proxy-bench-{run_id}-"))
    results_dir = Path(args.results)
    results_dir.mkdir(parents=True, exist_ok=True)
    log(f"run dir {run_dir}; settings {json.dumps(s)}")

    mock = None
    targets: dict[str, Target] = {}
    samples: list[dict] = []
    machine = {"before": machine_info(), "busy_before": busy_processes()}
    started_at = time.time()
    try:
        if args.dry_run:
            mock_port = free_port()
        else:
            mock, mock_port = start_mock(tools, run_dir)
            log(f"mock on 127.0.0.1:{mock_port} (pid {mock.pid}, CPU {LOAD_CPU})")
        for n in names:
            t = Target(n, tools, run_dir, mock_port, max_fds=min(s["nofile_hard_limit"], 65536))
            t.prepare()
            targets[n] = t
        if args.dry_run:
            log("dry run: configs written and checked: " + ", ".join(sorted(p.name for p in run_dir.iterdir())))
            import report
            report.selftest()
            import rig_nginx
            rig_nginx.selftest()
            log("dry run: report self-tests passed (standard run and nginx-upstream rig)")
            shutil.rmtree(run_dir, ignore_errors=True)
            return 0
        for t in targets.values():
            t.start()
            log(f"{t.name} on 127.0.0.1:{t.port}" + (f" (pid {t.pid}, CPU {PROXY_CPU})" if t.pid else ""))

        # Sanity: every target answers the request and the stream correctly before anything is timed.
        for t in targets.values():
            r = driver(tools, t, "sse", ["--path", STREAM_PATH, "--streams", "1", "--events", str(SSE_EVENTS)], 60)
            if r["ok"] != 1 or r["wrong_event_count"]:
                raise RuntimeError(f"{t.name}: stream check failed: {r}\n{t.svc.tail() if t.svc else ''}")
            w = wrk(tools, t, 1, 1)
            if w["status_errors"] or not w["requests"]:
                raise RuntimeError(f"{t.name}: non-2xx answers in the check run: {w}\n{t.svc.tail() if t.svc else ''}")

        # Warm-up: each target, closed loop at c=64, then a few streams; nothing recorded.
        for t in targets.values():
            log(f"warm-up {t.name}")
            wrk(tools, t, 64, s["warmup_seconds"])
            driver(tools, t, "sse", ["--path", STREAM_PATH, "--streams", "8", "--events", str(SSE_EVENTS)], 60)
            rss, _ = t.memory()
            samples.append({"target": t.name, "scenario": "after_warmup", "repeat": 0, "rss_kb": rss})

        order = list(targets)
        for rep in range(1, s["repeats"] + 1):
            shift = (rep - 1) % len(order)
            rot = order[shift:] + order[:shift]
            log(f"repeat {rep}/{s['repeats']}: order {', '.join(rot)}")
            for c in s["concurrency"]:
                for n in rot:
                    r = measure_closed(tools, targets[n], c, s["seconds"])
                    samples.append({"target": n, "scenario": f"c{c}", "repeat": rep, **r})
                    log(f"  c={c:<3} {n:<9} {r['rps']:>9.0f} req/s  p50 {r['p50_us']} p99 {r['p99_us']} "
                        f"p99.9 {r['p999_us']} us  cpu/1k {r.get('cpu_s_per_1k', float('nan')):.3f}s"
                        + (f"  NON-2XX {r['non_2xx']}" if r["non_2xx"] else ""))
            for n in rot:
                r = measure_open(tools, targets[n], s["open_rate"], s["seconds"])
                samples.append({"target": n, "scenario": "open", "repeat": rep, **r})
                log(f"  open {s['open_rate']:.0f}/s {n:<9} achieved {r['achieved_rps']:.0f}  p50 {r['p50_us']} "
                    f"p99 {r['p99_us']} p99.9 {r['p999_us']} us  errors {r['errors']} dropped {r['dropped']}")
            for n in rot:
                r = measure_sse(tools, targets[n], s["sse_streams"], s["sse_rounds"])
                samples.append({"target": n, "scenario": "sse", "repeat": rep, **r})
                log(f"  sse {n:<9} ttfe p50 {r['ttfe_p50_us']} p99 {r['ttfe_p99_us']} us  gap p50 "
                    f"{r['gap_p50_us']} p99 {r['gap_p99_us']} us  errors {r['errors']} short {r['wrong_event_count']}")
            for n in rot:
                if n == "direct":
                    continue
                for h in s["hold"]:
                    r = measure_hold(tools, targets[n], h, s["hold_seconds"], open_timeout=60)
                    samples.append({"target": n, "scenario": f"hold{h}", "repeat": rep, **r})
                    log(f"  hold {h} {n:<9} opened {r['opened']} in {r['open_ms']} ms  idle {r['idle_rss_kb']} KiB "
                        f"held {r['held_rss_kb']} KiB  -> {r.get('kb_per_stream', float('nan')):.1f} KiB/stream")
            for n in rot:
                if n not in LIVE_TARGETS:
                    continue
                r = measure_live(tools, targets[n], s["live_sessions"], s["live_seconds"], s["live_interval_ms"])
                samples.append({"target": n, "scenario": "live", "repeat": rep, **r})
                log(f"  live {s['live_sessions']} {n:<9} opened {r['opened']}  turn p50 {r['rtt_p50_us']} "
                    f"p99 {r['rtt_p99_us']} us  errors {r['errors']}  "
                    f"-> {r.get('kb_per_session', float('nan')):.1f} KiB/session")
    finally:
        for t in targets.values():
            t.stop_all()
        if mock:
            mock.stop()

    machine["after"] = machine_info()
    machine["busy_after"] = busy_processes()
    import report
    raw = {"run_id": run_id, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started_at)),
           "duration_s": round(time.time() - started_at), "command": args.command, "settings": s,
           "machine": machine, "targets": names, "samples": samples}
    summary = report.summarize(raw)
    md = report.markdown(summary)
    (results_dir / f"{run_id}.json").write_text(json.dumps({"summary": summary, "raw": raw}, indent=1))
    (results_dir / f"{run_id}.md").write_text(md)
    (results_dir / "latest.json").write_text(json.dumps({"summary": summary, "raw": raw}, indent=1))
    (results_dir / "latest.md").write_text(md)
    print(md)
    log(f"wrote {results_dir / (run_id + '.md')} and .json, and latest.md / latest.json")
    shutil.rmtree(run_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    sys.exit(main())
