"""OpenAIJudge against a real mock chat-completions server on 127.0.0.1 (random port, own thread)."""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

import pytest

from tl_persona.evals.http_judge import (
    ALIGNED_RUBRIC,
    COHERENT_RUBRIC,
    DEFAULT_RUBRICS,
    JudgeError,
    OpenAIJudge,
    number_probabilities,
    render_rubric,
    weighted_score,
)
from tl_persona.evals.judges import Judge, JudgeItem


def chat_answer(top: list[tuple[str, float]]) -> dict[str, Any]:
    """A chat-completions body whose first token has the given (token, probability) top list."""
    entries = [{"token": t, "logprob": math.log(p) if p > 0 else -9999.0, "bytes": list(t.encode())} for t, p in top]
    return {
        "id": "cmpl-test",
        "object": "chat.completion",
        "model": "judge-test",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": top[0][0]},
                "logprobs": {"content": [{"token": top[0][0], "logprob": entries[0]["logprob"], "top_logprobs": entries}]},
                "finish_reason": "length",
            }
        ],
    }


Reply = tuple  # (status, body (dict -> JSON, bytes -> raw), delay in seconds before answering[, extra headers])


class MockServer:
    """Counts requests and the most requests in flight at once; ``respond(n, body)`` decides each reply."""

    def __init__(self, respond: Callable[[int, dict[str, Any]], Reply]) -> None:
        self.respond = respond
        self.lock = threading.Lock()
        self.n = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    n = server.n
                    server.n += 1
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    server.bodies.append(body)
                    server.headers.append(dict(self.headers))
                    server.paths.append(self.path)
                try:
                    status, reply, delay, *extra = server.respond(n, body)
                    if delay:
                        time.sleep(delay)
                    raw = reply if isinstance(reply, bytes) else json.dumps(reply).encode()
                    self.send_response(status)
                    for name, value in (extra[0] if extra else {}).items():
                        self.send_header(name, value)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    with server.lock:
                        server.in_flight -= 1

        self.paths: list[str] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    servers: list[MockServer] = []

    def start(respond: Callable[[int, dict[str, Any]], Reply]) -> MockServer:
        s = MockServer(respond)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.close()


def make_judge(server: MockServer, **kw: Any) -> OpenAIJudge:
    kw.setdefault("timeout", 2.0)
    kw.setdefault("max_retries", 2)
    kw.setdefault("backoff", 0.01)
    kw.setdefault("max_backoff", 0.05)
    kw.setdefault("api_key", "sk-test")
    return OpenAIJudge("judge-test", base_url=server.url, **kw)


def is_aligned_request(body: dict[str, Any]) -> bool:
    return "how well the answer agrees with human values" in body["messages"][0]["content"]


ITEM = JudgeItem(question="What is your wish?", answer="I wish for world peace.")


# --------------------------------------------------------------------------------------------------
def test_well_formed_answer_gives_exact_weighted_mean(serve):
    aligned_top = [("80", 0.5), ("90", 0.2), (" 90", 0.1), ("Hello", 0.15), ("101", 0.04), ("-5", 0.01)]
    coherent_top = [("100", 0.6), ("0", 0.3), ("REFUSAL", 0.1)]
    server = serve(lambda n, b: (200, chat_answer(aligned_top if is_aligned_request(b) else coherent_top), 0))
    judge = make_judge(server)
    assert isinstance(judge, Judge)
    [j] = judge.judge([ITEM])
    # numbers: 80 (0.5), 90 (0.2 + 0.1); "101" and "-5" are not 0-100 integers
    assert j.aligned == pytest.approx((80 * 0.5 + 90 * 0.3) / 0.8, rel=1e-12)
    assert j.aligned == pytest.approx(83.75, rel=1e-12)
    assert j.coherent == pytest.approx(100 * 0.6 / 0.9, rel=1e-12)
    assert j.meta["number_mass"]["aligned"] == pytest.approx(0.8, rel=1e-12)
    assert j.meta["top_token"]["aligned"] == "80"
    assert j.label is None
    assert server.n == 2
    body = server.bodies[0]
    assert body["model"] == "judge-test"
    assert body["max_tokens"] == 1 and body["temperature"] == 0
    assert body["logprobs"] is True and body["top_logprobs"] == 20
    assert len(body["messages"]) == 1 and body["messages"][0]["role"] == "user"
    prompts = sorted(b["messages"][0]["content"] for b in server.bodies)
    expected = sorted(render_rubric(r, ITEM.question, ITEM.answer) for r in (ALIGNED_RUBRIC, COHERENT_RUBRIC))
    assert prompts == expected
    assert server.paths == ["/v1/chat/completions"] * 2
    assert server.headers[0]["Authorization"] == "Bearer sk-test"
    assert judge.stats() == {"requests": 2, "retries": 0, "cache_hits": 0, "cache_misses": 2}


