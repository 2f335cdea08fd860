"""Input checks and preprocessing (texts, 8×8 arrays, PNG), validation messages, metrics, LoadedModel.predict."""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from bigmodel_course.data import ClassificationDataset
from bigmodel_course.serving import InputError, ModelRegistry, decode_png, encode_png, publish_tiny_models
from bigmodel_course.serving.loadtest import LoadTestResult, run_load_test, tiny_payloads
from bigmodel_course.serving.metrics import ServiceMetrics
from bigmodel_course.serving.preprocess import check_images, check_texts, encode_texts, pixel_values
from bigmodel_course.serving.schemas import validation_message
from bigmodel_course.serving.server import base_url
from bigmodel_course.tokenization import CharTokenizer

TEXTS = ["这本书写得很好，推荐", "差", "物流很快，包装不错，下次还来"]


def test_check_texts_names_the_problem():
    assert check_texts(("好", "坏")) == ["好", "坏"]
    cases = [("好", "texts must be a list of strings, got str"), ([], "texts is empty"),
             (["好", " \n"], "texts\\[1\\] is empty"), (["好", 3], "texts\\[1\\] must be a string, got int")]
    for texts, message in cases:
        with pytest.raises(InputError, match=message):
            check_texts(texts)
    with pytest.raises(InputError, match="too many texts: 3; at most 2"):
        check_texts(["a", "b", "c"], max_items=2)
    with pytest.raises(InputError, match="texts\\[0\\] is too long: 6 characters; at most 5"):
        check_texts(["abcdef"], max_chars=5)
    with pytest.raises(ValueError, match="texts is empty"):  # callers that catch ValueError see input errors
        check_texts([])


def test_encode_texts_matches_training_and_the_tokenizer():
    tok = CharTokenizer.train(TEXTS)
    batch = encode_texts(tok, TEXTS, max_len=8)
    # independent path: the tokenizer's own batch encoder (right padding, [CLS] … [SEP], truncation)
    reference = tok.batch_encode(TEXTS, max_len=8)
    assert torch.equal(batch["input_ids"], reference["input_ids"])
    assert torch.equal(batch["attention_mask"], reference["attention_mask"])
    dataset = ClassificationDataset(TEXTS, [0, 1, 0], tok, max_len=8)
    train_batch = dataset.collate([dataset[i] for i in range(3)])
    assert torch.equal(batch["input_ids"], train_batch["input_ids"])
    assert batch["input_ids"][1].tolist() == [tok.cls_id, tok.token_to_id("差"), tok.sep_id] + [tok.pad_id] * 5


def test_check_images_accepts_lists_arrays_and_tensors():
    digits = np.arange(128, dtype=np.float64).reshape(2, 8, 8) % 17
    for images in (digits.tolist(), digits, torch.from_numpy(digits), list(digits)):
        out = check_images(images)
        assert out.dtype == np.float32 and out.shape == (2, 8, 8) and np.array_equal(out, digits)
    cases = [
        ([], "images is empty"),
        (np.zeros((8, 8)), "images must have shape \\(N, 8, 8\\), got \\(8, 8\\)"),
        ([np.zeros((8, 7))], "images\\[0\\] has size 8×7; expected 8×8"),
        ([np.zeros((8, 8)), np.zeros(64)], "images\\[1\\] has size 64; expected 8×8"),
        ([[[0] * 8] * 7 + [[0] * 7]], "images\\[0\\] is not an 8×8 grid of numbers"),
        ([np.full((8, 8), np.nan)], "images\\[0\\] contains NaN"),
        ([np.full((8, 8), 17.0)], "values from 17 to 17; expected values in \\[0, 16\\]"),
        ([np.full((8, 8), -1.0)], "expected values in \\[0, 16\\]"),
        ("abc", "images must be a list of 8×8 arrays"),
    ]
    for images, message in cases:
        with pytest.raises(InputError, match=message):
            check_images(images)
    with pytest.raises(InputError, match="too many images: 2; at most 1"):
        check_images(digits, max_items=1)


def test_pixel_values_normalise_with_the_cards_statistics():
    digits = np.random.default_rng(0).integers(0, 17, size=(3, 8, 8)).astype(np.float64)
    prep = {"image_size": 8, "max_value": 16.0, "mean": 4.5, "std": 6.25}
    out = pixel_values(digits, prep)
    assert out.dtype == torch.float32 and out.shape == (3, 1, 8, 8)
    np.testing.assert_allclose(out.numpy()[:, 0], (digits - 4.5) / 6.25, rtol=1e-6)


def png(array, mode="L"):
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8)).convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


def test_png_round_trip_and_scale():
    digit = np.random.default_rng(1).integers(0, 17, size=(8, 8)).astype(np.float64)
    data = encode_png(digit)
    assert data.startswith(b"\x89PNG")
    decoded = decode_png(data)
    assert decoded.shape == (8, 8) and decoded.dtype == np.float32
    np.testing.assert_allclose(decoded, digit, atol=16 / 255 / 2 + 1e-6)  # 8-bit quantisation
    white = decode_png(png(np.full((8, 8), 255), mode="RGB"))  # colour images are converted to grayscale
    assert np.allclose(white, 16.0)
    assert np.allclose(decode_png(png(np.full((8, 8), 51)), max_value=1.0), 0.2)


