"""Throughput of tl_persona's HTTP judge (OpenAIJudge) over TLS, before and after the kept httpx client.

A loopback HTTPS mock of an OpenAI-compatible judge runs in its own process (as a real judge server
would, so that it does not share the client's GIL): a ``ThreadingHTTPServer`` on 127.0.0.1 speaking
HTTP/1.1 with keep-alive, with a certificate made at the start of the run (a throw-away CA and a
server certificate, ECDSA P-256, ``tl_persona.testing.tls_certificate``). The TLS handshake runs in
each connection's own server thread. It answers every chat-completions request after a fixed latency
(50 ms by default) with a canned one-token answer with top log-probabilities, and counts requests and
the connections it accepted. A second, plain-http port on the same process takes the benchmark's
control requests, so they are not counted. Nothing leaves the machine.

Two clients, measured in one run, taking turns on every timing (so a change in the machine's load
hits both alike):

* **before**: the judge as it was (urllib, one connection and one TLS handshake per request), loaded
  from git (``--before``, default 689519b, the commit before the change); it trusts the benchmark's CA
  through ``SSL_CERT_FILE``;
* **after**: this tree's judge (httpx, a kept pool of keep-alive connections), ``verify=<the CA>``.

Measured, each ``--repeats`` times (the median is reported): requests/s at concurrency 1, 8 and 32
(no cache) against the ideal ``concurrency / latency``, and connections opened; target: at least
90% of the ideal at concurrency 32, connections <= concurrency + retries. Then, for both, the retry
path: the server answers 503 to every 10th request (a deterministic 10%), concurrency 8, backoff
0.05 s; and, for the new judge, the cache: filling it at concurrency 32, then the same items again
(served from the cache, 0 HTTP requests).

    python benchmarks/bench_judge.py            # about 60 s
    python benchmarks/bench_judge.py --quick    # about 25 s
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import ssl
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
        "id": "cmpl-bench", "object": "chat.completion", "model": "bench-judge-2024-08-06",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "85"}, "finish_reason": "length",
                     "logprobs": {"content": [{"token": "85", "logprob": entries[0]["logprob"], "top_logprobs": entries}]}}],
    }).encode()


def _send(handler: BaseHTTPRequestHandler, status: int, body: bytes) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def serve(cert: str, key: str) -> None:
    """Run the HTTPS mock and its plain-http control port; print both ports; stop when stdin closes."""
    state = {"latency": 0.05, "fail_every": 0, "requests": 0, "failed": 0, "connections": 0}
    lock = threading.Lock()
    ok, busy = _answer(), json.dumps({"error": {"message": "overloaded (benchmark)"}}).encode()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)

    class Judge(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # as real servers (uvicorn, nginx) do: else a kept connection waits 40 ms
        # on every response (headers and body are two writes; Nagle holds the body for the delayed ACK)

        def setup(self) -> None:
            self.request = ctx.wrap_socket(self.request, server_side=True)  # the handshake, in this thread
            with lock:
                state["connections"] += 1
            super().setup()

        def log_message(self, *args: Any) -> None:
            pass

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
                _send(self, 503 if fail else 200, busy if fail else ok)
            except (BrokenPipeError, ConnectionResetError):
                pass

    class Control(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - /control?latency=..&fail_every=.. (resets the counters), /stats
            url = urllib.parse.urlsplit(self.path)
            with lock:
                if url.path == "/control":
                    q = urllib.parse.parse_qs(url.query)
                    state["latency"] = float(q.get("latency", [state["latency"]])[0])
                    state["fail_every"] = int(q.get("fail_every", [0])[0])
                    state["requests"] = state["failed"] = state["connections"] = 0
                out = json.dumps(state).encode()
            _send(self, 200, out)

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 512  # 32 clients connecting at once must not overflow the accept queue

        def handle_error(self, request: Any, client_address: Any) -> None:
            pass  # a client that went away mid-handshake

    judge, control = Server(("127.0.0.1", 0), Judge), Server(("127.0.0.1", 0), Control)
    for s in (judge, control):
        threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    print(judge.server_address[1], control.server_address[1], flush=True)
    sys.stdin.read()


# ----------------------------------------------------------------------------- the clients (this process)
class Mock:
    def __init__(self, cert: Path, key: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", str(cert), str(key)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        port, control = self.proc.stdout.readline().split()
        self.url = f"https://127.0.0.1:{port}/v1"
        self.control = f"http://127.0.0.1:{control}"
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _get(self, path: str) -> dict[str, Any]:
        with self._opener.open(self.control + path, timeout=10) as r:
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


def before_judge_class(rev: str) -> type:
    """OpenAIJudge as it was at ``rev`` (its module text from git, loaded inside tl_persona.evals so that
    its relative imports resolve)."""
    try:
        text = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:tl_persona/evals/http_judge.py"],
                              capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise SystemExit(f"bench_judge: cannot read the 'before' judge at {rev} from git ({e}); "
                         "pass --before REV of this repository, or --before none") from None
    name = "tl_persona.evals._bench_before_http_judge"
    spec = importlib.util.spec_from_loader(name, loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "tl_persona.evals"
    sys.modules[name] = module
    exec(compile(text, f"{rev}:tl_persona/evals/http_judge.py", "exec"), module.__dict__)
    return module.OpenAIJudge


def items_for(tag: str, n_requests: int) -> list[Any]:
    from tl_persona.evals.judges import JudgeItem

    return [JudgeItem(f"Benchmark question {tag}-{i}?", f"Benchmark answer {tag}-{i}.") for i in range(n_requests // 2)]


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class Bench:
    """The clients, the mock and the table rows."""

    def __init__(self, args: argparse.Namespace, mock: Mock, ca: Path) -> None:
        from tl_persona.evals.http_judge import OpenAIJudge

        self.args, self.mock, self.lat = args, mock, args.latency
        self.rounds = 8 if args.quick else 20  # requests per worker per timing
        self.kinds: dict[str, Callable[..., Any]] = {"after": lambda *a, **kw: OpenAIJudge(*a, verify=str(ca), **kw)}
        if args.before != "none":
            self.kinds = {"before": before_judge_class(args.before), **self.kinds}
        self.rows: list[list[str]] = []
        self.failures: list[str] = []

    def judge(self, kind: str, c: int, **kw: Any) -> Any:
        return self.kinds[kind]("bench-judge-2024-08-06", base_url=self.mock.url, api_key="sk-bench", api_key_env=None,
                                max_concurrency=c, timeout=10.0, max_retries=5, backoff=0.05, max_backoff=0.2, **kw)

    def run_once(self, judge: Any, items: list[Any]) -> tuple[float, dict[str, Any], int, float]:
        """One timing: seconds, the server's counters, the judge's retries, this process's CPU seconds."""
        self.mock.set(self.lat, fail_every=self.fail_every)
        retries = judge.stats()["retries"]
        cpu = time.process_time()
        seconds = timed(lambda: judge.judge(items))
        return seconds, self.mock.stats(), judge.stats()["retries"] - retries, time.process_time() - cpu

    def concurrency(self, c: int, fail_every: int = 0) -> None:
        """Every client at concurrency ``c``, taking turns on each repeat."""
        self.fail_every = fail_every
        n = max(2 * self.rounds, self.rounds * c) * (2 if fail_every else 1)
        runs: dict[str, list[tuple[float, dict[str, Any], int, float]]] = {k: [] for k in self.kinds}
        judges = {k: self.judge(k, c) for k in self.kinds}
        try:
            for r in range(self.args.repeats):
                for kind, judge in judges.items():
                    runs[kind].append(self.run_once(judge, items_for(f"{kind}-c{c}-f{fail_every}-r{r}", n)))
        finally:
            for judge in judges.values():
                judge.close()
        for kind, rs in runs.items():
            self.row(kind, c, n, rs, fail_every)

    def row(self, kind: str, c: int, n: int, rs: list[tuple[float, dict[str, Any], int, float]], fail_every: int) -> None:
        med = statistics.median(r[0] for r in rs)
        cpu = statistics.median(r[3] for r in rs) / n * 1000
        conns = max(r[1]["connections"] for r in rs)
        retries = statistics.median(r[2] for r in rs)
        ideal = c / self.lat
        ratio = n / med / ideal
        what = f"10% HTTP 503, concurrency {c}" if fail_every else f"concurrency {c}"
        if kind == "after" and not fail_every and c == 32 and ratio < 0.9:
            self.failures.append(f"after, concurrency 32: {ratio:.0%} of ideal (target 90%)")
        worst = max(r[1]["connections"] - r[2] for r in rs)
        if kind == "after" and worst > c:
            self.failures.append(f"after, {what}: {worst} connections beyond the retries (target <= {c})")
        self.rows.append([kind, what, str(n), f"{med:.3f}", f"{n / med:.1f}", f"{ideal:.0f}", f"**{ratio:.0%}**",
                          str(conns), f"{retries:g}", f"{cpu:.2f}"])

    def cache(self) -> None:
        """The new judge's cache: filling it at concurrency 32, then the same items again."""
        n = self.rounds * 32 * 2
        fills, hits, sent = [], [], []
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(self.args.repeats):
                items = items_for(f"cache{r}", n)
                with self.judge("after", 32, cache=Path(tmp) / f"judge_cache{r}.sqlite") as judge:
                    self.mock.set(self.lat)
                    fills.append(timed(lambda: judge.judge(items)))
                    before = self.mock.stats()["requests"]
                    hits.append(timed(lambda: judge.judge(items)))
                    sent.append(self.mock.stats()["requests"] - before)
        fill, hit = statistics.median(fills), statistics.median(hits)
        if any(sent):
            self.failures.append(f"cache hits sent {sent} HTTP requests")
        self.rows.append(["after", "filling the cache, concurrency 32", str(n), f"{fill:.3f}", f"{n / fill:.1f}",
                          f"{32 / self.lat:.0f}", f"{n / fill / (32 / self.lat):.0%}", "-", "0", "-"])
        self.rows.append(["after", "cache hits (the same items again)", str(n), f"{hit:.4f}", f"{n / hit:,.0f}", "-", "-",
                          f"0 ({max(sent)} requests)", "0", "-"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer requests per measurement (about 25 s in all)")
    ap.add_argument("--latency", type=float, default=0.05, help="server latency per request, seconds (default 0.05)")
    ap.add_argument("--repeats", type=int, default=3, help="timings per measurement; the median is reported")
    ap.add_argument("--before", default="689519b", help="git revision of the 'before' judge, or 'none' to skip it")
    ap.add_argument("--serve", nargs=2, metavar=("CERT", "KEY"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(*args.serve)
        return
    sys.path.insert(0, str(ROOT))
    from tl_persona.testing import tls_certificate

    with tempfile.TemporaryDirectory(prefix="bench_judge_tls_") as tmp:
        ca, cert, key = tls_certificate(tmp)
        os.environ["SSL_CERT_FILE"] = str(ca)  # how the urllib judge (before) trusts the benchmark's CA
        mock = Mock(cert, key)
        try:
            bench = Bench(args, mock, ca)
            for c in (1, 8, 32):
                bench.concurrency(c)
            bench.concurrency(8, fail_every=10)
            bench.cache()
        finally:
            mock.close()
    report(args, bench)


def report(args: argparse.Namespace, bench: Bench) -> None:
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    print(f"\nOpenAIJudge over TLS vs a loopback HTTPS mock (own process), latency {args.latency * 1000:.0f} ms per "
          f"request; median of {args.repeats} timings; before = {args.before}; Python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, load average {load[0]:.1f}" + (" (--quick)" if args.quick else "") + "\n")
    head = ["judge", "path", "requests", "median s", "requests/s", "ideal (c / latency)", "ratio",
            "connections opened", "retries", "client CPU ms / request"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in bench.rows:
        print("| " + " | ".join(row) + " |")
    if bench.failures:
        print("\nbelow target: " + "; ".join(bench.failures))


if __name__ == "__main__":
    main()
