"""A real uvicorn process on 127.0.0.1 (background_server) driven by httpx, and the bounded load test."""

import socket
import threading
import time

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_digits

from bigmodel_course.serving import (
    ModelRegistry,
    background_server,
    decode_png,
    encode_png,
    publish_tiny_models,
    run_load_test,
    serve,
)
from bigmodel_course.serving.loadtest import TINY_TEXTS, tiny_payloads

DIGITS = load_digits().images[:3]


@pytest.fixture(scope="module")
def reg(tmp_path_factory):
    registry = ModelRegistry(tmp_path_factory.mktemp("registry"))
    publish_tiny_models(registry)
    return registry


@pytest.fixture(scope="module")
def server(reg):
    with background_server(reg) as url:
        yield url


def metric_samples(server: str) -> dict:
    """{(name, sorted labels): value} of every sample the server's /metrics shows now."""
    text = httpx.get(f"{server}/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def ok_requests(samples: dict, route: str) -> float:
    """Count of POST requests to `route` answered 200 (0 before the first one)."""
    return samples.get(("bigmodel_http_requests_total", (("method", "POST"), ("route", route), ("status", "200"))), 0)


def items(samples: dict, model: str) -> float:
    """Items classified by version v1 of `model` so far (0 before the first one)."""
    return samples.get(("bigmodel_items_classified_total", (("model", model), ("version", "v1"))), 0)


def test_the_server_listens_on_localhost_and_answers_healthz(server):
    """healthz lists exactly the models loaded so far; a classification adds its model (whatever ran before)."""
    assert server.startswith("http://127.0.0.1:")
    before = httpx.get(f"{server}/healthz")
    assert before.status_code == 200 and before.json()["status"] == "ok"
    assert set(before.json()["loaded"]) <= {"tiny-text:v1", "tiny-digits:v1"}
    httpx.post(f"{server}/v1/text/classify", json={"model": "tiny-text", "texts": ["好"]}, timeout=30)
    after = httpx.get(f"{server}/healthz").json()
    assert after["loaded"] == sorted({*before.json()["loaded"], "tiny-text:v1"})


def test_classify_text_and_images_over_http(server, reg):
    text = httpx.post(f"{server}/v1/text/classify", json={"model": "tiny-text", "texts": list(TINY_TEXTS[:2])},
                      timeout=30)
    assert text.status_code == 200 and text.json()["predictions"] == reg.load("tiny-text").predict(list(TINY_TEXTS[:2]))
    image = httpx.post(f"{server}/v1/image/classify", json={"model": "tiny-digits", "images": DIGITS.tolist()},
                       timeout=30)
    assert image.status_code == 200 and image.json()["predictions"] == reg.load("tiny-digits").predict(DIGITS)
    files = [("files", (f"{i}.png", encode_png(d), "image/png")) for i, d in enumerate(DIGITS)]
    upload = httpx.post(f"{server}/v1/image/classify", data={"model": "tiny-digits"}, files=files, timeout=30)
    decoded = np.stack([decode_png(encode_png(d)) for d in DIGITS])  # PNG stores 8-bit pixels
    assert upload.status_code == 200 and upload.json()["predictions"] == reg.load("tiny-digits").predict(decoded)
    bad = httpx.post(f"{server}/v1/text/classify", json={"model": "tiny-text", "texts": [""]})
    assert bad.status_code == 422 and bad.json() == {"detail": "texts[0] is empty"}
    big = httpx.post(f"{server}/v1/image/classify", content=b"{" + b" " * 1_000_000 + b"}",
                     headers={"content-type": "application/json"})
    assert big.status_code == 413 and "Content-Length is 1000002 bytes" in big.json()["detail"]


def test_metrics_count_this_tests_requests(server):
    """The counters grow by exactly what this test sends, whatever other tests sent before."""
    before = metric_samples(server)
    text = httpx.post(f"{server}/v1/text/classify", json={"model": "tiny-text", "texts": list(TINY_TEXTS[:2])},
                      timeout=30)
    image = httpx.post(f"{server}/v1/image/classify", json={"model": "tiny-digits", "images": DIGITS.tolist()},
                       timeout=30)
    files = [("files", (f"{i}.png", encode_png(d), "image/png")) for i, d in enumerate(DIGITS)]
    upload = httpx.post(f"{server}/v1/image/classify", data={"model": "tiny-digits"}, files=files, timeout=30)
    bad = httpx.post(f"{server}/v1/text/classify", json={"model": "tiny-text", "texts": [""]})
    assert [r.status_code for r in (text, image, upload, bad)] == [200, 200, 200, 422]
    after = metric_samples(server)
    assert ok_requests(after, "/v1/text/classify") - ok_requests(before, "/v1/text/classify") == 1
    assert ok_requests(after, "/v1/image/classify") - ok_requests(before, "/v1/image/classify") == 2
    assert items(after, "tiny-digits") - items(before, "tiny-digits") == 6
    assert items(after, "tiny-text") - items(before, "tiny-text") == 2  # the rejected request classified nothing
    assert after[("bigmodel_model_load_seconds", (("model", "tiny-text"), ("version", "v1")))] > 0


def test_load_test_2000_requests_16_concurrent_without_errors(server, capsys):
    before = metric_samples(server)
    result = run_load_test(server, tiny_payloads(), requests=2000, concurrency=16)
    with capsys.disabled():  # shown in every pytest run, not only with -s
        print(f"\nload test (tiny random models, real uvicorn process): {result.format()}")
    assert result.errors == 0, result.error_examples
    assert len(result.latencies_ms) == 2000 and result.statuses == {"200": 2000}
    # each thread sends one request at a time inside the measured wall time
    assert max(result.latencies_ms) <= 1000 * result.seconds
    assert sum(result.latencies_ms) <= 16 * 1000 * result.seconds
    after = metric_samples(server)
    for route in ("/v1/text/classify", "/v1/image/classify"):  # the payloads alternate: 1000 of each
        assert ok_requests(after, route) - ok_requests(before, route) == 1000


def test_background_server_reports_a_server_that_cannot_start(reg):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError,
                           match=f"exited with code 2 before it was ready:(.|\n)*cannot listen on 127.0.0.1:{port}"):
            with background_server(reg, port=port):
                pass  # pragma: no cover
    with pytest.raises(ValueError, match="port must be an int"):
        with background_server(reg, port=70000):
            pass  # pragma: no cover


