"""The service probed as an attacker and an unlucky operator would: bounded validation, bounded metric labels,
well-formed names, client hang-ups, damaged registry entries, per-model load locks, keys kept out of URLs and
logs, a hashed model card, request smuggling, oversized configs and coerced pixels.

The multi-process registry race is tests/test_files.py::test_two_processes_publishing_at_once_lose_nothing;
the connection timeouts need a real server: tests/test_serving_live.py."""

import asyncio
import json
import logging
import threading
import time

import pytest
import torch
from fastapi import HTTPException
from fastapi.testclient import TestClient
from safetensors.torch import save_model
from test_serving_app import (  # noqa: F401  (no_tracebacks: an autouse fixture)
    DIGITS,
    PREP,
    RecordingClient,
    metric_values,
    no_tracebacks,
    promoted_registry,
)

from bigmodel_course.serving import ADMIN_HEADER, ADMIN_KEY_ENV, ModelRegistry, RegistryError, create_app
from bigmodel_course.serving.admin import check_admin_key
from bigmodel_course.serving.canary import set_canary
from bigmodel_course.serving.checks import check_name, check_version
from bigmodel_course.serving.preprocess import InputError, check_images
from bigmodel_course.serving.server import QueryRedactingFilter
from bigmodel_course.transformer import GPTConfig

KEY = "test-admin-key-" + "h" * 24  # test-only key, never a real secret


