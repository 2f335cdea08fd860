"""Admin routes (publish, promote, rollback, canary) behind the API key from the environment; a corrupt new version
never replaces the version being served; the key never reaches a log."""

import json
import logging
import secrets
import subprocess
import sys
import time

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from safetensors.torch import save_model

from bigmodel_course.serving import ADMIN_HEADER, ADMIN_KEY_ENV, ModelRegistry, build_model, create_app, get_canary
from bigmodel_course.tokenization import CharTokenizer
from bigmodel_course.transformer import GPTConfig

SENTENCES = ["这本书写得很好，值得推荐", "质量太差了，非常失望", "物流很快，包装也不错"]
KEY = "test-admin-key-" + "k" * 24  # test-only key, never a real secret


@pytest.fixture
def tokenizer_file(tmp_path):
    return CharTokenizer.train(SENTENCES).save(tmp_path / "tokenizer.json")


def text_model(seed: int, tokenizer_file):
    """A tiny GPT classifier (its config and model) with a given seed."""
    torch.manual_seed(seed)
    vocab = CharTokenizer.load(tokenizer_file).vocab_size
    cfg = GPTConfig(vocab_size=vocab, max_len=32, d_model=16, n_heads=2, n_layers=1, dropout=0.0,
                    attn_dropout=0.0).to_dict()
    model = build_model("gpt_classifier", cfg)
    torch.nn.init.normal_(model.score.weight, std=2.0)
    return cfg, model


def publish(reg, seed, tokenizer_file):
    cfg, model = text_model(seed, tokenizer_file)
    return reg.publish("reviews", model, task="text", architecture="gpt_classifier", config=cfg,
                       labels=["负面", "正面"], metrics={"accuracy": 0.5 + seed / 100},
                       preprocessing={"max_len": 16}, files={"tokenizer.json": tokenizer_file})


@pytest.fixture
def reg(tmp_path, tokenizer_file):
    registry = ModelRegistry(tmp_path / "registry")
    registry.promote("reviews", publish(registry, 0, tokenizer_file).version)
    return registry


@pytest.fixture
def client(reg, monkeypatch):
    monkeypatch.setenv(ADMIN_KEY_ENV, KEY)
    with TestClient(create_app(reg)) as c:
        yield c


def served_version(client) -> str:
    response = client.post("/v1/text/classify", json={"model": "reviews", "texts": SENTENCES[:1]})
    assert response.status_code == 200, response.text
    return response.json()["version"]


def auth(key=KEY):
    return {ADMIN_HEADER: key}


def test_admin_routes_are_disabled_without_the_environment_variable(reg, monkeypatch):
    monkeypatch.delenv(ADMIN_KEY_ENV, raising=False)
    client = TestClient(create_app(reg))
    for key in (None, KEY):
        response = client.post("/v1/admin/models/reviews/rollback", headers=auth(key) if key else {})
        assert response.status_code == 403 and "disabled" in response.json()["detail"]
    assert client.get("/healthz").status_code == 200  # the rest of the service works


def test_missing_key_is_401_wrong_key_is_403_right_key_passes(client, reg):
    routes = [("post", "/v1/admin/models/reviews/promote", {"json": {"version": "v1"}}),
              ("post", "/v1/admin/models/reviews/rollback", {}),
              ("put", "/v1/admin/models/reviews/canary", {"json": {"version": "v1", "fraction": 0.1}}),
              ("delete", "/v1/admin/models/reviews/canary", {}),
              ("post", "/v1/admin/models/reviews/versions", {"files": {"weights": b"x"}})]
    for method, path, kwargs in routes:
        missing = client.request(method, path, **kwargs)
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == ADMIN_HEADER
        wrong = client.request(method, path, headers=auth(KEY[:-1] + "x"), **kwargs)
        assert wrong.status_code == 403 and KEY not in wrong.text
    assert client.post("/v1/admin/models/reviews/promote", json={"version": "v1"}, headers=auth()).status_code == 200
    assert reg.promoted_version("reviews") == "v1"


