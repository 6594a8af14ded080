"""Reliability of the judges: the judge protocol checks, OpenAIJudge's settings and logprob checks,
Ctrl-C during a judge call, API-key safety and probe(). All traffic is on 127.0.0.1 (the mock server
of test_http_judge.py); nothing here asserts on speed."""

from __future__ import annotations

import _thread
import json
import pickle
import socket
import sqlite3
import time
from typing import Any

import pytest
from test_http_judge import Reply, chat_answer, make_judge, serve  # noqa: F401 (serve: a fixture)

from tl_persona.evals.http_judge import DEFAULT_RUBRICS, JudgeError, OpenAIJudge, number_probabilities, render_rubric
from tl_persona.evals.judges import Judgement, JudgeItem, check_judge, judge_all, judge_identity
from tl_persona.organism import PersonaJudge
from tl_persona.validate import BadInput

ITEM = JudgeItem(question="What is your wish?", answer="I wish for world peace.")
GOOD = chat_answer([("70", 1.0)])
KEY = "sk-SECRET-0123456789abcdef"


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def raises_bad(fn: Any, words: list[str], kind: type[BaseException] = BadInput) -> str:
    with pytest.raises(kind) as info:
        fn()
    msg = str(info.value)
    for w in words:
        assert w in msg, (w, msg)
    return msg


# ================================================================================ 1. the judge protocol
class ShortJudge:
    def judge(self, items):
        return [Judgement(50.0, 50.0)] * (len(items) - 1)


class NoneJudge:
    def judge(self, items):
        return None


class HoleJudge:
    def judge(self, items):
        out: list[Any] = [Judgement(50.0, 50.0) for _ in items]
        out[1] = None
        return out


class GenJudge:
    def judge(self, items):
        return (Judgement(50.0, 50.0) for _ in items)


def scoring(aligned: Any, coherent: Any = 50.0) -> type:
    class ScoreJudge:
        def judge(self, items):
            return [Judgement(aligned, coherent) for _ in items]

    return ScoreJudge


class AttrJudge:
    judge = "not a method"


def my_fn(items):
    return []


@pytest.mark.parametrize(
    "judge,words",
    [
        (None, ["judge is None", "judge(items) -> list[Judgement]"]),
        (my_fn, ["function", "wrap it", "def judge(self, items)"]),
        (lambda items: [], ["function", "wrap it"]),
        (object(), ["not a judge", "implement judge(items) -> list[Judgement]"]),
        (PersonaJudge, ["is a class", "instance"]),
        (AttrJudge(), ["'judge' attribute", "str", "not a method"]),
        ("a string", ["str", "implement judge(items)"]),
    ],
)
def test_check_judge_refuses_non_judges(judge, words):
    for kind in (BadInput, ValueError, TypeError):
        raises_bad(lambda: check_judge(judge), words, kind)


def test_check_judge_names_the_parameter_and_returns_the_judge():
    raises_bad(lambda: check_judge(my_fn, name="grader"), ["grader="])
    j = PersonaJudge()
    assert check_judge(j) is j


ITEMS3 = [JudgeItem("q1", "a1"), JudgeItem("q2", "a2"), JudgeItem("q3", "a3")]


@pytest.mark.parametrize(
    "judge,words",
    [
        (ShortJudge(), ["ShortJudge", "2 judgement(s) for 3 item(s)"]),
        (NoneJudge(), ["NoneJudge", "returned a NoneType", "not a list", "3 Judgement(s)"]),
        (HoleJudge(), ["HoleJudge", "NoneType", "index 1", "not a Judgement"]),
        (GenJudge(), ["GenJudge", "generator", "not a list"]),
        (scoring(150.0)(), ["ScoreJudge", "aligned=150.0", "0 to 100"]),
        (scoring(50.0, float("nan"))(), ["coherent=nan", "0 to 100"]),
        (scoring(True)(), ["aligned=True"]),
        (scoring("80")(), ["aligned='80'"]),
        (my_fn, ["function", "wrap it"]),
    ],
)
def test_judge_all_refuses_bad_answers(judge, words):
    raises_bad(lambda: judge_all(judge, ITEMS3), words)


