"""Throughput of tl_persona's HTTP judge (OpenAIJudge) against a loopback OpenAI-compatible mock server.

The mock server runs in its own process (as a real judge server would, so that it does not share
the client's GIL): a ``ThreadingHTTPServer`` on 127.0.0.1 that answers every chat-completions
request after a fixed latency (50 ms by default) with a canned one-token answer with top
log-probabilities. Nothing leaves the machine.

Measured, each three times (the median is reported):

* requests/s at concurrency 1, 8 and 32 (no cache), against the ideal ``concurrency / latency``;
  target: at least 80% of it;
* the cache: filling it at concurrency 32 (each answer is committed, and synced, as it arrives),
  then the cache-hit path: the same items a second time (answers served per second, and the number
  of HTTP requests, which must be 0);
* the retry path: the server answers 503 to every 10th request it receives (a deterministic 10%),
  concurrency 8, backoff 0.05 s: completed items/s and the number of retries.

    python benchmarks/bench_judge.py            # about 30 s
    python benchmarks/bench_judge.py --quick    # about 10 s
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- the mock server (child process)
def _answer() -> bytes:
    import math

    top = [("85", 0.6), ("90", 0.3), ("REFUSAL", 0.1)]
    entries = [{"token": t, "logprob": math.log(p)} for t, p in top]
    return json.dumps({
        "id": "cmpl-bench", "object": "chat.completion", "model": "bench-judge",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "85"}, "finish_reason": "length",
                     "logprobs": {"content": [{"token": "85", "logprob": entries[0]["logprob"], "top_logprobs": entries}]}}],
    }).encode()


def serve() -> None:
    """Run the mock server; print its port; stop when stdin closes (the parent went away)."""
    state = {"latency": 0.05, "fail_every": 0, "requests": 0, "failed": 0}
    lock = threading.Lock()
    ok = _answer()
    busy = json.dumps({"error": {"message": "overloaded (benchmark)"}}).encode()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - control: /control?latency=..&fail_every=.. (resets counters), /stats
            url = urllib.parse.urlsplit(self.path)
            with lock:
                if url.path == "/control":
                    q = urllib.parse.parse_qs(url.query)
                    state["latency"] = float(q.get("latency", [state["latency"]])[0])
                    state["fail_every"] = int(q.get("fail_every", [0])[0])
                    state["requests"] = state["failed"] = 0
                out = json.dumps(state).encode()
            self._send(200, out)

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with lock:
                n = state["requests"]
                state["requests"] += 1
                every, latency = state["fail_every"], state["latency"]
                fail = bool(every) and n % every == every - 1
                state["failed"] += fail
            time.sleep(latency)
            try:
                self._send(503 if fail else 200, busy if fail else ok)
            except (BrokenPipeError, ConnectionResetError):
                pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 512  # 32 clients connecting at once must not overflow the accept queue

    httpd = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=lambda: (sys.stdin.read(), httpd.shutdown()), daemon=True).start()
    print(httpd.server_address[1], flush=True)
    httpd.serve_forever(poll_interval=0.05)


# ----------------------------------------------------------------------------- the client (this process)
class Mock:
    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        port = int(self.proc.stdout.readline())
        self.root = f"http://127.0.0.1:{port}"
        self.url = self.root + "/v1"
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _get(self, path: str) -> dict[str, Any]:
        with self._opener.open(self.root + path, timeout=10) as r:
            return json.loads(r.read())

    def set(self, latency: float, fail_every: int = 0) -> None:
        self._get(f"/control?latency={latency}&fail_every={fail_every}")

    def stats(self) -> dict[str, Any]:
        return self._get("/stats")

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def items_for(tag: str, n_requests: int) -> list[Any]:
    from tl_persona.evals.judges import JudgeItem

    return [JudgeItem(f"Benchmark question {tag}-{i}?", f"Benchmark answer {tag}-{i}.") for i in range(n_requests // 2)]


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer requests per measurement (about 10 s in all)")
    ap.add_argument("--latency", type=float, default=0.05, help="server latency per request, seconds (default 0.05)")
    ap.add_argument("--repeats", type=int, default=3, help="timings per measurement; the median is reported")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve()
        return
    sys.path.insert(0, str(ROOT))
    from tl_persona.evals.http_judge import OpenAIJudge

    rounds = 8 if args.quick else 20  # requests per worker per timing
    lat = args.latency
    mock = Mock()
    rows: list[list[str]] = []
    failures: list[str] = []

    def judge_for(c: int, **kw: Any) -> OpenAIJudge:
        return OpenAIJudge("bench-judge", base_url=mock.url, api_key="sk-bench", api_key_env=None, max_concurrency=c,
                           timeout=10.0, max_retries=5, backoff=0.05, max_backoff=0.2, **kw)

    try:
        # 1. throughput per concurrency, no cache
        mock.set(lat)
        for c in (1, 8, 32):
            n = max(2 * rounds, rounds * c)
            times, sent = [], []
            with judge_for(c) as judge:
                for r in range(args.repeats):
                    items = items_for(f"c{c}r{r}", n)
                    before = mock.stats()["requests"]
                    times.append(timed(lambda: judge.judge(items)))
                    sent.append(mock.stats()["requests"] - before)
            med = statistics.median(times)
            ideal = c / lat
            ratio = n / med / ideal
            if ratio < 0.8:
                failures.append(f"concurrency {c}: {ratio:.0%} of ideal")
            rows.append([f"no cache, concurrency {c}", str(n), f"{med:.3f}", f"{n / med:.1f}", f"{ideal:.0f}",
                         f"**{ratio:.0%}**", str(statistics.median(sent)), "0"])

        # 2. the cache: filling it (every answer is committed as it arrives), then the cache-hit path
        n = rounds * 32 * 2
        fills, times, sent = [], [], []
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(args.repeats):
                items = items_for(f"cache{r}", n)
                with judge_for(32, cache=Path(tmp) / f"judge_cache{r}.sqlite") as judge:
                    fills.append(timed(lambda: judge.judge(items)))
                    before, before_judge = mock.stats()["requests"], judge.stats()["requests"]
                    times.append(timed(lambda: judge.judge(items)))
                    sent.append(mock.stats()["requests"] - before)
                    assert judge.stats()["requests"] == before_judge and judge.stats()["cache_hits"] == n
        fill, med = statistics.median(fills), statistics.median(times)
        if any(sent):
            failures.append(f"cache path sent {sent} HTTP requests")
        rows.append(["cache misses (filling the cache), concurrency 32", str(n), f"{fill:.3f}", f"{n / fill:.1f}",
                     f"{32 / lat:.0f}", f"{n / fill / (32 / lat):.0%}", str(n), "0"])
        rows.append(["cache hits (the same items again)", str(n), f"{med:.4f}", f"{n / med:,.0f}", "-", "-",
                     str(max(sent)), "0"])

        # 3. the retry path: 503 on every 10th request the server receives
        c = 8
        n = rounds * c * 2
        times, retries, sent, failed = [], [], [], []
        with judge_for(c) as judge:
            for r in range(args.repeats):
                mock.set(lat, fail_every=10)
                items = items_for(f"retry{r}", n)
                before = judge.stats()["retries"]
                times.append(timed(lambda: judge.judge(items)))
                retries.append(judge.stats()["retries"] - before)
                st = mock.stats()
                sent.append(st["requests"])
                failed.append(st["failed"])
        mock.set(lat)
        med = statistics.median(times)
        ideal = c / lat
        rows.append([f"10% HTTP 503, concurrency {c}, backoff 0.05 s", str(n), f"{med:.3f}",
                     f"{n / med:.1f} ({n / 2 / med:.1f} items/s)", f"{ideal:.0f}", f"{n / med / ideal:.0%}",
                     str(statistics.median(sent)), f"{statistics.median(retries):g} (503s: {statistics.median(failed):g})"])
    finally:
        mock.close()

    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    print(f"\nOpenAIJudge vs a loopback mock server (own process), latency {lat * 1000:.0f} ms per request; "
          f"median of {args.repeats} timings; Python {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"load average {load[0]:.1f}" + (" (--quick)" if args.quick else "") + "\n")
    head = ["path", "requests", "median s", "requests/s", "ideal (c / latency)", "ratio", "HTTP requests", "retries"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if failures:
        print("\nbelow target (>= 80% of concurrency / latency, 0 requests on cache hits): " + "; ".join(failures))


if __name__ == "__main__":
    main()