def test_serve_checks_its_arguments_before_listening(tmp_path):
    with pytest.raises(ValueError, match="threads must be a positive int"):
        serve(tmp_path, threads=0)
    with pytest.raises(ValueError, match="port must be an int in 0..65535"):
        serve(tmp_path, port=-1)


# ------------------------------------------------------------ a server probed as an attacker would

def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """True if the server closes the connection within `seconds` (what it sends before is ignored)."""
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
        return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


@pytest.fixture(scope="module")
def strict_server(reg):
    """A server with short connection timeouts (1 s for a request head, 1 s for a body)."""
    with background_server(reg, header_timeout=1, body_timeout=1, keep_alive_timeout=1) as url:
        yield url


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=5)


def test_idle_and_slow_connections_are_closed(strict_server):
    """Before: a connection that sent nothing, or its headers a byte at a time, stayed open (75 s in the probe)."""
    with _connect(strict_server) as idle:
        assert _closed_within(idle, 4)
    with _connect(strict_server) as slow:
        start = time.monotonic()
        slow.settimeout(5)
        try:
            for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 40:
                slow.send(bytes([byte]))
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert _closed_within(slow, 4) and time.monotonic() - start < 4.5
    with _connect(strict_server) as body:
        body.sendall(b"POST /v1/text/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{")  # and then nothing
        body.settimeout(5)
        assert body.recv(4096).startswith(b"HTTP/1.1 408 ")


def test_content_length_with_transfer_encoding_is_refused_over_http(strict_server):
    with _connect(strict_server) as sock:
        sock.sendall(b"POST /v1/text/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 400 ")


def test_a_client_that_hangs_up_mid_body_is_counted_as_499(server):
    before = metric_samples(server)
    with _connect(server) as sock:
        sock.sendall(b"POST /v1/text/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"model\"")
    key = ("bigmodel_http_requests_total", (("method", "POST"), ("route", "/v1/text/classify"), ("status", "499")))
    deadline = time.monotonic() + 5
    while metric_samples(server).get(key, 0) == before.get(key, 0) and time.monotonic() < deadline:
        time.sleep(0.05)
    after = metric_samples(server)
    assert after.get(key, 0) - before.get(key, 0) == 1
    fail = ("bigmodel_http_requests_total", (("method", "POST"), ("route", "/v1/text/classify"), ("status", "500")))
    assert after.get(fail, 0) == before.get(fail, 0)


def test_a_key_sent_in_the_url_never_reaches_the_access_log(reg, tmp_path, monkeypatch):
    key = "live-test-key-" + "q" * 24  # test-only key
    monkeypatch.setenv("BIGMODEL_ADMIN_KEY", key)
    log = tmp_path / "server.log"
    with background_server(reg, access_log=True, log_level="info", log_file=log) as url:
        response = httpx.post(f"{url}/v1/admin/models/tiny-text/rollback?api_key={key}")
        httpx.get(f"{url}/healthz")
    assert response.status_code == 400
    text = log.read_text(encoding="utf-8")
    assert "/v1/admin/models/tiny-text/rollback?[query removed]" in text and key not in text


@pytest.mark.slow
def test_healthz_stays_fast_while_worst_case_bodies_arrive(server):
    """Four clients send 1 MB bodies of 500,000 invalid items; /healthz must not wait for them (before: 4.7 s)."""
    body = '{"model":"tiny-text","texts":[' + ",".join(["1"] * 499_980) + "]}"
    stop, refused = threading.Event(), []

    def attack():
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                r = client.post(f"{server}/v1/text/classify", content=body,
                                headers={"content-type": "application/json"})
                refused.append((r.status_code, r.elapsed.total_seconds()))

    threads = [threading.Thread(target=attack) for _ in range(4)]
    for t in threads:
        t.start()
    waits = []
    try:
        with httpx.Client(timeout=30) as client:
            for _ in range(30):
                start = time.perf_counter()
                assert client.get(f"{server}/healthz").status_code == 200
                waits.append(time.perf_counter() - start)
                time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert refused and {status for status, _ in refused} == {422}
    assert max(waits) < 0.5, f"/healthz waited up to {max(waits):.2f} s"