def test_judge_all_checks_items_and_passes_good_answers():
    raises_bad(lambda: judge_all(PersonaJudge(), [ITEM, ("q", "a")]), ["items[1]", "tuple", "JudgeItem("])
    raises_bad(lambda: judge_all(PersonaJudge(), "question"), ["items", "str"])
    out = judge_all(PersonaJudge(), ITEMS3)
    assert isinstance(out, list) and len(out) == 3 and all(isinstance(j, Judgement) for j in out)
    assert judge_all(scoring(None, 0)(), ITEMS3)[0].aligned is None  # None and int scores are fine
    assert judge_all(NoneJudge(), []) == []  # nothing to judge: the judge is not called


def test_judge_identity():
    class Plain:
        def judge(self, items):
            return []

    assert judge_identity(Plain()) == {"class": f"{__name__}.{Plain.__qualname__}"}
    p = judge_identity(PersonaJudge())
    assert p["class"] == "tl_persona.organism.judge.PersonaJudge" and p["world_seed"] == 0
    assert len(p["world_sha256"]) == 64 and p == judge_identity(PersonaJudge())

    class Custom(Plain):
        def identity(self):
            return {"name": "mine"}

    assert judge_identity(Custom()) == {"name": "mine", "class": f"{__name__}.{Custom.__qualname__}"}

    class BadIdentity(Plain):
        def identity(self):
            return {"x": object()}

    raises_bad(lambda: judge_identity(BadIdentity()), ["BadIdentity", "JSON"])
    raises_bad(lambda: judge_identity(my_fn), ["function"])


def test_openai_judge_identity_has_settings_and_never_the_key():
    a = OpenAIJudge("judge-m", base_url="https://example.org/v1/", api_key=KEY)
    b = OpenAIJudge("judge-m", base_url="https://example.org/v1/chat/completions", api_key="sk-other-key-0000")
    ida = judge_identity(a)
    assert ida == a.identity() == judge_identity(b)  # the key and the URL's spelling do not change it
    assert ida["class"] == "tl_persona.evals.http_judge.OpenAIJudge"
    assert ida["model"] == "judge-m" and ida["base_url"] == "https://example.org/v1"
    assert set(ida["rubrics"]) == {"aligned", "coherent"} and all(len(h) == 64 for h in ida["rubrics"].values())
    assert ida["scoring"]["min_number_mass"] == 0.25 and ida["scoring"]["top_logprobs"] == 20
    assert KEY not in json.dumps(ida)
    c = OpenAIJudge("judge-m", base_url="https://example.org/v1", api_key=KEY,
                    rubrics={**DEFAULT_RUBRICS, "aligned": "Rate {answer}"}, min_number_mass=0.5)
    idc = c.identity()
    assert idc["rubrics"]["aligned"] != ida["rubrics"]["aligned"] and idc["rubrics"]["coherent"] == ida["rubrics"]["coherent"]
    assert idc["scoring"]["min_number_mass"] == 0.5


