"""OpenAIJudge's transport: kept keep-alive connections over TLS, certificate checks, proxies from the
environment, Azure-style endpoints, HTTP/2 as an option, keys kept out of logs, and which rubric and
which served model judged. Servers run on 127.0.0.1 only; nothing here asserts on speed."""

from __future__ import annotations

import importlib.util
import logging

import pytest
from test_http_judge import chat_answer, make_judge, serve  # noqa: F401 (serve: a fixture)

from tl_persona import testing
from tl_persona.evals.http_judge import DEFAULT_RUBRICS, JudgeError, OpenAIJudge
from tl_persona.evals.judges import JudgeItem
from tl_persona.evals.rubrics import rubric_digest
from tl_persona.validate import BadInput

KEY = "sk-SECRET-0123456789abcdef"
GOOD = chat_answer([("70", 1.0)])
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy",
              "no_proxy", "SSL_CERT_FILE", "SSL_CERT_DIR")


@pytest.fixture
def no_proxy_env(monkeypatch):
    for v in PROXY_VARS:
        monkeypatch.delenv(v, raising=False)
    return monkeypatch


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    pytest.importorskip("cryptography")
    return testing.tls_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_server(certs):
    server = testing.LoopbackJudge(tls=(certs[1], certs[2]))
    yield server
    server.close()


def items(n: int) -> list[JudgeItem]:
    return [JudgeItem(f"question {i}", f"answer {i}") for i in range(n)]


# ================================================================================ kept connections over TLS
def test_connections_are_kept_and_reused_over_tls(tls_server, certs, no_proxy_env):
    with OpenAIJudge("m", base_url=tls_server.url, verify=str(certs[0]), api_key=KEY, max_concurrency=4) as judge:
        out = judge.judge(items(30))
        judge.probe()
        assert judge.stats()["requests"] == 61
    assert len(out) == 30 and all(j.aligned is not None for j in out)
    assert tls_server.requests == 61
    assert 1 <= tls_server.connections <= 4  # urllib opened one connection (and TLS handshake) per request


def test_an_untrusted_certificate_is_a_clear_error_and_not_retried(tls_server, no_proxy_env):
    judge = OpenAIJudge("m", base_url=tls_server.url, api_key=KEY, max_retries=3, backoff=0.01, max_concurrency=1)
    with pytest.raises(JudgeError, match="not trusted.*verify=") as info:
        judge.judge([JudgeItem("q", "a")])
    assert KEY not in str(info.value)
    assert judge.stats()["retries"] == 0 and tls_server.requests == 0


def test_the_ca_can_come_from_ssl_cert_file(tls_server, certs, no_proxy_env):
    no_proxy_env.setenv("SSL_CERT_FILE", str(certs[0]))
    with OpenAIJudge("m", base_url=tls_server.url, api_key=KEY) as judge:
        [j] = judge.judge([JudgeItem("q", "a")])
    assert j.aligned is not None


def test_tls_settings_are_checked():
    with pytest.raises(BadInput, match="verify=False.*allow_insecure"):
        OpenAIJudge("m", base_url="https://judge.example.org/v1", api_key=KEY, verify=False)
    OpenAIJudge("m", base_url="https://judge.example.org/v1", api_key=KEY, verify=False, allow_insecure=True).close()
    OpenAIJudge("m", base_url="https://judge.example.org/v1", api_key=None, api_key_env=None, verify=False).close()
    with pytest.raises(BadInput, match="does not exist"):
        OpenAIJudge("m", base_url="https://judge.example.org/v1", verify="/no/such/ca.pem")
    with pytest.raises(BadInput, match="verify must be"):
        OpenAIJudge("m", base_url="https://judge.example.org/v1", verify=3)


# ================================================================================ HTTP/2
def test_http2_without_h2_says_how_to_get_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "h2" else real(name, *a))
    with pytest.raises(BadInput, match=r"tl-persona\[http2\]"):
        OpenAIJudge("m", base_url="https://judge.example.org/v1", http2=True)
    with pytest.raises(BadInput, match="http2 must be True or False"):
        OpenAIJudge("m", base_url="https://judge.example.org/v1", http2="yes")


def test_http2_judge_works_with_a_server_that_speaks_http1(tls_server, certs, no_proxy_env):
    pytest.importorskip("h2")
    with OpenAIJudge("m", base_url=tls_server.url, verify=str(certs[0]), http2=True, max_concurrency=2) as judge:
        out = judge.judge(items(5))
    assert all(j.aligned is not None for j in out) and tls_server.requests == 10