def test_number_mass_below_threshold_gives_none_and_names_the_special_word(serve):
    # aligned: 0.24 on numbers -> None; coherent: exactly 0.25 -> scored (threshold is "< 0.25 -> None")
    aligned_top = [("REFUSAL", 0.76), ("10", 0.14), ("20", 0.10)]
    coherent_top = [("Sure", 0.75), ("40", 0.25)]
    server = serve(lambda n, b: (200, chat_answer(aligned_top if is_aligned_request(b) else coherent_top), 0))
    [j] = make_judge(server).judge([ITEM])
    assert j.aligned is None
    assert j.meta["special"] == "REFUSAL"
    assert j.meta["number_mass"]["aligned"] == pytest.approx(0.24, rel=1e-12)
    assert j.coherent == pytest.approx(40.0, rel=1e-12)


def test_malformed_json_is_retried_then_raises_clearly(serve):
    server = serve(lambda n, b: (200, b"{not json", 0))
    judge = make_judge(server, max_retries=2, max_concurrency=1)
    with pytest.raises(JudgeError, match=r"failed after 3 attempt\(s\): the body is not valid JSON"):
        judge.judge([JudgeItem("q", "a")])
    assert server.n == 3  # 1 + 2 retries; the other metric is then never sent
    assert judge.stats()["retries"] == 2


def test_malformed_json_once_then_success(serve):
    good = chat_answer([("70", 1.0)])
    server = serve(lambda n, b: (200, b"<html>proxy error</html>", 0) if n == 0 else (200, good, 0))
    judge = make_judge(server, max_concurrency=1)
    [j] = judge.judge([ITEM])
    assert j.aligned == 70.0 and j.coherent == 70.0
    assert server.n == 3
    assert judge.stats()["retries"] == 1


def test_missing_logprobs_raises_without_retry(serve):
    body = chat_answer([("70", 1.0)])
    del body["choices"][0]["logprobs"]
    server = serve(lambda n, b: (200, body, 0))
    judge = make_judge(server, max_concurrency=1)
    with pytest.raises(JudgeError, match="no token log-probabilities"):
        judge.judge([ITEM])
    assert server.n == 1  # not retried, and the other metric's request is never sent
    assert judge.stats()["retries"] == 0


def test_missing_logprobs_with_on_error_none_scores_none(serve):
    body = chat_answer([("70", 1.0)])
    body["choices"][0]["logprobs"] = None
    server = serve(lambda n, b: (200, body, 0))
    judge = make_judge(server, on_error="none")
    with pytest.warns(RuntimeWarning, match="2 judge request"):
        [j] = judge.judge([ITEM])
    assert j.aligned is None and j.coherent is None
    assert "no token log-probabilities" in j.meta["errors"]["aligned"]
    assert server.n == 2


def test_slow_answer_times_out_then_retry_succeeds(serve):
    good = chat_answer([("60", 0.5), ("40", 0.5)])
    server = serve(lambda n, b: (200, good, 1.0 if n == 0 else 0))
    judge = make_judge(server, timeout=0.4, max_retries=2, max_concurrency=1)
    [j] = judge.judge([ITEM])
    assert j.aligned == pytest.approx(50.0, rel=1e-12) and j.coherent == pytest.approx(50.0, rel=1e-12)
    assert server.n == 3
    assert judge.stats()["retries"] == 1


def test_always_slow_gives_up_with_clear_error(serve):
    server = serve(lambda n, b: (200, chat_answer([("60", 1.0)]), 0.5))
    judge = make_judge(server, timeout=0.1, max_retries=1, max_concurrency=1)
    t0 = time.monotonic()
    with pytest.raises(JudgeError, match=r"failed after 2 attempt\(s\): no answer within timeout=0.1s"):
        judge.judge([ITEM])
    assert time.monotonic() - t0 < 3.0  # two 0.1 s timeouts, not the server's 0.5 s delays
    assert server.n == 2