def test_a_short_key_is_refused_at_start_without_showing_it(reg, monkeypatch):
    monkeypatch.setenv(ADMIN_KEY_ENV, "short-key")
    with pytest.raises(ValueError, match="at least 16 printable ASCII characters") as err:
        create_app(reg)
    assert "short-key" not in str(err.value)


def upload(client, cfg, model, tmp_path, tokenizer_file, key=KEY, weights=None):
    path = tmp_path / "upload.safetensors"
    save_model(model, str(path))
    metadata = {"task": "text", "architecture": "gpt_classifier", "config": cfg, "labels": ["负面", "正面"],
                "metrics": {"accuracy": 0.6}, "preprocessing": {"max_len": 16}, "description": "from the admin API"}
    files = {"weights": ("model.safetensors", weights if weights is not None else path.read_bytes()),
             "tokenizer": ("tokenizer.json", tokenizer_file.read_bytes())}
    return client.post("/v1/admin/models/reviews/versions", data={"metadata": json.dumps(metadata)}, files=files,
                       headers=auth(key))


def test_publish_promote_compare_and_roll_back_over_http(client, reg, tmp_path, tokenizer_file):
    cfg, model = text_model(1, tokenizer_file)
    published = upload(client, cfg, model, tmp_path, tokenizer_file)
    assert published.status_code == 201, published.text
    assert published.json()["version"] == "v2" and not published.json()["promoted"]
    assert served_version(client) == "v1"  # publishing does not change what is served
    stored = reg.load("reviews", "v2").model.state_dict()
    assert all(torch.equal(stored[k], v) for k, v in model.state_dict().items())
    promoted = client.post("/v1/admin/models/reviews/promote", json={"version": "v2"}, headers=auth())
    assert promoted.status_code == 200 and promoted.json()["promoted"]
    assert served_version(client) == "v2"
    back = client.post("/v1/admin/models/reviews/rollback", headers=auth())
    assert back.status_code == 200 and back.json()["version"] == "v1"
    assert served_version(client) == "v1"
    again = client.post("/v1/admin/models/reviews/rollback", headers=auth())
    assert again.status_code == 409 and "no previously promoted version" in again.json()["detail"]
    assert client.post("/v1/admin/models/reviews/promote", json={"version": "v9"},
                       headers=auth()).status_code == 404
    assert client.post("/v1/admin/models/nothing/rollback", headers=auth()).status_code == 404


def test_publish_refuses_weights_that_do_not_load(client, reg, tmp_path, tokenizer_file):
    cfg, model = text_model(1, tokenizer_file)
    broken = upload(client, cfg, model, tmp_path, tokenizer_file, weights=b"\x00" * 64)
    assert broken.status_code == 422 and "do not load" in broken.json()["detail"]
    bigger = dict(cfg, d_model=32)
    mismatch = upload(client, bigger, model, tmp_path, tokenizer_file)
    assert mismatch.status_code == 422 and "do not load" in mismatch.json()["detail"]
    bad = client.post("/v1/admin/models/reviews/versions", data={"metadata": "{"}, files={"weights": b"x"},
                      headers=auth())
    assert bad.status_code == 422 and "not JSON" in bad.json()["detail"]
    assert [c.version for c in reg.versions("reviews")] == ["v1"]


def test_a_corrupt_new_version_is_refused_and_the_previous_one_keeps_serving(client, reg, tokenizer_file):
    assert served_version(client) == "v1"
    card = publish(reg, 2, tokenizer_file)
    weights = reg.root / "reviews" / card.version / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10:] = b"\xff" * 10  # flip the last bytes of the weights: the sha256 no longer matches
    weights.write_bytes(bytes(data))
    refused = client.post("/v1/admin/models/reviews/promote", json={"version": card.version}, headers=auth())
    assert refused.status_code == 409 and "does not load" in refused.json()["detail"]
    assert str(reg.root) not in refused.text  # file paths stay in the server log
    assert reg.promoted_version("reviews") == "v1"
    assert served_version(client) == "v1"