@pytest.fixture(scope="module")
def reg(tmp_path_factory):
    return promoted_registry(tmp_path_factory.mktemp("registry"), tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def client(reg):
    return RecordingClient(create_app(reg))


@pytest.fixture
def fresh(tmp_path):
    """A registry of its own (tests that damage it)."""
    return promoted_registry(tmp_path / "registry", tmp_path)


def asgi_call(app, receive, headers=((b"content-type", b"application/json"),), timeout: float = 5.0) -> list[dict]:
    """Run one POST /v1/text/classify through the ASGI app with a hand-made `receive`; the messages it sent."""
    sent = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/text/classify", "raw_path": b"/v1/text/classify", "query_string": b"", "root_path": "",
             "headers": list(headers), "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    asyncio.run(asyncio.wait_for(app(scope, receive, send), timeout))
    return sent


def timed_post(client, path, content):
    start = time.perf_counter()
    response = client.post(path, content=content, headers={"Content-Type": "application/json"})
    return response, time.perf_counter() - start


# ------------------------------------------------------------ 1. bounded validation

WORST_TEXTS = '{"model":"reviews","texts":[' + ",".join(["1"] * 499_980) + "]}"
MANY_TEXTS = '{"model":"reviews","texts":[' + ",".join(['"a"'] * 240_000) + "]}"
WORST_IMAGE = '{"model":"digits","images":[[[' + ",".join(["1"] * 499_980) + "]]]}"
WORST_FIELDS = "{" + ",".join(f'"f{i}":0' for i in range(90_000)) + "}"


@pytest.mark.parametrize("path, body, message", [
    ("/v1/text/classify", WORST_TEXTS, "texts[0]: Input should be a valid string"),
    ("/v1/text/classify", MANY_TEXTS, "too many texts: 240000; at most 64 per request"),
    ("/v1/image/classify", WORST_IMAGE, "images[0][0] has 499980 items; at most 64"),
    ("/v1/text/classify", WORST_FIELDS, "unexpected field 'f0' (and 89999 more)"),
])
def test_a_worst_case_body_is_refused_with_one_error_in_bounded_time(client, path, body, message):
    """Before: one error per item (500,000 of them), 422 after 4.4 s and +520 MB on the probe's machine."""
    assert len(body) < 1_000_000  # within the default body limit
    client.post(path, content=WORST_FIELDS, headers={"Content-Type": "application/json"})  # warm-up
    response, seconds = timed_post(client, path, body)
    assert response.status_code == 422 and response.json()["detail"] == message
    assert seconds < 0.5, f"{seconds:.2f} s"  # measured ~0.05 s; the live test checks /healthz meanwhile


def test_validation_stops_at_the_first_bad_item(client):
    body = {"model": "reviews", "texts": ["好", 1, 2, 3]}
    assert client.post("/v1/text/classify", json=body).json()["detail"] == "texts[1]: Input should be a valid string"


# ------------------------------------------------------------ 2. bounded metric labels

def test_metric_labels_take_values_from_fixed_sets(fresh):
    app_client = TestClient(create_app(fresh, admin_key=KEY))
    app_client.get("/healthz")
    for i in range(30):
        app_client.request("FOO" + "X" * i, "/healthz")  # any method name a client makes up
        app_client.post(f"/v1/admin/models/bad-name-{i}/promote", headers={ADMIN_HEADER: KEY},
                        json={"version": "v1"})  # well-formed but unknown names
        app_client.post("/v1/admin/models/reviews/promote", headers={ADMIN_HEADER: KEY},
                        json={"version": f"v{i + 7}"})  # unknown versions
    metrics = metric_values(app_client)
    methods = {dict(labels)["method"] for (name, labels) in metrics if name == "bigmodel_http_requests_total"}
    assert methods == {"GET", "POST", "other"}
    assert not [key for key in metrics if key[0].startswith("bigmodel_model_load_failures")]
    routes = {dict(labels)["route"] for (name, labels) in metrics if name == "bigmodel_http_requests_total"}
    assert routes == {"/healthz", "/v1/admin/models/{name}/promote"}


# ------------------------------------------------------------ 4. names and versions

@pytest.mark.parametrize("name", ["reviews\n", "reviews\nINFO forged log line", "Reviews", ""])
def test_names_and_versions_must_match_whole(name):
    with pytest.raises(RegistryError, match="invalid model name"):
        check_name(name)
    with pytest.raises(RegistryError, match="invalid version"):
        check_version("v1\n")


def test_a_name_ending_in_a_newline_is_never_published(fresh):
    model = fresh.load("digits")
    with pytest.raises(RegistryError, match="invalid model name"):
        fresh.publish("digits\n", model.model, task="image", architecture="vit", config=model.card.config,
                      labels=model.card.labels, metrics={}, preprocessing=PREP)
    assert fresh.names() == ["digits", "reviews"]


def test_invalid_names_are_422_on_every_route_and_never_echoed_in_full(fresh):
    app_client = TestClient(create_app(fresh, admin_key=KEY))
    long_name = "x" * 5000
    auth = {ADMIN_HEADER: KEY}
    responses = [
        app_client.post("/v1/text/classify", json={"model": "reviews\n", "texts": ["好"]}),
        app_client.post("/v1/image/classify", json={"model": long_name, "images": DIGITS[:1].tolist()}),
        app_client.post("/v1/admin/models/reviews%0A/promote", headers=auth, json={"version": "v1"}),
        app_client.post("/v1/admin/models/reviews/promote", headers=auth, json={"version": "v1\n"}),
        app_client.post("/v1/admin/models/" + long_name + "/rollback", headers=auth),
        app_client.put("/v1/admin/models/UPPER/canary", headers=auth, json={"version": "v1", "fraction": 0.1}),
        app_client.delete("/v1/admin/models/a%0Ab/canary", headers=auth),
    ]
    for response in responses:
        detail = response.json()["detail"]
        assert response.status_code == 422 and detail.startswith("invalid "), (response.status_code, detail)
        assert len(detail) < 160 and long_name[:100] not in detail
    assert fresh.names() == ["digits", "reviews"]


# ------------------------------------------------------------ 5. a client that hangs up

def test_a_client_that_disconnects_mid_body_counts_as_499_not_500(reg):
    app = create_app(reg)
    messages = [{"type": "http.request", "body": b'{"model": "rev', "more_body": True}, {"type": "http.disconnect"}]

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    assert not asgi_call(app, receive)  # nobody to answer
    statuses = {dict(labels)["status"] for (name, labels), value in metric_values(TestClient(app)).items()
                if name == "bigmodel_http_requests_total" and dict(labels)["route"] == "/v1/text/classify"}
    assert statuses == {"499"}


# ------------------------------------------------------------ 6. damaged registry entries

def test_a_version_without_its_card_is_reported_and_skipped(fresh):
    (fresh.root / "digits" / "v1" / "card.json").unlink()
    (fresh.root / "reviews" / "v1" / "extra").mkdir()  # harmless clutter
    response = TestClient(create_app(fresh)).get("/v1/models")
    assert response.status_code == 200  # before: 503 for every model
    body = response.json()
    assert [(m["name"], m["version"], m["promoted"]) for m in body["models"]] == [("reviews", "v1", True)]
    assert body["damaged"] == [{"name": "digits", "version": "v1", "problem": "digits/v1/card.json is missing"}]
    assert str(fresh.root) not in response.text


def test_an_unreadable_canary_file_leaves_the_promoted_version_serving(fresh, caplog):
    model = fresh.load("digits")
    card = fresh.publish("digits", model.model, task="image", architecture="vit", config=model.card.config,
                         labels=model.card.labels, metrics={}, preprocessing=PREP)
    set_canary(fresh, "digits", card.version, 0.5)
    (fresh.root / "digits" / "canary.json").write_text("{broken", encoding="utf-8")
    app_client = TestClient(create_app(fresh))
    with caplog.at_level(logging.ERROR, logger="bigmodel_course.serving"):
        answers = [app_client.post("/v1/image/classify", json={"model": "digits", "images": DIGITS[:1].tolist()})
                   for _ in range(5)]
    assert [(r.status_code, r.json()["version"]) for r in answers] == [(200, "v1")] * 5  # before: 503
    assert sum("canary ignored" in r.getMessage() for r in caplog.records) == 1  # logged once, not per request
    damaged = app_client.get("/v1/models").json()["damaged"]
    assert [(d["name"], d["version"]) for d in damaged] == [("digits", None)]
    assert "canary.json" in damaged[0]["problem"] and "promoted version" in damaged[0]["problem"]


def test_an_unreadable_promoted_pointer_is_reported_and_its_versions_listed(fresh):
    (fresh.root / "reviews" / "promoted.json").write_text('{"version": "v1\\n", "history": ["v1\\n"]}')
    body = TestClient(create_app(fresh)).get("/v1/models").json()
    assert [(m["name"], m["promoted"]) for m in body["models"]] == [("digits", True), ("reviews", False)]
    assert body["damaged"] == [{"name": "reviews", "version": None,
                                "problem": "reviews/promoted.json is not a promoted pointer"}]


# ------------------------------------------------------------ 7. per-model load locks

def test_loading_one_model_does_not_hold_up_a_loaded_one(fresh, monkeypatch):
    app = create_app(fresh)
    cache = app.state.models
    cache.get("reviews", "text")  # loaded
    release, started = threading.Event(), threading.Event()
    original = ModelRegistry.load

    def slow_load(self, name, version=None, device="cpu"):
        if name == "digits":
            started.set()
            release.wait(10)  # a large model being verified
        return original(self, name, version, device)

    monkeypatch.setattr(ModelRegistry, "load", slow_load)
    loader = threading.Thread(target=cache.get, args=("digits", "image"))
    loader.start()
    assert started.wait(5)
    done = threading.Event()
    threading.Thread(target=lambda: (cache.get("reviews", "text"), done.set()), daemon=True).start()
    try:
        assert done.wait(2), "the loaded model waited for another model's load"  # before: blocked until release
    finally:
        release.set()
        loader.join(10)
    assert cache.loaded() == ["digits:v1", "reviews:v1"]


def test_concurrent_requests_for_one_new_model_load_it_once(fresh, monkeypatch):
    calls = []
    original = ModelRegistry.load

    def counted(self, name, version=None, device="cpu"):
        calls.append((name, version))
        time.sleep(0.2)
        return original(self, name, version, device)

    monkeypatch.setattr(ModelRegistry, "load", counted)
    cache = create_app(fresh).state.models
    threads = [threading.Thread(target=cache.get, args=("digits", "image")) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert calls == [("digits", "v1")]


# ------------------------------------------------------------ 8. keys, ranges

def test_an_admin_key_in_the_url_is_refused_and_cut_from_the_access_log(fresh):
    app_client = TestClient(create_app(fresh, admin_key=KEY))
    response = app_client.post(f"/v1/admin/models/reviews/rollback?api_key={KEY}")
    assert response.status_code == 400 and KEY not in response.text and "header" in response.json()["detail"]
    right = app_client.post(f"/v1/admin/models/reviews/rollback?x={KEY}", headers={ADMIN_HEADER: KEY})
    assert right.status_code == 400  # even with the right header: the URL already leaked the key
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5", "POST", f"/v1/admin/models/reviews/rollback?api_key={KEY}", "1.1", 400),
                               None)
    assert QueryRedactingFilter().filter(record)
    assert KEY not in record.getMessage() and "/v1/admin/models/reviews/rollback?[query removed]" in record.getMessage()


@pytest.mark.parametrize("key", [" " * 20, "\t" * 20, "ключ-администратора-0123", " " + "k" * 20,
                                 "k" * 10 + " " + "k" * 10])
def test_an_admin_key_no_header_can_carry_is_refused_at_start(reg, monkeypatch, key):
    monkeypatch.setenv(ADMIN_KEY_ENV, key)
    with pytest.raises(ValueError, match="printable ASCII characters without spaces") as err:
        create_app(reg)
    assert not key.strip() or key.strip() not in str(err.value)
    with pytest.raises(ValueError):
        check_admin_key(key)


def test_an_out_of_range_pixel_is_quoted_exactly():
    image = DIGITS[0].copy()
    image[0, 0] = 16.0000001
    with pytest.raises(InputError, match=r"values from 0 to 16\.0000001; expected values in \[0, 16\]"):
        check_images([image])


# ------------------------------------------------------------ risks

def test_the_model_card_is_covered_by_the_manifest(fresh, caplog):
    path = fresh.root / "digits" / "v1" / "card.json"
    card = json.loads(path.read_text(encoding="utf-8"))
    card["labels"] = card["labels"][::-1]  # reversed labels: a silently wrong service
    path.write_text(json.dumps(card), encoding="utf-8")
    with pytest.raises(RegistryError, match="card.json"):
        fresh.load("digits")
    response = TestClient(create_app(fresh)).post("/v1/image/classify",
                                                  json={"model": "digits", "images": DIGITS[:1].tolist()})
    assert response.status_code == 503  # before: 200 with every label wrong


def test_a_version_without_a_manifest_does_not_load(fresh):
    (fresh.root / "digits" / "v1" / "manifest.json").unlink()
    with pytest.raises(RegistryError, match="manifest.json is missing"):
        fresh.load("digits")


def test_content_length_with_transfer_encoding_is_refused(reg):
    body = json.dumps({"model": "reviews", "texts": ["好"]}).encode()

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"transfer-encoding", b"chunked")]
    sent = asgi_call(create_app(reg), receive, headers)
    assert sent[0]["status"] == 400 and (b"connection", b"close") in sent[0]["headers"]
    assert b"both Content-Length and Transfer-Encoding" in sent[1]["body"]


