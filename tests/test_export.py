"""ONNX export of the text classifiers: same logits as eager PyTorch on other batch sizes and lengths, clear errors."""

import numpy as np
import onnx
import pytest
import torch

from bigmodel_course.export import (
    OnnxTextClassifier,
    compare_speed,
    example_inputs,
    export_text_classifier,
    max_abs_difference,
)
from bigmodel_course.transformer import (
    EncoderConfig,
    EncoderForSequenceClassification,
    GPTConfig,
    GPTForSequenceClassification,
)

TOLERANCE = 1e-4  # float32 logits of eager PyTorch and onnxruntime; the book states the same tolerance


def tiny_gpt():
    cfg = GPTConfig(vocab_size=50, max_len=32, d_model=32, n_heads=2, n_layers=2, num_labels=3,
                    dropout=0.0, attn_dropout=0.0)
    return GPTForSequenceClassification(cfg).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = tiny_gpt()
    path = export_text_classifier(model, tmp_path_factory.mktemp("onnx") / "model.onnx")
    return model, OnnxTextClassifier(path, threads=1)


def test_exported_graph_is_valid_onnx_with_dynamic_axes(exported):
    _, session = exported
    proto = onnx.load(str(session.path))
    onnx.checker.check_model(proto)
    dims = [d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "sequence"]
    assert [o.name for o in proto.graph.output] == ["logits"]


@pytest.mark.parametrize("batch,length", [(1, 1), (1, 9), (5, 20), (4, 32)])
def test_onnx_logits_match_eager_on_padded_batches(exported, batch, length):
    model, session = exported
    g = torch.Generator().manual_seed(batch * 100 + length)
    ids = torch.randint(1, 50, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    if batch > 1:
        mask[0, length // 2 + 1:] = 0  # right padding in one row
        ids = ids * mask
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits.numpy()
    got = session.logits(ids, mask)
    assert got.shape == (batch, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=TOLERANCE, rtol=0)


def test_max_abs_difference_is_small_and_detects_a_different_model(exported):
    model, session = exported
    assert max_abs_difference(model, session) < TOLERANCE
    torch.manual_seed(123)
    other = tiny_gpt()  # other random weights: the ONNX file no longer matches
    assert max_abs_difference(other, session) > 1e-2


def test_export_leaves_the_model_unchanged_and_works_for_the_encoder(tmp_path):
    cfg = EncoderConfig(vocab_size=40, max_len=16, d_model=16, n_heads=2, n_layers=1, num_labels=2,
                        dropout=0.0, attn_dropout=0.0)
    model = EncoderForSequenceClassification(cfg).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    session = OnnxTextClassifier(export_text_classifier(model, tmp_path / "enc.onnx"))
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.eval()
    ids, mask = example_inputs(model, batch=3, length=10)
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits.numpy()
    np.testing.assert_allclose(session.logits(ids, mask), expected, atol=TOLERANCE, rtol=0)


def test_example_inputs_are_valid_and_right_padded():
    model = tiny_gpt()
    ids, mask = example_inputs(model, batch=2, length=100)
    assert ids.shape == mask.shape == (2, 32)  # clipped to the context
    assert mask[0].all() and not mask[1, 16:].any() and (ids[1, 16:] == 0).all()
    assert int(ids.max()) < 50


def test_bad_inputs_are_named(exported, tmp_path):
    _, session = exported
    with pytest.raises(ValueError, match="attention_mask has shape"):
        session.logits(np.ones((2, 3), dtype=np.int64), np.ones((2, 4), dtype=np.int64))
    with pytest.raises(ValueError, match="input_ids must hold integers"):
        session.logits(np.ones((2, 3), dtype=np.float32), np.ones((2, 3), dtype=np.int64))
    with pytest.raises(ValueError, match=r"input_ids must have shape \(batch, length\)"):
        session.logits(np.ones(3, dtype=np.int64), np.ones(3, dtype=np.int64))
    with pytest.raises(ValueError, match="end in .onnx"):
        export_text_classifier(tiny_gpt(), tmp_path / "model.bin")
    with pytest.raises(ValueError, match="no cfg.max_len"):
        export_text_classifier(torch.nn.Linear(2, 2), tmp_path / "linear.onnx")
    with pytest.raises(FileNotFoundError, match="no ONNX model"):
        OnnxTextClassifier(tmp_path / "missing.onnx")
    (tmp_path / "broken.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(ValueError, match="not a loadable ONNX model"):
        OnnxTextClassifier(tmp_path / "broken.onnx")
    with pytest.raises(ValueError, match="threads must be"):
        OnnxTextClassifier(session.path, threads=0)


def test_compare_speed_rows(exported, monkeypatch):
    """Rows convert the timer's median seconds to ms per batch size; the timed calls run both models."""
    from bigmodel_course import benchmarks

    model, session = exported
    rows = compare_speed(model, session, batch_sizes=(1, 4), length=8, rounds=2)
    assert [r["batch"] for r in rows] == [1, 4]
    for r in rows:
        assert r["speedup"] == pytest.approx(r["eager_ms"] / r["onnx_ms"])
    seen = []

    def fake_timer(fns, device, rounds):
        seen.append((sorted(fns), rounds))
        for fn in fns.values():
            fn()  # each must run without error on the batch
        return {"eager": 0.004, "onnx": 0.001}

    monkeypatch.setattr(benchmarks, "time_interleaved", fake_timer)
    rows = compare_speed(model, session, batch_sizes=(2, 3), length=8, rounds=5)
    assert seen == [(["eager", "onnx"], 5)] * 2
    assert rows == [{"batch": b, "eager_ms": pytest.approx(4.0), "onnx_ms": pytest.approx(1.0),
                     "speedup": pytest.approx(4.0)} for b in (2, 3)]
    with pytest.raises(ValueError, match="positive ints"):
        compare_speed(model, session, batch_sizes=(0,))