def test_a_corrupt_version_promoted_behind_the_services_back_does_not_stop_it(client, reg, tokenizer_file, caplog):
    assert served_version(client) == "v1"  # v1 is loaded
    card = publish(reg, 3, tokenizer_file)
    (reg.root / "reviews" / card.version / "model.safetensors").write_bytes(b"garbage")
    reg.promote("reviews", card.version)  # e.g. `bigmodel-course registry promote` from a shell
    with caplog.at_level(logging.ERROR, logger="bigmodel_course.serving"):
        assert [served_version(client) for _ in range(3)] == ["v1"] * 3
    assert sum("does not load" in r.getMessage() for r in caplog.records) == 1  # failed once, not retried per request
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(client.get("/metrics").text) for s in f.samples}
    assert samples[("bigmodel_model_load_failures_total", (("model", "reviews"), ("version", card.version)))] == 1


def test_a_fresh_service_with_a_corrupt_promoted_version_answers_503(reg, tokenizer_file, monkeypatch):
    monkeypatch.delenv(ADMIN_KEY_ENV, raising=False)
    card = publish(reg, 4, tokenizer_file)
    (reg.root / "reviews" / card.version / "model.safetensors").write_bytes(b"garbage")
    reg.promote("reviews", card.version)
    response = TestClient(create_app(reg)).post("/v1/text/classify", json={"model": "reviews", "texts": ["好"]})
    assert response.status_code == 503 and str(reg.root) not in response.text


def test_canary_sends_a_fraction_of_requests_to_the_candidate(reg, tokenizer_file, monkeypatch):
    monkeypatch.setenv(ADMIN_KEY_ENV, KEY)
    publish(reg, 5, tokenizer_file)
    client = TestClient(create_app(reg, canary_seed=0))
    bad = client.put("/v1/admin/models/reviews/canary", json={"version": "v2", "fraction": 1.5}, headers=auth())
    assert bad.status_code == 422
    same = client.put("/v1/admin/models/reviews/canary", json={"version": "v1", "fraction": 0.2}, headers=auth())
    assert same.status_code == 409 and "already the promoted version" in same.json()["detail"]
    started = client.put("/v1/admin/models/reviews/canary", json={"version": "v2", "fraction": 0.25}, headers=auth())
    assert started.status_code == 200 and started.json() == {"name": "reviews", "version": "v2", "fraction": 0.25}
    versions = [served_version(client) for _ in range(200)]
    share = versions.count("v2") / len(versions)
    assert 0.15 < share < 0.35, share  # binomial(200, 0.25): mean 50, sd 6
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(client.get("/metrics").text) for s in f.samples}
    per_version = {v: samples[("bigmodel_items_classified_total", (("model", "reviews"), ("version", v)))]
                   for v in ("v1", "v2")}
    assert per_version == {"v1": versions.count("v1"), "v2": versions.count("v2")}
    ended = client.delete("/v1/admin/models/reviews/canary", headers=auth())
    assert ended.status_code == 200 and ended.json()["version"] is None
    assert {served_version(client) for _ in range(20)} == {"v1"}
    client.put("/v1/admin/models/reviews/canary", json={"version": "v2", "fraction": 0.5}, headers=auth())
    client.post("/v1/admin/models/reviews/promote", json={"version": "v2"}, headers=auth())
    assert get_canary(reg, "reviews") is None  # the candidate graduated
    assert {served_version(client) for _ in range(20)} == {"v2"}


def test_admin_routes_and_their_status_codes_are_in_the_openapi_document(client):
    paths = client.get("/openapi.json").json()["paths"]
    promote = paths["/v1/admin/models/{name}/promote"]["post"]
    assert {"200", "401", "403", "404", "409"} <= set(promote["responses"])
    assert "multipart/form-data" in paths["/v1/admin/models/{name}/versions"]["post"]["requestBody"]["content"]
    assert {"put", "delete"} <= set(paths["/v1/admin/models/{name}/canary"])