def test_a_slow_body_is_refused_with_408(reg):
    async def receive():
        await asyncio.sleep(0.1)
        return {"type": "http.request", "body": b" ", "more_body": True}  # a byte now and then, for ever

    sent = asgi_call(create_app(reg, body_timeout=0.2), receive)
    assert sent[0]["status"] == 408 and b"did not arrive within 0.2 s" in sent[1]["body"]


def test_an_oversized_config_is_refused_before_the_model_is_built(fresh, tmp_path, monkeypatch):
    import bigmodel_course.serving.admin as admin
    from bigmodel_course.serving.architectures import parameter_count

    def never(*args, **kwargs):
        raise AssertionError("the model was built")

    monkeypatch.setattr(admin, "build_model", never)
    cfg = GPTConfig(vocab_size=50, max_len=64, d_model=1024, n_heads=8, n_layers=24).to_dict()
    n = parameter_count("gpt_classifier", cfg)  # checked against built models below
    assert n > 32_000_000
    tiny = tmp_path / "w.safetensors"
    save_model(torch.nn.Linear(1, 1), str(tiny))
    metadata = {"task": "text", "architecture": "gpt_classifier", "config": cfg, "labels": ["负面", "正面"],
                "preprocessing": {"max_len": 16}}
    app_client = TestClient(create_app(fresh, admin_key=KEY, admin_max_body_bytes=64_000_000))
    start = time.perf_counter()
    response = app_client.post("/v1/admin/models/big/versions", headers={ADMIN_HEADER: KEY},
                               data={"metadata": json.dumps(metadata)},
                               files={"weights": ("model.safetensors", tiny.read_bytes())})
    assert response.status_code == 422, response.text
    assert response.json()["detail"] == (f"the config describes a model of {n:,} parameters; an upload of at most "
                                         "64,000,000 bytes holds at most 32,000,000 (2 bytes each)")
    assert time.perf_counter() - start < 5
    assert "big" not in fresh.names()


