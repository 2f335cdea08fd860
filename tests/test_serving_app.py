"""The FastAPI service through its test client: every route, every bad input, parity with LoadedModel.predict."""

import json
import shutil
import time

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_digits

from bigmodel_course.serving import LoadedModel, ModelRegistry, build_model, create_app, decode_png, encode_png
from bigmodel_course.serving.middleware import INTERNAL_ERROR
from bigmodel_course.tokenization import CharTokenizer
from bigmodel_course.transformer import GPTConfig
from bigmodel_course.vision_models import ViTConfig

SENTENCES = ["这本书写得很好，值得推荐", "质量太差了，非常失望", "物流很快，包装也不错", "客服态度恶劣，退货麻烦"]
TEXTS = ["这本书很好", "太差了，失望", "包装不错，物流快，值得推荐，下次还来"]
DIGITS = load_digits().images[:6]
PREP = {"image_size": 8, "max_value": 16.0, "mean": 4.88, "std": 6.02}
RESPONSES = []


class RecordingClient(TestClient):
    """A TestClient that keeps every response so each test can check that none shows a traceback."""

    def request(self, *args, **kwargs):
        response = super().request(*args, **kwargs)
        RESPONSES.append(response)
        return response


@pytest.fixture(autouse=True)
def no_tracebacks():
    RESPONSES.clear()
    yield
    for response in RESPONSES:
        assert "Traceback" not in response.text and 'File "' not in response.text, response.text
        if response.status_code >= 400:
            detail = response.json()["detail"]
            assert isinstance(detail, str) and 0 < len(detail) < 300, detail


def publish_models(reg, tok_dir, seed=0, version_note=""):
    """A tiny GPT review classifier and a tiny ViT, with scaled-up heads so classes are well separated."""
    torch.manual_seed(seed)
    tok = CharTokenizer.train(SENTENCES)
    tok_path = tok.save(tok_dir / "tokenizer.json")
    gpt_cfg = GPTConfig(vocab_size=tok.vocab_size, max_len=32, d_model=32, n_heads=2, n_layers=1,
                        dropout=0.0, attn_dropout=0.0).to_dict()
    gpt = build_model("gpt_classifier", gpt_cfg)
    torch.nn.init.normal_(gpt.score.weight, std=2.0)
    text = reg.publish("reviews", gpt, task="text", architecture="gpt_classifier", config=gpt_cfg,
                       labels=["负面", "正面"], metrics={"accuracy": 0.5}, preprocessing={"max_len": 16},
                       files={"tokenizer.json": tok_path}, description=f"tiny {version_note}")
    vit_cfg = ViTConfig(d_model=16, n_heads=2, n_layers=1, dropout=0.0).to_dict()
    vit = build_model("vit", vit_cfg)
    torch.nn.init.normal_(vit.head.weight, std=2.0)
    image = reg.publish("digits", vit, task="image", architecture="vit", config=vit_cfg,
                        labels=[str(d) for d in range(10)], metrics={"accuracy": 0.1}, preprocessing=PREP)
    return text, image


def promoted_registry(root, tok_dir) -> ModelRegistry:
    """A registry at `root` with both tiny models published and promoted."""
    registry = ModelRegistry(root)
    for card in publish_models(registry, tok_dir):
        registry.promote(card.name, card.version)
    return registry