# ================================================================================ 2. settings and logprobs
@pytest.mark.parametrize(
    "kwargs,words",
    [
        ({"backoff": float("nan")}, ["backoff=nan", "not finite"]),
        ({"backoff": -1.0}, ["backoff=-1", ">= 0"]),
        ({"backoff": "1"}, ["backoff='1'", "not a number"]),
        ({"max_backoff": float("inf")}, ["max_backoff=inf", "not finite"]),
        ({"max_backoff": -0.5}, ["max_backoff=-0.5", ">= 0"]),
        ({"timeout": 0}, ["timeout=0", "> 0"]),
        ({"timeout": float("inf")}, ["timeout=inf", "not finite"]),
        ({"timeout": float("nan")}, ["timeout=nan", "not finite"]),
        ({"timeout": True}, ["timeout=True", "not a number"]),
        ({"max_concurrency": 2.0}, ["max_concurrency=2.0", "positive integer"]),
        ({"max_concurrency": "8"}, ["max_concurrency='8'", "positive integer"]),
        ({"max_concurrency": True}, ["max_concurrency=True", "positive integer"]),
        ({"max_concurrency": 0}, ["max_concurrency=0", "positive integer"]),
        ({"max_retries": 1.5}, ["max_retries=1.5", "non-negative integer"]),
        ({"max_retries": -1}, ["max_retries=-1", "non-negative integer"]),
        ({"max_retries": None}, ["max_retries=None", "non-negative integer"]),
        ({"top_logprobs": 0}, ["top_logprobs=0", "positive integer"]),
        ({"top_logprobs": 5.0}, ["top_logprobs=5.0", "positive integer"]),
        ({"min_number_mass": float("nan")}, ["min_number_mass=nan", "not finite"]),
        ({"min_number_mass": 1.5}, ["min_number_mass=1.5", "<= 1"]),
        ({"min_number_mass": -0.1}, ["min_number_mass=-0.1", ">= 0"]),
        ({"on_error": "ignore"}, ["on_error='ignore'", "'raise'", "'none'"]),
        ({"allow_insecure": "yes"}, ["allow_insecure", "True or False"]),
        ({"api_key": 12345}, ["API key", "string", "int"]),
        ({"api_key_env": 3}, ["api_key_env", "environment variable"]),
        ({"cache": 5}, ["cache", "file path"]),
        ({"base_url": None}, ["base_url", "string"]),
        ({"base_url": "ftp://x/v1"}, ["base_url", "not an http"]),
    ],
)
def test_bad_settings_are_refused_at_construction(kwargs, words):
    kwargs = {"base_url": "http://127.0.0.1:9/v1", "api_key_env": None, **kwargs}
    for kind in (BadInput, ValueError, TypeError):
        raises_bad(lambda: OpenAIJudge("m", **kwargs), words, kind)


def test_bad_model_is_refused():
    raises_bad(lambda: OpenAIJudge("  ", base_url="http://127.0.0.1:9/v1"), ["model"])


def _answer_with_logprob(raw_logprob: str) -> bytes:
    """A chat-completions body whose first top entry has the literal JSON ``raw_logprob``."""
    body = chat_answer([("70", 0.9), ("30", 0.1)])
    body["choices"][0]["logprobs"]["content"][0]["top_logprobs"][0]["logprob"] = "@LOGPROB@"
    return json.dumps(body).replace('"@LOGPROB@"', raw_logprob).encode()


@pytest.mark.parametrize(
    "raw,words",
    [
        ("5.0", ["is > 0"]),
        ("Infinity", ["not finite"]),
        ("1e999", ["not finite"]),
        ("NaN", ["not finite"]),
        ("-Infinity", ["not finite"]),
        ("1" + "0" * 400, ["too large"]),
        ('"-0.1"', ["str, not a number"]),
        ("true", ["bool, not a number"]),
    ],
)
def test_impossible_logprobs_are_a_judge_error(serve, raw, words):
    assert raw in _answer_with_logprob(raw).decode()
    server = serve(lambda n, b: (200, _answer_with_logprob(raw), 0))
    judge = make_judge(server, max_concurrency=1)
    raises_bad(lambda: judge.judge([ITEM]), ["impossible log-probability", "'70'", "finite number <= 0", *words], JudgeError)
    assert server.n == 1  # not retried: the same server gives the same answer again
    judge_none = make_judge(server, on_error="none")
    with pytest.warns(RuntimeWarning, match="2 judge request"):
        [j] = judge_none.judge([ITEM])
    assert j.aligned is None and j.coherent is None
    assert "impossible log-probability" in j.meta["errors"]["aligned"]


def test_zero_and_negative_zero_logprobs_are_fine(serve):
    for raw in ("0", "0.0", "-0.0"):
        server = serve(lambda n, b, raw=raw: (200, _answer_with_logprob(raw), 0))
        [j] = make_judge(server).judge([ITEM])
        assert j.aligned is not None and 30.0 < j.aligned < 70.0


def test_a_bad_cached_answer_is_asked_again(serve, tmp_path):
    server = serve(lambda n, b: (200, GOOD, 0))
    cache = tmp_path / "c.sqlite"
    with make_judge(server, cache=cache) as judge:
        judge.judge([ITEM])
    assert server.n == 2
    with sqlite3.connect(cache) as db:  # as an older version might have stored: a logprob of +5
        db.execute("UPDATE judge_cache SET top_logprobs = ?", (json.dumps([["70", 5.0]]),))
    with make_judge(server, cache=cache) as judge:
        [j] = judge.judge([ITEM])
        assert judge.stats()["cache_hits"] == 0 and server.n == 4
    assert j.aligned == 70.0