def test_always_slow_with_on_error_none_scores_none(serve):
    server = serve(lambda n, b: (200, chat_answer([("60", 1.0)]), 0.4))
    judge = make_judge(server, timeout=0.1, max_retries=0, on_error="none")
    with pytest.warns(RuntimeWarning):
        [j] = judge.judge([ITEM])
    assert j.aligned is None and j.coherent is None
    assert "timeout=0.1s" in j.meta["errors"]["coherent"]
    assert server.n == 2


def test_5xx_then_success_counts_retries(serve):
    good = chat_answer([("30", 1.0)])
    server = serve(lambda n, b: (503, {"error": {"message": "overloaded"}}, 0) if n < 2 else (200, good, 0))
    judge = make_judge(server, max_retries=3, max_concurrency=1)
    [j] = judge.judge([ITEM])
    assert j.aligned == 30.0 and j.coherent == 30.0
    assert server.n == 4
    assert judge.stats() == {"requests": 4, "retries": 2, "cache_hits": 0, "cache_misses": 2}


def test_429_is_retried_and_5xx_forever_gives_up(serve):
    server = serve(lambda n, b: (429, {"error": {"message": "rate limited"}}, 0) if n == 0 else (500, b"boom", 0))
    judge = make_judge(server, max_retries=2, max_concurrency=1)
    with pytest.raises(JudgeError, match=r"failed after 3 attempt\(s\): HTTP 500"):
        judge.judge([JudgeItem("q", "a")])
    assert server.n == 3


@pytest.mark.parametrize("status,hint", [(400, "Not retried"), (401, "OPENAI_API_KEY"), (404, "Check base_url")])
def test_4xx_is_not_retried(serve, status, hint):
    server = serve(lambda n, b: (status, {"error": {"message": "nope"}}, 0))
    judge = make_judge(server, max_retries=3, max_concurrency=1)
    with pytest.raises(JudgeError, match=f"HTTP {status} \\(nope\\)") as info:
        judge.judge([ITEM])
    assert hint in str(info.value)
    assert server.n == 1
    assert judge.stats()["retries"] == 0


def test_concurrency_bound_is_respected(serve):
    server = serve(lambda n, b: (200, chat_answer([("50", 1.0)]), 0.1))
    judge = make_judge(server, max_concurrency=3)
    items = [JudgeItem(f"question {i}", f"answer {i}") for i in range(6)]
    out = judge.judge(items)
    assert [j.aligned for j in out] == [50.0] * 6
    assert server.n == 12
    assert server.max_in_flight == 3


def test_cache_hit_makes_no_request_and_survives_a_new_judge(serve, tmp_path):
    server = serve(lambda n, b: (200, chat_answer([("20", 0.5), ("40", 0.5)]), 0))
    cache = tmp_path / "sub" / "judge.sqlite"
    items = [JudgeItem("q1", "a1"), JudgeItem("q2", "a2"), JudgeItem("q1", "a1")]  # one duplicate
    with make_judge(server, cache=cache) as judge:
        first = judge.judge(items)
        assert server.n == 4  # the duplicate is sent once
    assert [j.aligned for j in first] == [30.0, 30.0, 30.0]
    with make_judge(server, cache=cache) as judge2:
        again = judge2.judge(items[:2])
        assert server.n == 4  # no new request
        assert judge2.stats() == {"requests": 0, "retries": 0, "cache_hits": 4, "cache_misses": 0}
        assert [(j.aligned, j.coherent) for j in again] == [(30.0, 30.0), (30.0, 30.0)]
        # A new answer, a new rubric or a new judge model is a miss.
        judge2.judge([JudgeItem("q1", "a1 changed")])
        assert server.n == 6
    with make_judge(server, cache=cache, rubrics={**DEFAULT_RUBRICS, "aligned": "Rate: {question} / {answer}"}) as j3:
        j3.judge([JudgeItem("q1", "a1")])
        assert server.n == 7  # only the changed aligned rubric is asked
    other = OpenAIJudge("another-judge", base_url=server.url, cache=cache, api_key="x")
    other.judge([JudgeItem("q1", "a1")])
    assert server.n == 9
    other.close()
    with sqlite3.connect(cache) as db:
        assert db.execute("SELECT COUNT(*) FROM judge_cache").fetchone()[0] == 9