def test_decode_png_rejects_other_files_and_sizes():
    with pytest.raises(InputError, match="upload.txt is not a PNG image"):
        decode_png(b"hello world", name="upload.txt")
    jpeg = io.BytesIO()
    Image.new("L", (8, 8)).save(jpeg, format="JPEG")
    with pytest.raises(InputError, match="file is not a PNG image"):
        decode_png(jpeg.getvalue())
    with pytest.raises(InputError, match="file is 16×12 pixels; expected 8×8"):
        decode_png(png(np.zeros((12, 16))))
    with pytest.raises(InputError, match="not a readable PNG image"):
        decode_png(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    with pytest.raises(ValueError, match="image must be 2-D"):
        encode_png(np.zeros((1, 8, 8)))
    with pytest.raises(ValueError, match="max_value must be a positive number"):
        encode_png(np.zeros((8, 8)), max_value=0)


def test_validation_messages_are_short_and_name_the_field():
    assert validation_message([{"type": "missing", "loc": ("body", "texts"), "msg": "Field required"}]) == (
        422, "missing field 'texts'")
    assert validation_message([{"type": "string_type", "loc": ("body", "texts", 2),
                                "msg": "Input should be a valid string"},
                               {"type": "string_type", "loc": ("body", "texts", 3), "msg": "x"}]) == (
        422, "texts[2]: Input should be a valid string (and 1 more problem)")
    assert validation_message([{"type": "extra_forbidden", "loc": ("body", "foo"), "msg": "x"}]) == (
        422, "unexpected field 'foo'")
    status, message = validation_message([{"type": "json_invalid", "loc": ("body", 7), "msg": "JSON decode error",
                                           "ctx": {"error": "Expecting value"}}])
    assert (status, message) == (400, "malformed JSON: Expecting value at position 7")
    assert validation_message([])[0] == 422


def test_service_metrics_use_their_own_registry():
    a, b = ServiceMetrics(), ServiceMetrics()  # a second instance must not clash with the first
    a.observe_request("/healthz", "GET", 200, 0.003)
    a.observe_request("/healthz", "GET", 200, 0.2)
    a.items.labels("digits", "v1").inc(5)
    families = {f.name: f for f in text_string_to_metric_families(a.render().decode())}
    count = [s for s in families["bigmodel_http_requests"].samples if s.name.endswith("_total")]
    assert count[0].labels == {"route": "/healthz", "method": "GET", "status": "200"} and count[0].value == 2
    hist = {s.labels.get("le"): s.value for s in families["bigmodel_http_request_duration_seconds"].samples
            if s.name.endswith("_bucket")}
    assert hist["0.005"] == 1 and hist["0.25"] == 2
    assert "bigmodel_http_requests_total{" not in b.render().decode()


def test_loaded_model_predict_matches_its_own_forward(tmp_path):
    reg = ModelRegistry(tmp_path)
    publish_tiny_models(reg)
    text = reg.load("tiny-text")
    predictions = text.predict(TEXTS)
    for text_in, prediction in zip(TEXTS, predictions):
        ids = torch.tensor([text.tokenizer.encode(text_in, max_len=64)])  # one text alone: no padding
        with torch.no_grad():
            probs = torch.softmax(text.model(input_ids=ids).logits, -1)[0]
        assert prediction["label_id"] == int(probs.argmax())
        assert prediction["label"] == text.card.labels[prediction["label_id"]]
        np.testing.assert_allclose(list(prediction["probabilities"].values()), probs.numpy(), atol=1e-5)
        assert list(prediction["probabilities"]) == ["负面", "正面"]
    image = reg.load("tiny-digits")
    digits = np.random.default_rng(2).integers(0, 17, size=(4, 8, 8)).astype(np.float32)
    prep = image.card.preprocessing
    x = torch.from_numpy((digits - prep["mean"]) / prep["std"]).float().unsqueeze(1)
    with torch.no_grad():
        expected = image.model(pixel_values=x).logits.argmax(-1).tolist()
    assert [p["label_id"] for p in image.predict(digits)] == expected
    assert [p["label"] for p in image.predict(torch.from_numpy(digits))] == [str(i) for i in expected]
    with pytest.raises(InputError, match="texts\\[0\\] is empty"):
        text.predict([""])
    with pytest.raises(InputError, match="has size 8×7"):
        image.predict(np.zeros((1, 8, 7)))


def test_load_test_result_statistics_and_bad_arguments():
    result = LoadTestResult(requests=4, concurrency=2, seconds=2.0, latencies_ms=[1.0, 2.0, 3.0, 100.0],
                            statuses={"200": 3, "500": 1}, errors=1, error_examples=["/x: 500"])
    assert result.p50_ms == 2.5 and result.p99_ms == pytest.approx(np.percentile([1, 2, 3, 100], 99))
    assert result.requests_per_second == 2.0
    assert result.format() == "4 requests, 2 concurrent: p50 2.5 ms, p99 97.1 ms, 2 requests/s, 1 errors (e.g. /x: 500)"
    with pytest.raises(ValueError, match="requests must be a positive int"):
        run_load_test("http://127.0.0.1:1", tiny_payloads(), requests=0)
    with pytest.raises(ValueError, match="payloads is empty"):
        run_load_test("http://127.0.0.1:1", [], requests=1)
    assert [path for path, _ in tiny_payloads()] == ["/v1/text/classify", "/v1/image/classify"]
    assert base_url("127.0.0.1", 80) == "http://127.0.0.1:80" and base_url("::1", 80) == "http://[::1]:80"