def test_parameter_count_matches_the_built_model():
    from bigmodel_course.serving.architectures import build_model, parameter_count
    from bigmodel_course.vision_models import ViTConfig

    for architecture, cfg in [
        ("gpt_classifier", GPTConfig(vocab_size=50, max_len=64, d_model=32, n_heads=2, n_layers=5).to_dict()),
        ("vit", ViTConfig(d_model=16, n_heads=2, n_layers=3).to_dict()),
        ("resnet18_small", {"num_classes": 10}),
    ]:
        built = sum(p.numel() for p in build_model(architecture, cfg).parameters())
        assert parameter_count(architecture, cfg) == built


@pytest.mark.parametrize("pixel, kind", [("1", "string"), (True, "boolean")])
def test_pixels_must_be_json_numbers(client, pixel, kind):
    image = DIGITS[0].tolist()
    image[3][4] = pixel
    response = client.post("/v1/image/classify", json={"model": "digits", "images": [image]})
    assert response.status_code == 422  # before: coerced to 1.0 and classified
    assert response.json()["detail"] == "images[0][3][4]: Input should be a valid number"
    with pytest.raises(InputError, match="numbers only"):
        check_images([[[pixel] * 8] * 8])


def test_http_exception_is_what_parse_errors_raise():
    from bigmodel_course.serving.app import parse_body
    from bigmodel_course.serving.schemas import request_models

    text_request, _ = request_models(4)
    with pytest.raises(HTTPException) as err:
        parse_body(text_request, b'{"model": "a", "texts": [')
    assert err.value.status_code == 400 and err.value.detail.startswith("malformed JSON")