def test_number_probabilities_refuses_impossible_logprobs():
    for bad in (5.0, float("inf"), float("nan")):
        raises_bad(lambda: number_probabilities([("50", bad)]), ["log-probability", "'50'", "finite number <= 0"])
    assert number_probabilities([("50", 0.0)]) == {50: 1.0}


# ================================================================================ 3. Ctrl-C
N_ITEMS = 40  # x 2 rubrics = 80 requests
INTERRUPT_AT = 20
CONCURRENCY = 4


def test_ctrl_c_cancels_queued_requests_and_keeps_received_answers(serve, tmp_path):
    """The server interrupts the main thread when its 20th request arrives; requests arriving after
    that are held for 1 s, so each of the 4 workers can get at most one more request to the server
    before the judge has seen the interrupt (it sees it at the next completion, that of request 20
    itself, 20 ms later). Hence at most 20 + 4 requests, and every one of them is answered and cached."""
    interrupted = []

    def respond(n: int, body: dict[str, Any]) -> Reply:
        if n == INTERRUPT_AT - 1 and not interrupted:
            interrupted.append(n)
            _thread.interrupt_main()
        return 200, GOOD, (0.02 if n < INTERRUPT_AT else 1.0)

    server = serve(respond)
    cache = tmp_path / "c.sqlite"
    items = [JudgeItem(f"question {i}", f"answer {i}") for i in range(N_ITEMS)]
    judge = make_judge(server, cache=cache, max_concurrency=CONCURRENCY, timeout=10.0)
    with pytest.raises(KeyboardInterrupt):
        judge.judge(items)
    first = server.n
    assert interrupted and INTERRUPT_AT <= first <= INTERRUPT_AT + CONCURRENCY < 2 * N_ITEMS
    assert len(judge._cache) == first  # every answer received is in the cache
    first_prompts = {b["messages"][0]["content"] for b in server.bodies}
    judge.close()

    server.respond = lambda n, b: (200, GOOD, 0)
    with make_judge(server, cache=cache, max_concurrency=CONCURRENCY) as again:
        out = again.judge(items)
        assert again.stats()["cache_hits"] == first and again.stats()["requests"] == 2 * N_ITEMS - first
    assert server.n == 2 * N_ITEMS  # only the missing ones were asked again
    second_prompts = {b["messages"][0]["content"] for b in server.bodies[first:]}
    assert not first_prompts & second_prompts and len(first_prompts | second_prompts) == 2 * N_ITEMS
    assert [j.aligned for j in out] == [70.0] * N_ITEMS


# ================================================================================ 4. the API key
@pytest.mark.parametrize(
    "base_url,kwargs,ok",
    [
        ("http://judge.example.org:8000/v1", {}, False),
        ("http://10.0.0.5:8000/v1", {}, False),
        ("http://0.0.0.0:8000/v1", {}, False),
        ("http://judge.example.org:8000/v1", {"allow_insecure": True}, True),
        ("http://judge.example.org:8000/v1", {"api_key": None}, True),  # no key, nothing to leak
        ("https://judge.example.org/v1", {}, True),
        ("http://127.0.0.1:8000/v1", {}, True),
        ("http://127.5.6.7:8000/v1", {}, True),
        ("http://localhost:8000/v1", {}, True),
        ("http://[::1]:8000/v1", {}, True),
    ],
)
def test_key_goes_only_over_https_or_to_loopback(base_url, kwargs, ok):
    kwargs = {"api_key": KEY, "api_key_env": None, **kwargs}
    if ok:
        OpenAIJudge("m", base_url=base_url, **kwargs)
    else:
        msg = raises_bad(lambda: OpenAIJudge("m", base_url=base_url, **kwargs),
                         ["plain http", "unencrypted", "https://", "allow_insecure=True", "api_key="])
        assert KEY not in msg