@pytest.fixture(scope="module")
def reg(tmp_path_factory):
    return promoted_registry(tmp_path_factory.mktemp("registry"), tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def client(reg):
    return RecordingClient(create_app(reg))


def metric_values(client):
    """{(sample name, sorted labels): value} from GET /metrics."""
    text = client.get("/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_healthz_and_models(client, reg):
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    models = client.get("/v1/models").json()["models"]
    assert ([(m["name"], m["version"], m["promoted"]) for m in models]
            == [("digits", "v1", True), ("reviews", "v1", True)])
    card = reg.promoted("reviews")
    assert models[1]["sha256"] == card.sha256 and models[1]["metrics"] == {"accuracy": 0.5}
    assert models[1]["created"] == card.created and models[1]["labels"] == ["负面", "正面"]


def test_text_predictions_equal_predict_and_the_models_argmax(client, reg):
    response = client.post("/v1/text/classify", json={"model": "reviews", "texts": TEXTS})
    assert response.status_code == 200
    body = response.json()
    assert (body["model"], body["version"]) == ("reviews", "v1")
    loaded = reg.load("reviews")
    assert body["predictions"] == loaded.predict(TEXTS)  # exact: same floats after the JSON round trip
    for text, prediction in zip(TEXTS, body["predictions"]):
        ids = torch.tensor([loaded.tokenizer.encode(text, max_len=16)])
        with torch.no_grad():
            logits = loaded.model(input_ids=ids).logits[0]
        assert (prediction["label_id"] == int(logits.argmax())
                and prediction["label"] == ["负面", "正面"][int(logits.argmax())])
        assert sum(prediction["probabilities"].values()) == pytest.approx(1.0)
    assert "reviews:v1" in client.get("/healthz").json()["loaded"]


def own_argmax(loaded, images):
    x = torch.from_numpy((np.asarray(images, np.float32) - PREP["mean"]) / PREP["std"]).float().unsqueeze(1)
    with torch.no_grad():
        return loaded.model(pixel_values=x).logits.argmax(-1).tolist()


def test_image_json_predictions_equal_predict_and_the_models_argmax(client, reg):
    response = client.post("/v1/image/classify", json={"model": "digits", "images": DIGITS.tolist()})
    assert response.status_code == 200
    loaded = reg.load("digits")
    assert response.json()["predictions"] == loaded.predict(DIGITS)
    assert [p["label_id"] for p in response.json()["predictions"]] == own_argmax(loaded, DIGITS)


def test_png_uploads_equal_predict_on_the_decoded_pixels(client, reg):
    files = [("files", (f"digit{i}.png", encode_png(d), "image/png")) for i, d in enumerate(DIGITS[:3])]
    response = client.post("/v1/image/classify", data={"model": "digits"}, files=files)
    assert response.status_code == 200, response.text
    decoded = np.stack([decode_png(encode_png(d)) for d in DIGITS[:3]])
    loaded = reg.load("digits")
    assert response.json()["predictions"] == loaded.predict(decoded)
    assert [p["label_id"] for p in response.json()["predictions"]] == own_argmax(loaded, decoded)


@pytest.mark.parametrize("body, status, message", [
    ({"model": "reviews", "texts": []}, 422, "texts is empty"),
    ({"model": "reviews", "texts": ["好", "  "]}, 422, "texts[1] is empty"),
    ({"model": "reviews", "texts": ["好" * 513]}, 422, "texts[0] is too long: 513 characters; at most 512"),
    ({"model": "reviews", "texts": ["好"] * 65}, 422, "too many texts: 65; at most 64"),
    ({"model": "nope", "texts": ["好"]}, 404, "unknown model 'nope'; registered models: digits, reviews"),
    ({"model": "digits", "texts": ["好"]}, 400,
     "'digits' is an image model, not a text model; use POST /v1/image/classify"),
    ({"model": "../etc", "texts": ["好"]}, 422, "invalid model name '../etc'"),
    ({"texts": ["好"]}, 422, "missing field 'model'"),
    ({"model": "reviews"}, 422, "missing field 'texts'"),
    ({"model": "reviews", "texts": ["好", 3]}, 422, "texts[1]: Input should be a valid string"),
    ({"model": "reviews", "texts": "好"}, 422, "texts: Input should be a valid list"),
    ({"model": "reviews", "texts": ["好"], "top_k": 3}, 422, "unexpected field 'top_k'"),
    (["reviews", "好"], 422, "request body must be a JSON object"),
])
def test_bad_text_requests(client, body, status, message):
    response = client.post("/v1/text/classify", json=body)
    assert response.status_code == status and message in response.json()["detail"], response.json()


@pytest.mark.parametrize("body, status, message", [
    ({"model": "digits", "images": []}, 422, "images is empty"),
    ({"model": "digits", "images": [[[0] * 8] * 7]}, 422, "images[0] has size 7×8; expected 8×8"),
    ({"model": "digits", "images": [[[0] * 8] * 8, [[0] * 9] * 8]}, 422, "images[1] has size 8×9; expected 8×8"),
    ({"model": "digits", "images": [[[20] * 8] * 8]}, 422, "expected values in [0, 16]"),
    ({"model": "digits", "images": [[[0] * 8] * 8] * 65}, 422, "too many images: 65; at most 64"),
    ({"model": "digits", "images": [[["a"] * 8] * 8]}, 422, "images[0][0][0]: Input should be a valid number"),
    ({"model": "nope", "images": [[[0] * 8] * 8]}, 404, "unknown model 'nope'"),
    ({"model": "reviews", "images": [[[0] * 8] * 8]}, 400, "'reviews' is a text model, not an image model"),
    ({"images": [[[0] * 8] * 8]}, 422, "missing field 'model'"),
])
def test_bad_image_json_requests(client, body, status, message):
    response = client.post("/v1/image/classify", json=body)
    assert response.status_code == status and message in response.json()["detail"], response.json()


def test_bad_image_uploads(client):
    good = ("files", ("a.png", encode_png(DIGITS[0]), "image/png"))
    big = encode_png(np.zeros((16, 16)))
    cases = [
        ({"model": "digits"}, [good, ("files", ("notes.txt", b"hello", "text/plain"))], 422,
         "files[1] (notes.txt) is not a PNG image"),
        ({"model": "digits"}, [("files", ("big.png", big, "image/png"))], 422,
         "files[0] (big.png) is 16×16 pixels; expected 8×8"),
        ({"model": "digits"}, [("files", ("empty.png", b"", "image/png"))], 422,
         "files[0] (empty.png) is not a PNG image"),
        ({"model": "digits"}, [("other", ("a.png", b"x", "image/png"))], 422, "missing form field 'files'"),
        ({}, [good], 422, "missing form field 'model'"),
        ({"model": "nope"}, [good], 404, "unknown model 'nope'"),
        ({"model": "reviews"}, [good], 400, "is a text model"),
        ({"model": "digits"}, [good] * 65, 422, "too many files: 65; at most 64"),
    ]
    for data, files, status, message in cases:
        response = client.post("/v1/image/classify", data=data, files=files)
        assert response.status_code == status and message in response.json()["detail"], response.json()
    response = client.post("/v1/image/classify", data={"model": "digits", "files": "not a file"},
                           files=[("x", ("a.png", b"x"))])
    assert response.status_code == 422 and "files[0] must be a file upload" in response.json()["detail"]
    response = client.post("/v1/image/classify", content=b"--x\r\nbroken",
                           headers={"content-type": "multipart/form-data"})
    assert response.status_code == 400 and "malformed multipart body: Missing boundary" in response.json()["detail"]
    response = client.post("/v1/image/classify", content=b"1,2,3", headers={"content-type": "text/csv"})
    assert response.status_code == 415 and "unsupported Content-Type 'text/csv'" in response.json()["detail"]


@pytest.mark.parametrize("route", ["/v1/text/classify", "/v1/image/classify"])
def test_malformed_json(client, route):
    response = client.post(route, content=b'{"model": "reviews", "texts": [',
                           headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["detail"].startswith("malformed JSON:")


@pytest.mark.parametrize("route", ["/v1/text/classify", "/v1/image/classify"])
def test_oversized_bodies_are_refused_with_and_without_content_length(client, route):
    body = json.dumps({"model": "reviews", "texts": ["好" * 100] * 5000}).encode()
    assert len(body) > 1_000_000
    declared = client.post(route, content=body, headers={"content-type": "application/json"})
    assert declared.status_code == 413
    assert declared.json()["detail"] == (f"request body too large: Content-Length is {len(body)} bytes; "
                                         "the limit is 1000000 bytes")

    def chunks():  # a generator body is sent without Content-Length (chunked)
        for i in range(0, len(body), 65536):
            yield body[i:i + 65536]

    streamed = client.post(route, content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413 and "more than 1000000 bytes arrived" in streamed.json()["detail"]


def test_the_body_limit_counts_bytes_not_items(reg):
    small = RecordingClient(create_app(reg, max_body_bytes=200, max_batch=2, max_text_chars=5))
    ok = small.post("/v1/text/classify", json={"model": "reviews", "texts": ["好"]})
    assert ok.status_code == 200
    assert small.post("/v1/text/classify", json={"model": "reviews", "texts": ["好" * 80]}).status_code == 413
    assert "at most 2" in small.post("/v1/text/classify",
                                     json={"model": "reviews", "texts": ["好"] * 3}).json()["detail"]
    assert "at most 5" in small.post("/v1/text/classify",
                                     json={"model": "reviews", "texts": ["好" * 6]}).json()["detail"]
    chunked = small.post("/v1/text/classify", content=iter([b'{"model": "reviews", ', b'"texts": ["ok"]}']),
                         headers={"content-type": "application/json"})
    assert chunked.status_code == 200  # a small chunked body is passed on whole


def test_unknown_routes_and_methods(client):
    assert client.get("/v2/nothing").status_code == 404
    assert client.get("/v1/text/classify").status_code == 405


def test_unexpected_errors_return_a_generic_500(reg, monkeypatch, caplog):
    def broken(self, inputs):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(LoadedModel, "predict", broken)
    app_client = RecordingClient(create_app(reg))
    with caplog.at_level("ERROR", logger="bigmodel_course.serving"):
        response = app_client.post("/v1/text/classify", json={"model": "reviews", "texts": ["好"]})
    assert response.status_code == 500 and response.json() == {"detail": INTERNAL_ERROR}
    assert "secret" not in response.text
    record = next(r for r in caplog.records if "unhandled error" in r.getMessage())
    assert "secret internal detail" in caplog.text and record.exc_info is not None  # traceback logged server-side
    metrics = metric_values(app_client)
    key = ("bigmodel_http_requests_total", (("method", "POST"), ("route", "/v1/text/classify"), ("status", "500")))
    assert metrics[key] == 1


def test_a_tampered_model_is_refused_without_leaking_paths(tmp_path):
    reg = ModelRegistry(tmp_path / "registry")
    for card in publish_models(reg, tmp_path):
        reg.promote(card.name, card.version)
    weights = reg.root / "digits" / "v1" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\x00\x00\x00\x01")
    response = RecordingClient(create_app(reg)).post("/v1/image/classify",
                                                     json={"model": "digits", "images": DIGITS[:1].tolist()})
    assert response.status_code == 503 and str(tmp_path) not in response.text
    assert response.json()["detail"] == "model 'digits' cannot be loaded; the details are in the server log"


def test_an_unreadable_registry_gives_503_on_models(tmp_path):
    """The registry folder itself is gone (a damaged entry inside it is reported instead: test_serving_hardening)."""
    reg = ModelRegistry(tmp_path / "registry")
    publish_models(reg, tmp_path)
    app_client = RecordingClient(create_app(reg))
    shutil.rmtree(reg.root)
    response = app_client.get("/v1/models")
    assert response.status_code == 503 and str(tmp_path) not in response.text
    assert response.json()["detail"] == "the model registry cannot be read; the details are in the server log"


def test_promote_and_rollback_change_the_served_version_without_restart(tmp_path):
    reg = ModelRegistry(tmp_path / "registry")
    publish_models(reg, tmp_path, seed=0)
    publish_models(reg, tmp_path, seed=1)
    app_client = RecordingClient(create_app(reg))
    body = {"model": "digits", "images": DIGITS.tolist()}
    assert app_client.post("/v1/image/classify", json=body).status_code == 404  # nothing promoted yet
    reg.promote("digits", "v1")
    first = app_client.post("/v1/image/classify", json=body).json()
    reg.promote("digits", "v2")
    second = app_client.post("/v1/image/classify", json=body).json()
    assert (first["version"], second["version"]) == ("v1", "v2")
    assert second["predictions"] == reg.load("digits", "v2").predict(DIGITS)
    assert second["predictions"] != first["predictions"]
    reg.rollback("digits")
    assert app_client.post("/v1/image/classify", json=body).json() == first
    assert app_client.get("/healthz").json()["loaded"] == ["digits:v1"]


def test_metrics_count_requests_items_and_load_time(reg):
    app_client = RecordingClient(create_app(reg))
    start = time.perf_counter()
    app_client.post("/v1/text/classify", json={"model": "reviews", "texts": TEXTS})  # loads the model
    first_request_s = time.perf_counter() - start
    app_client.post("/v1/text/classify", json={"model": "reviews", "texts": TEXTS[:2]})
    app_client.post("/v1/text/classify", json={"model": "reviews", "texts": []})
    app_client.post("/v1/image/classify", json={"model": "digits", "images": DIGITS.tolist()})
    app_client.get("/nowhere")
    metrics = metric_values(app_client)
    requests = {labels: v for (name, labels), v in metrics.items() if name == "bigmodel_http_requests_total"}
    assert requests[(("method", "POST"), ("route", "/v1/text/classify"), ("status", "200"))] == 2
    assert requests[(("method", "POST"), ("route", "/v1/text/classify"), ("status", "422"))] == 1
    assert requests[(("method", "POST"), ("route", "/v1/image/classify"), ("status", "200"))] == 1
    assert requests[(("method", "GET"), ("route", "other"), ("status", "404"))] == 1
    assert metrics[("bigmodel_items_classified_total", (("model", "reviews"), ("version", "v1")))] == 5
    assert metrics[("bigmodel_items_classified_total", (("model", "digits"), ("version", "v1")))] == 6
    # the load happened inside the first request, so it took some but not more than that request's time
    assert 0 < metrics[("bigmodel_model_load_seconds", (("model", "reviews"), ("version", "v1")))] <= first_request_s
    assert metrics[("bigmodel_http_request_duration_seconds_count", (("route", "/v1/text/classify"),))] == 3
    response = app_client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")


def test_create_app_checks_its_limits(reg):
    for key in ("max_batch", "max_text_chars", "max_body_bytes"):
        with pytest.raises(ValueError, match=f"{key} must be a positive int"):
            create_app(reg, **{key: 0})
    assert create_app(reg.root).state.registry.root == reg.root  # a folder works as well as a registry


def test_openapi_documents_every_route_and_both_image_bodies(client):
    spec = client.get("/openapi.json").json()
    assert {"/v1/text/classify", "/v1/image/classify", "/v1/models", "/healthz", "/metrics"} <= set(spec["paths"])
    image_body = spec["paths"]["/v1/image/classify"]["post"]["requestBody"]["content"]
    assert set(image_body) == {"application/json", "multipart/form-data"}
    assert "422" in spec["paths"]["/v1/text/classify"]["post"]["responses"]


def test_openapi_lists_body_errors_only_for_routes_with_a_body(tmp_path):
    """413 (body too large) and 415 (wrong content type) can only happen where a request body is read."""
    spec = create_app(ModelRegistry(tmp_path), admin_key="k" * 32).openapi()
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            codes = set(op["responses"])
            if "requestBody" not in op and not (op.get("openapi_extra") or {}):
                assert not codes & {"413", "415"}, f"{method.upper()} {path} has no body but lists {sorted(codes)}"
    assert set(spec["paths"]["/v1/models"]["get"]["responses"]) == {"200", "500", "503"}
    assert {"413", "415"} <= set(spec["paths"]["/v1/text/classify"]["post"]["responses"])
    assert "413" in spec["paths"]["/v1/admin/models/{name}/promote"]["post"]["responses"]
    assert "413" not in spec["paths"]["/v1/admin/models/{name}/rollback"]["post"]["responses"]
    assert "413" not in spec["paths"]["/v1/admin/models/{name}/canary"]["delete"]["responses"]
