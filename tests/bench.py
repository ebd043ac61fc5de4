"""Benchmark: the gateway's added latency and memory, measured against a direct call in one run.

    python -m tests.bench [--requests 3000] [--concurrency 16]

Starts a fake OpenAI upstream and the gateway (`ferro-proxy serve`) as separate processes,
drives both with the same asyncio load generator (non-streaming and streaming chat), and
prints requests/s, p50/p99 latency for direct-to-upstream vs through-the-gateway, the added
p50, and the gateway's resident memory (current and peak). Targets on a 2-core machine:
added p50 < 1 ms at concurrency 16; gateway RSS < 80 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import aiohttp

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello in five words."}]}


def _rss_kb(pid: int) -> tuple[int, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


async def _wait_line(proc: subprocess.Popen, predicate) -> dict | str:
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, proc.stdout.readline)
        if not line:
            raise RuntimeError("process exited early")
        text = line.decode().strip()
        try:
            record = json.loads(text)
        except ValueError:
            record = text
        if predicate(record):
            return record


async def _run(
    session: aiohttp.ClientSession, url: str, body: dict, total: int, concurrency: int, stream: bool
) -> tuple[list[float], float]:
    latencies: list[float] = []
    queue = iter(range(total))
    payload = json.dumps({**body, "stream": stream}).encode()
    headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench"}

    async def worker() -> None:
        for _ in queue:
            start = time.perf_counter()
            async with session.post(url, data=payload, headers=headers) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"{url} answered {resp.status}")
            latencies.append(time.perf_counter() - start)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - began


def _drain(proc: subprocess.Popen) -> None:
    threading.Thread(target=lambda: [None for _ in iter(proc.stdout.readline, b"")], daemon=True).start()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


async def main(requests: int, concurrency: int) -> int:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    fake = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, "-m", "tests.fakes.serve", "openai", "0"], stdout=subprocess.PIPE, env=env
    )
    gateway = None
    try:
        ready = await _wait_line(fake, lambda r: isinstance(r, str) and r.startswith("ready"))
        port = int(str(ready).split()[1])
        upstream = f"http://127.0.0.1:{port}/v1"
        gw_env = {
            **env,
            "OPENAI_API_KEY": "sk-bench-upstream",
            "OPENAI_BASE_URL": upstream,
            "LOG_LEVEL": "warning",
        }
        started = time.perf_counter()
        gateway = subprocess.Popen(  # noqa: ASYNC220
            [
                sys.executable,
                "-m",
                "ferro_proxy",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ],
            stdout=subprocess.PIPE,
            env={**gw_env, "LOG_LEVEL": "info"},
        )
        info = await _wait_line(gateway, lambda r: isinstance(r, dict) and r.get("msg") == "listening")
        _drain(gateway)  # keep reading its access log so the pipe never fills
        startup = time.perf_counter() - started
        proxy = f"http://{info['proxy']}/v1"
        idle_rss, _ = _rss_kb(gateway.pid)
        connector = aiohttp.TCPConnector(limit=concurrency * 2)
        rows = []
        cpu_per_request = {}
        async with aiohttp.ClientSession(connector=connector) as session:
            for stream in (False, True):
                mode = "stream" if stream else "json"
                for target in (upstream, proxy):  # warm both paths
                    await _run(session, target + "/chat/completions", BODY, 200, concurrency, stream)
                for level in sorted({1, concurrency}):
                    results = {}
                    runs = requests if level == concurrency else max(200, requests // 10)
                    for name, target in (("direct", upstream), ("gateway", proxy)):
                        cpu_before = _cpu_seconds(gateway.pid)
                        lat, took = await _run(
                            session, target + "/chat/completions", BODY, runs, level, stream
                        )
                        if name == "gateway" and level == concurrency:
                            cpu_per_request[mode] = (_cpu_seconds(gateway.pid) - cpu_before) / runs
                        results[name] = (lat, took)
                    for name, (lat, took) in results.items():
                        rows.append(
                            (
                                mode,
                                level,
                                name,
                                len(lat) / took,
                                _pct(lat, 0.5) * 1000,
                                _pct(lat, 0.99) * 1000,
                            )
                        )
        rss, peak = _rss_kb(gateway.pid)
        print(
            f"\nferro-proxy benchmark: {requests} requests per run, concurrency {concurrency}, "
            f"{os.cpu_count()} CPUs (upstream, gateway and load generator share them)\n"
        )
        print(f"{'mode':<8}{'conc':>5}  {'path':<9}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}")
        for mode, level, name, rps, p50, p99 in rows:
            print(f"{mode:<8}{level:>5}  {name:<9}{rps:>9.0f}{p50:>9.2f}{p99:>9.2f}")
        print()
        for mode in ("json", "stream"):
            for level in sorted({1, concurrency}):
                d = next(r for r in rows if r[0] == mode and r[1] == level and r[2] == "direct")
                g = next(r for r in rows if r[0] == mode and r[1] == level and r[2] == "gateway")
                print(
                    f"{mode:<8}concurrency {level:<3} added p50 {g[4] - d[4]:6.2f} ms   added p99 {g[5] - d[5]:6.2f} ms"
                    f"   throughput gateway/direct {g[3] / d[3]:.2f}"
                )
            print(f"{mode:<8}gateway CPU per request: {cpu_per_request[mode] * 1000:.2f} ms")
        print(f"\ngateway start-up to listening: {startup * 1000:.0f} ms")
        print(
            f"gateway RSS: idle {idle_rss / 1024:.1f} MB, after load {rss / 1024:.1f} MB, peak {peak / 1024:.1f} MB"
        )
        return 0
    finally:
        for proc in (gateway, fake):
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    raise SystemExit(asyncio.run(main(args.requests, args.concurrency)))