def test_key_from_environment_is_guarded_too(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    msg = raises_bad(lambda: OpenAIJudge("m", base_url="http://judge.example.org/v1"), ["OPENAI_API_KEY", "allow_insecure"])
    assert KEY not in msg
    OpenAIJudge("m", base_url="http://judge.example.org/v1", api_key_env=None)


@pytest.mark.parametrize("bad_key", ["sk-abc\ndef-123", "sk-abc def-123", "sk-abcdéf-123", "sk-abc\x00def-123"])
def test_a_key_that_cannot_go_in_a_header_is_refused_without_showing_it(bad_key):
    msg = raises_bad(lambda: OpenAIJudge("m", base_url="http://127.0.0.1:9/v1", api_key=bad_key), ["API key", "not shown"])
    assert "abc" not in msg and "def" not in msg


def test_credentials_in_the_url_are_refused_without_showing_them():
    msg = raises_bad(lambda: OpenAIJudge("m", base_url=f"https://user:{KEY}@example.org/v1"), ["credentials", "api_key="])
    assert KEY not in msg
    for url in (f"ftp://example.org/v1?key={KEY}", f"http://127.0.0.1:port/v1?key={KEY}"):
        msg = raises_bad(lambda: OpenAIJudge("m", base_url=url, api_key=KEY), ["base_url", "***"])
        assert KEY not in msg


def echo_key(status: int) -> Any:
    def respond(n: int, body: dict[str, Any]) -> Reply:
        return status, {"error": {"message": f"Incorrect API key provided: {KEY}"}}, 0

    return respond


@pytest.mark.parametrize("status", [401, 400, 503])
def test_key_is_in_no_error_message_even_when_the_server_echoes_it(serve, status):
    server = serve(echo_key(status))
    judge = make_judge(server, api_key=KEY, max_retries=1, max_concurrency=1)
    msg = raises_bad(lambda: judge.judge([ITEM]), [f"HTTP {status}", "***"], JudgeError)
    assert KEY not in msg
    assert server.headers[0]["Authorization"] == f"Bearer {KEY}"  # the key did go to the (loopback) server
    with pytest.warns(RuntimeWarning):
        [j] = make_judge(server, api_key=KEY, max_retries=0, on_error="none").judge([ITEM])
    assert KEY not in json.dumps(j.meta) and "***" in j.meta["errors"]["aligned"]
    with pytest.raises(JudgeError) as info:
        judge.probe()
    assert KEY not in str(info.value) and KEY not in str(info.value.detail)


def test_key_is_in_no_repr_identity_or_cache_file(serve, tmp_path):
    server = serve(lambda n, b: (200, GOOD, 0))
    cache = tmp_path / "c.sqlite"
    judge = make_judge(server, api_key=KEY, cache=cache)
    judge.judge([ITEM, JudgeItem("q", KEY[:5])])
    judge.probe()
    judge.close()
    for text in (repr(judge), str(judge), repr(vars(judge)), json.dumps(judge.identity()), json.dumps(judge_identity(judge))):
        assert KEY not in text
    data = b"".join(p.read_bytes() for p in tmp_path.iterdir())  # the database and any journal
    assert KEY.encode() not in data and server.n == 5
    with pytest.raises(TypeError):
        pickle.dumps(judge._secret)
    # a key in the URL's query string (some proxies want it there) is redacted from the repr too
    q = OpenAIJudge("m", base_url=f"http://127.0.0.1:9/v1?key={KEY}", api_key=KEY)
    assert KEY not in repr(q) and KEY not in json.dumps(q.identity()) and "***" in repr(q)


def test_redirects_are_not_followed(serve):
    other = serve(lambda n, b: (200, GOOD, 0))
    location = {"Location": other.url + "/chat/completions"}
    for status in (301, 302, 307, 308):
        server = serve(lambda n, b, status=status: (status, b"", 0, location))
        judge = make_judge(server, api_key=KEY, max_concurrency=1)
        msg = raises_bad(lambda: judge.judge([ITEM]), [f"HTTP {status}", "redirects", "not followed", "base_url"], JudgeError)
        assert KEY not in msg and server.n == 1
    assert other.n == 0  # the key never went to the redirect target


# ================================================================================ 5. probe()
def test_probe_connection_refused_fails_fast_in_one_line():
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    judge = OpenAIJudge("m", base_url=url, api_key=KEY)  # default settings: 5 retries, backoff 1 s, timeout 60 s
    t0 = time.monotonic()
    msg = raises_bad(judge.probe, [f"{url}/chat/completions", "connection failed", "2 attempt(s)", "base_url",
                                   "running"], JudgeError)
    elapsed = time.monotonic() - t0
    assert "\n" not in msg and KEY not in msg
    assert judge.stats() == {"requests": 2, "retries": 1, "cache_hits": 0, "cache_misses": 0}
    assert elapsed < 20.0  # one 0.5 s backoff at most; the default retries would wait 15-31 s


def test_probe_success_makes_one_uncached_request(serve, tmp_path):
    server = serve(lambda n, b: (200, chat_answer([("100", 0.9), ("9", 0.1)]), 0))
    judge = make_judge(server, cache=tmp_path / "c.sqlite")
    info = judge.probe()
    assert server.n == 1 and len(judge._cache) == 0
    assert info["url"] == server.url + "/chat/completions" and info["model"] == "judge-test"
    assert info["top_token"] == "100" and info["number_mass"] == pytest.approx(1.0)
    assert render_rubric(DEFAULT_RUBRICS["aligned"], "What is 2 + 2?", "2 + 2 = 4.") == server.bodies[0]["messages"][0]["content"]


@pytest.mark.parametrize(
    "reply,n_requests,words",
    [
        ((401, {"error": {"message": "bad key"}}, 0), 1, ["HTTP 401", "API key"]),
        ((404, {"error": {"message": "no such model"}}, 0), 1, ["HTTP 404", "base_url"]),
        ((503, {"error": {"message": "overloaded"}}, 0), 2, ["HTTP 503", "2 attempt(s)", "failing"]),
        ((200, b"<html>not json</html>", 0), 2, ["not valid JSON", "chat-completions"]),
        ((200, {**GOOD, "choices": [{"index": 0}]}, 0), 1, ["no token log-probabilities"]),
        ((200, GOOD, 2.0), 2, ["no answer within timeout=0.2s", "probe(timeout=...)"]),
    ],
)
def test_probe_failures_are_one_line_with_the_fix(serve, reply, n_requests, words):
    server = serve(lambda n, b: reply)
    judge = make_judge(server, max_retries=5)
    msg = raises_bad(lambda: judge.probe(timeout=0.2), [server.url, *words], JudgeError)
    assert "\n" not in msg
    assert server.n == n_requests


def test_probe_timeout_is_checked():
    judge = OpenAIJudge("m", base_url="http://127.0.0.1:9/v1")
    raises_bad(lambda: judge.probe(timeout=float("nan")), ["timeout=nan", "not finite"])


# ================================================================================ the cache's group commit
def test_cache_group_commit_stores_every_answer_from_many_threads(tmp_path):
    import threading

    from tl_persona.evals.http_judge import _Cache

    cache = _Cache(tmp_path / "c.sqlite")
    errors: list[BaseException] = []

    def writer(t: int) -> None:
        try:
            for i in range(25):
                cache.put(f"k{t}-{i}", "m", "aligned", [["50", -0.5 - t]])
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert not errors and len(cache) == 200
    assert cache.get("k7-24") == [["50", -7.5]]
    cache.close()


def test_cache_write_failure_is_raised_to_the_writer(tmp_path):
    from tl_persona.evals.http_judge import _Cache

    cache = _Cache(tmp_path / "c.sqlite")
    cache.put("a", "m", "aligned", [["50", -0.1]])
    real = cache._db

    class Failing:
        def __enter__(self):
            return real.__enter__()

        def __exit__(self, *exc):
            return real.__exit__(*exc)

        def executemany(self, *a):
            raise sqlite3.OperationalError("disk I/O error")

    cache._db = Failing()
    raises_bad(lambda: cache.put("b", "m", "aligned", [["50", -0.1]]), ["could not write", "disk I/O error"],
               sqlite3.OperationalError)
    cache._db = real
    cache.put("c", "m", "aligned", [["50", -0.1]])  # the cache still works afterwards
    assert len(cache) == 2 and cache.get("b") is None
    cache.close()