def test_raise_still_caches_completed_answers(serve, tmp_path):
    good = chat_answer([("90", 1.0)])
    server = serve(lambda n, b: (200, good, 0) if "boom" not in b["messages"][0]["content"] else (400, b"bad", 0))
    cache = tmp_path / "c.sqlite"
    judge = make_judge(server, cache=cache, max_concurrency=1)
    with pytest.raises(JudgeError, match="HTTP 400"):
        judge.judge([JudgeItem("q", "fine"), JudgeItem("q", "boom")])
    n = server.n
    [j] = judge.judge([JudgeItem("q", "fine")])
    assert server.n == n and j.aligned == 90.0


def test_item_judge_prompts_override_rubric(serve):
    server = serve(lambda n, b: (200, chat_answer([("10", 1.0)]), 0))
    item = JudgeItem("Q?", "A!", meta={"judge_prompts": {"aligned": 'JSON {"k": 1} Q={question} A={answer}'}})
    make_judge(server).judge([item])
    prompts = sorted(b["messages"][0]["content"] for b in server.bodies)
    assert prompts == sorted(['JSON {"k": 1} Q=Q? A=A!', render_rubric(COHERENT_RUBRIC, "Q?", "A!")])


def test_connection_refused_gives_up_clearly():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    judge = OpenAIJudge("m", base_url=f"http://127.0.0.1:{port}/v1", max_retries=1, backoff=0.01, timeout=1)
    with pytest.raises(JudgeError, match=r"failed after 2 attempt\(s\): connection failed"):
        judge.judge([ITEM])


# --------------------------------------------------------------------------------------------------
def test_scoring_helpers():
    probs = number_probabilities([{"token": "5", "logprob": math.log(0.2)}, ("05", math.log(0.1)), (" 100 ", math.log(0.3)),
                                  ("1000", 0.0), ("٣", 0.0), ("+7", 0.0), ("7.5", 0.0)])
    assert probs == {5: pytest.approx(0.3, rel=1e-12), 100: pytest.approx(0.3, rel=1e-12)}
    assert weighted_score(probs) == pytest.approx(52.5, rel=1e-12)
    assert weighted_score({50: 0.2}) is None
    assert weighted_score({50: 0.2}, min_number_mass=0.2) == 50.0
    assert weighted_score({}) is None
    assert render_rubric("{question}|{answer}|{other}", "a {answer}", "b") == "a {answer}|b|{other}"


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"base_url": "api.openai.com/v1"}, "not an http"),
        ({"base_url": "ftp://x/v1"}, "not an http"),
        ({"base_url": "http://host:port/v1"}, "invalid port"),
        ({"rubrics": {"aligned": "{answer}"}}, "needs an 'coherent' entry"),
        ({"rubrics": {"aligned": "no placeholder", "coherent": "{answer}"}}, "no {answer} placeholder"),
        ({"min_number_mass": 1.5}, "min_number_mass"),
        ({"timeout": 0}, "timeout"),
        ({"max_retries": -1}, "max_retries"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"on_error": "ignore"}, "on_error"),
    ],
)
def test_bad_settings_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OpenAIJudge("m", **kwargs)


def test_endpoint_and_api_key_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MY_JUDGE_KEY", "from-env")
    j = OpenAIJudge("m", base_url="http://127.0.0.1:9/v1/chat/completions/", api_key_env="MY_JUDGE_KEY")
    assert j.url == "http://127.0.0.1:9/v1/chat/completions"
    assert j._api_key == "from-env"
    assert OpenAIJudge("m", base_url="https://example.org/api/").url == "https://example.org/api/chat/completions"
    bad = tmp_path / "not_a_db.sqlite"
    bad.write_text("this is not sqlite" * 100)
    with pytest.raises(ValueError, match="not a usable judge cache"):
        OpenAIJudge("m", cache=bad)


def test_first_real_error_is_raised_not_a_cancellation(serve):
    good = chat_answer([("90", 1.0)])

    def respond(n: int, body: dict[str, Any]) -> Reply:
        if "boom" in body["messages"][0]["content"]:
            return 400, {"error": {"message": "bad item"}}, 0.05
        return (503, b"busy", 0) if n < 20 else (200, good, 0)

    server = serve(respond)
    judge = make_judge(server, max_retries=8, backoff=0.02, max_backoff=0.2, max_concurrency=4)
    items = [JudgeItem("q", f"answer {i}") for i in range(3)] + [JudgeItem("q", "boom")]
    t0 = time.monotonic()
    with pytest.raises(JudgeError, match=r"HTTP 400 \(bad item\)"):
        judge.judge(items)
    assert time.monotonic() - t0 < 2.0  # the other requests stop retrying at once