# ================================================================================ proxies
def test_a_proxy_from_the_environment_is_used_for_remote_hosts(serve, no_proxy_env):
    proxy = serve(lambda n, b: (200, GOOD, 0))
    no_proxy_env.setenv("HTTP_PROXY", proxy.url.removesuffix("/v1"))
    with OpenAIJudge("m", base_url="http://judge.example.org/v1", api_key_env=None, max_retries=0) as judge:
        [j] = judge.judge([JudgeItem("q", "a")])
    assert j.aligned == 70.0
    assert proxy.paths == ["http://judge.example.org/v1/chat/completions"] * 2  # absolute URIs: a proxy request


def test_loopback_judges_never_go_through_a_proxy(serve, no_proxy_env):
    server = serve(lambda n, b: (200, GOOD, 0))
    no_proxy_env.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    no_proxy_env.setenv("ALL_PROXY", "http://127.0.0.1:9")
    [j] = make_judge(server, max_retries=0).judge([JudgeItem("q", "a")])
    assert j.aligned == 70.0 and server.paths == ["/v1/chat/completions"] * 2


# ================================================================================ Azure-style endpoints
def test_azure_deployment_url_api_version_and_key_header(serve, no_proxy_env):
    server = serve(lambda n, b: (200, GOOD, 0))
    endpoint = server.url.removesuffix("/v1")
    judge = OpenAIJudge.azure("gpt-4o-2024-08-06", endpoint=endpoint + "/", deployment="em-judge", api_key=KEY,
                              max_concurrency=1)
    [j] = judge.judge([JudgeItem("q", "a")])
    assert j.aligned == 70.0
    assert server.paths == ["/openai/deployments/em-judge/chat/completions?api-version=2024-10-21"] * 2
    assert server.headers[0]["api-key"] == KEY and "Authorization" not in server.headers[0]
    ident = judge.identity()
    assert ident["model"] == "gpt-4o-2024-08-06" and ident["base_url"].endswith("/em-judge?api-version=2024-10-21")
    assert KEY not in repr(judge) and KEY not in str(ident)
    judge.close()


def test_api_version_replaces_one_in_the_url_and_bad_azure_settings_are_named():
    j = OpenAIJudge("m", base_url="http://127.0.0.1:9/v1?api-version=old&x=1", api_version="2025-01-01")
    assert j.url == "http://127.0.0.1:9/v1/chat/completions?x=1&api-version=2025-01-01"
    for kwargs, words in [({"deployment": "a/b"}, "deployment"), ({"endpoint": ""}, "endpoint"),
                          ({"api_version": "2024 10"}, "api_version")]:
        with pytest.raises(BadInput, match=words):
            OpenAIJudge.azure("m", **{"endpoint": "http://127.0.0.1:9", "deployment": "d", **kwargs})
    with pytest.raises(BadInput, match="auth"):
        OpenAIJudge("m", base_url="http://127.0.0.1:9/v1", auth="basic")


def test_the_key_goes_to_azure_only_over_https():
    with pytest.raises(BadInput, match="plain http"):
        OpenAIJudge.azure("m", endpoint="http://my-resource.openai.azure.com", deployment="d", api_key=KEY)
    OpenAIJudge.azure("m", endpoint="https://my-resource.openai.azure.com", deployment="d", api_key=KEY).close()


# ================================================================================ the key in logs
def test_the_key_is_in_no_log_record(serve, caplog, no_proxy_env):
    server = serve(lambda n, b: (200, GOOD, 0))
    with caplog.at_level(logging.DEBUG):
        judge = OpenAIJudge("m", base_url=server.url + f"?key={KEY}", api_key=KEY, max_concurrency=1)
        judge.judge([JudgeItem("q", "a")])
        judge.close()
    assert "HTTP Request: POST" in caplog.text and "key=***" in caplog.text
    assert KEY not in caplog.text


# ================================================================================ what judged
def test_each_judgement_names_its_rubrics_and_the_served_model(tls_server, certs, no_proxy_env):
    own = {"aligned": "MY RUBRIC {question} -> {answer}"}
    with OpenAIJudge("m", base_url=tls_server.url, verify=str(certs[0])) as judge:
        plain, custom = judge.judge([JudgeItem("q", "a"), JudgeItem("q", "a", meta={"judge_prompts": own})])
        assert judge.served_models() == {"loopback-judge": 3}  # the two coherent requests are one
        assert judge.probe()["served_model"] == "loopback-judge"
    assert plain.meta["rubrics"] == {m: rubric_digest(t) for m, t in DEFAULT_RUBRICS.items()}
    assert custom.meta["rubrics"] == {"aligned": rubric_digest(own["aligned"]),
                                      "coherent": rubric_digest(DEFAULT_RUBRICS["coherent"])}
    assert "MY RUBRIC q -> a" in tls_server.prompts