def test_admin_uploads_have_their_own_body_limit(reg, monkeypatch, tmp_path, tokenizer_file):
    monkeypatch.setenv(ADMIN_KEY_ENV, KEY)
    client = TestClient(create_app(reg, max_body_bytes=1000, admin_max_body_bytes=200_000))
    cfg, model = text_model(1, tokenizer_file)
    assert upload(client, cfg, model, tmp_path, tokenizer_file).status_code == 201  # > 1000 bytes, < 200 kB
    too_big = client.post("/v1/text/classify", json={"model": "reviews", "texts": ["好" * 600]})
    assert too_big.status_code == 413


def test_the_key_never_appears_in_logs_or_answers(reg, tmp_path, tokenizer_file, caplog):
    """In-process logs at DEBUG, and the log of a real `bigmodel-course serve` process with its access log on."""
    key = secrets.token_urlsafe(24)
    with caplog.at_level(logging.DEBUG):
        client = TestClient(create_app(reg, admin_key=key))
        texts = [client.post("/v1/admin/models/reviews/rollback", headers=auth(k)).text for k in (key, key + "x", "")]
        texts.append(client.post("/v1/admin/models/reviews/promote", json={"version": "v1"}, headers=auth(key)).text)
    assert key not in caplog.text and not any(key in t for t in texts)

    log = tmp_path / "server.log"
    port_file = tmp_path / "port"
    env = {**__import__("os").environ, ADMIN_KEY_ENV: key, "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "bigmodel_course.cli", "serve", "--port", "0", "--registry",
                                 str(reg.root), "--port-file", str(port_file), "--log-level", "debug"],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 60
        while not port_file.is_file() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port_file.read_text()}"
        for _ in range(200):
            try:
                httpx.get(f"{url}/healthz")
                break
            except httpx.TransportError:
                time.sleep(0.05)
        for k in (key, "wrong-" + key):
            httpx.post(f"{url}/v1/admin/models/reviews/promote", json={"version": "v1"}, headers=auth(k))
            httpx.post(f"{url}/v1/admin/models/reviews/rollback?api_key={k[:4]}", headers=auth(k))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    text = log.read_text(encoding="utf-8", errors="replace")
    assert "/v1/admin/models/reviews/promote" in text  # the access log did record the requests
    assert key not in text


def test_canary_file_functions(reg, tokenizer_file):
    from bigmodel_course.serving import RegistryError, clear_canary, set_canary
    from bigmodel_course.serving.admin import check_admin_key

    publish(reg, 6, tokenizer_file)
    assert get_canary(reg, "reviews") is None
    canary = set_canary(reg, "reviews", "v2", 0.3)
    assert get_canary(reg, "reviews") == canary and (canary.version, canary.fraction) == ("v2", 0.3)
    for fraction in (0, 1, -0.1, float("nan"), True):
        with pytest.raises(RegistryError, match="fraction"):
            set_canary(reg, "reviews", "v2", fraction)
    with pytest.raises(RegistryError, match="no version 'v7'"):
        set_canary(reg, "reviews", "v7", 0.1)
    assert clear_canary(reg, "reviews") and not clear_canary(reg, "reviews")
    (reg.root / "reviews" / "canary.json").write_text("{broken", encoding="utf-8")
    with pytest.raises(RegistryError, match="unreadable"):
        get_canary(reg, "reviews")
    check_admin_key(None)
    with pytest.raises(ValueError):
        check_admin_key("k" * 15)


def test_admin_key_from_env(monkeypatch):
    from bigmodel_course.serving.admin import admin_key_from_env

    monkeypatch.setenv(ADMIN_KEY_ENV, "")
    assert admin_key_from_env() is None
    monkeypatch.setenv(ADMIN_KEY_ENV, KEY)
    assert admin_key_from_env() == KEY
