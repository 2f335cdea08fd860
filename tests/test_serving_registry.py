"""The model registry: versions, cards, sha256, promote/rollback, verified loading, atomic publish, bad input."""

import json
import threading

import numpy as np
import pytest
import torch

from bigmodel_course.serving import (
    ARCHITECTURE_TASKS,
    ARCHITECTURES,
    ModelCard,
    ModelNotFoundError,
    ModelRegistry,
    RegistryError,
    build_model,
)
from bigmodel_course.serving import registry as registry_module
from bigmodel_course.serving.architectures import check_architecture
from bigmodel_course.files import sha256_file
from bigmodel_course.serving.registry import check_name, check_version
from bigmodel_course.tokenization import CharTokenizer
from bigmodel_course.transformer import EncoderConfig, GPTConfig
from bigmodel_course.vision_models import ViTConfig

SENTENCES = ["这本书写得很好", "质量太差了", "物流很快，包装不错", "客服态度恶劣"]
DIGIT_PREP = {"image_size": 8, "max_value": 16.0, "mean": 4.9, "std": 6.0}


def vit_config(**overrides):
    return ViTConfig(d_model=16, n_heads=2, n_layers=1, dropout=0.0, **overrides).to_dict()


def publish_vit(reg, name="digits", metrics=None, **overrides):
    cfg = vit_config(**overrides)
    return reg.publish(name, build_model("vit", cfg), task="image", architecture="vit", config=cfg,
                       labels=[str(d) for d in range(10)], metrics=metrics or {"accuracy": 0.5},
                       preprocessing=DIGIT_PREP)


@pytest.fixture
def reg(tmp_path):
    return ModelRegistry(tmp_path / "registry")


@pytest.fixture
def tokenizer_file(tmp_path):
    return CharTokenizer.train(SENTENCES).save(tmp_path / "tok" / "tokenizer.json")


def gpt_config(tokenizer_file):
    vocab = CharTokenizer.load(tokenizer_file).vocab_size
    return GPTConfig(vocab_size=vocab, max_len=32, d_model=32, n_heads=2, n_layers=1, dropout=0.0,
                     attn_dropout=0.0).to_dict()


def test_publish_numbers_versions_and_writes_a_card(reg, tokenizer_file):
    cfg = gpt_config(tokenizer_file)
    model = build_model("gpt_classifier", cfg)
    first = reg.publish("reviews", model, task="text", architecture="gpt_classifier", config=cfg,
                        labels=["负面", "正面"], metrics={"accuracy": 0.81, "f1": 0.8},
                        preprocessing={"max_len": 32}, files={"tokenizer.json": tokenizer_file},
                        description="tiny")
    second = reg.publish("reviews", model, task="text", architecture="gpt_classifier", config=cfg,
                         labels=["负面", "正面"], metrics={"accuracy": 0.83}, preprocessing={"max_len": 32},
                         files=[tokenizer_file])
    assert (first.version, second.version) == ("v1", "v2")
    assert [c.version for c in reg.versions("reviews")] == ["v1", "v2"]
    folder = reg.root / "reviews" / "v1"
    assert sorted(p.name for p in folder.iterdir()) == ["card.json", "manifest.json", "model.safetensors",
                                                        "tokenizer.json"]
    stored = json.loads((folder / "card.json").read_text(encoding="utf-8"))
    assert stored["sha256"] == sha256_file(folder / "model.safetensors") == first.sha256
    assert stored["weights_bytes"] == (folder / "model.safetensors").stat().st_size
    assert stored["files"]["tokenizer.json"]["sha256"] == sha256_file(tokenizer_file)
    assert stored["metrics"] == {"accuracy": 0.81, "f1": 0.8} and stored["labels"] == ["负面", "正面"]
    assert stored["config"] == cfg and stored["preprocessing"] == {"max_len": 32}
    assert stored["num_parameters"] == sum(p.numel() for p in model.parameters())
    assert stored["created"].endswith("+00:00") and stored["software"]["torch"] == torch.__version__
    assert "promoted" not in stored and stored["description"] == "tiny"
    assert ModelCard.from_dict(stored) == first


def test_card_dict_summary_and_missing_fields(reg):
    card = publish_vit(reg)
    assert set(card.summary()) == {"name", "version", "task", "architecture", "labels", "metrics", "sha256",
                                   "created", "num_parameters", "description", "promoted"}
    assert card.to_dict()["config"] == vit_config()
    data = json.loads((reg.root / "digits" / "v1" / "card.json").read_text())
    del data["sha256"]
    with pytest.raises(ValueError, match="lacks \\['sha256'\\]"):
        ModelCard.from_dict(data)
    with pytest.raises(ValueError, match="not a model card"):
        ModelCard.from_dict({"name": "x"})


def test_promote_and_rollback_follow_the_promotion_history(reg):
    for _ in range(3):
        publish_vit(reg)
    with pytest.raises(RegistryError, match="'digits' has no promoted version"):
        reg.promoted("digits")
    assert reg.promote("digits", "v1").promoted
    reg.promote("digits", "v3")
    reg.promote("digits", "v3")  # promoting the current version again changes nothing
    reg.promote("digits", "v2")
    assert reg.promoted("digits").version == "v2"
    assert [c.promoted for c in reg.versions("digits")] == [False, True, False]
    assert reg.rollback("digits").version == "v3"
    assert reg.rollback("digits").version == "v1"
    assert reg.promoted_version("digits") == "v1"
    with pytest.raises(RegistryError, match="no previously promoted version.*promoted: v1"):
        reg.rollback("digits")
    with pytest.raises(ModelNotFoundError, match="no version 'v9'; versions: v1, v2, v3"):
        reg.promote("digits", "v9")


def test_list_covers_every_model_with_the_promoted_flag(reg):
    publish_vit(reg, "digits")
    publish_vit(reg, "digits")
    publish_vit(reg, "other-digits")
    reg.promote("digits", "v2")
    assert [(c.name, c.version, c.promoted) for c in reg.list()] == [
        ("digits", "v1", False), ("digits", "v2", True), ("other-digits", "v1", False)]
    assert reg.names() == ["digits", "other-digits"]


def test_unknown_names_and_bad_names_or_versions(reg):
    publish_vit(reg)
    with pytest.raises(ModelNotFoundError, match="unknown model 'nope'; registered models: digits"):
        reg.versions("nope")
    with pytest.raises(ModelNotFoundError, match="unknown model 'nope'"):
        reg.promoted("nope")
    for bad in ("", "Digits", "a/b", "../x", ".hidden", "x" * 65, 3, "名字"):
        with pytest.raises(RegistryError, match="invalid model name"):
            check_name(bad)
    for bad in ("1", "v0", "v", "va", "V1", "v01", None):
        with pytest.raises(RegistryError, match="invalid version"):
            check_version(bad)
    with pytest.raises(RegistryError, match="invalid version '2'"):
        reg.promote("digits", "2")
    with pytest.raises(RegistryError, match="invalid model name"):
        publish_vit(reg, "Bad Name")
    assert check_name("reviews_v2-zh") == "reviews_v2-zh" and check_version("v12") == "v12"


def test_publish_rejects_bad_arguments_with_clear_messages(reg, tokenizer_file):
    cfg = vit_config()
    model = build_model("vit", cfg)
    ok = dict(task="image", architecture="vit", config=cfg, labels=[str(d) for d in range(10)], metrics={},
              preprocessing=DIGIT_PREP)
    cases = [
        (dict(architecture="bert"), "unknown architecture 'bert'"),
        (dict(task="audio"), "unknown task 'audio'"),
        (dict(task="text"), "'vit' makes image models, not text models"),
        (dict(labels=["0", "1"]), "labels has 2 names but the model predicts 10 classes"),
        (dict(labels=["0"] * 10), "labels must be distinct"),
        (dict(labels=[]), "labels must be a non-empty list"),
        (dict(metrics={"accuracy": float("nan")}), "metrics\\['accuracy'\\] must be finite"),
        (dict(metrics={"accuracy": "high"}), "metrics\\['accuracy'\\] must be a number"),
        (dict(config={**cfg, "d_model": 32}), "does not match architecture 'vit'.*shape"),
        (dict(config={**cfg, "depth": 3}), "cannot build architecture 'vit'.*depth"),
        (dict(config={**cfg, "x": object()}), "config must be JSON-serialisable"),
        (dict(preprocessing={**DIGIT_PREP, "image_size": 28}), "image_size'\\] must be 8"),
        (dict(preprocessing={**DIGIT_PREP, "std": 0}), "std'\\] must be positive"),
        (dict(preprocessing={"image_size": 8}), "max_value'\\] must be a finite number"),
        (dict(files={"model.safetensors": tokenizer_file}), "reserved"),
        (dict(files={"../x.json": tokenizer_file}), "plain file name"),
        (dict(files={"extra.json": tokenizer_file.parent / "missing.json"}), "not found"),
    ]
    for change, message in cases:
        with pytest.raises(RegistryError, match=message):
            reg.publish("digits", model, **{**ok, **change})
    with pytest.raises(RegistryError, match="must be a torch.nn.Module"):
        reg.publish("digits", {"weights": 1}, **ok)
    assert not (reg.root / "digits").exists() or reg.versions("digits") == []


def test_text_models_need_a_fitting_tokenizer(reg, tokenizer_file, tmp_path):
    cfg = gpt_config(tokenizer_file)
    model = build_model("gpt_classifier", cfg)
    ok = dict(task="text", architecture="gpt_classifier", config=cfg, labels=["neg", "pos"], metrics={},
              preprocessing={"max_len": 32}, files={"tokenizer.json": tokenizer_file})
    with pytest.raises(RegistryError, match="needs its tokenizer"):
        reg.publish("reviews", model, **{**ok, "files": None})
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{}")
    with pytest.raises(RegistryError, match="not a CharTokenizer file"):
        reg.publish("reviews", model, **{**ok, "files": {"tokenizer.json": bad}})
    big = CharTokenizer.train(SENTENCES + ["一二三四五六七八九十百千万亿"]).save(tmp_path / "big" / "tokenizer.json")
    with pytest.raises(RegistryError, match="tokens but the model's vocab_size is"):
        reg.publish("reviews", model, **{**ok, "files": {"tokenizer.json": big}})
    with pytest.raises(RegistryError, match="max_len'\\]=64 exceeds the model's max_len=32"):
        reg.publish("reviews", model, **{**ok, "preprocessing": {"max_len": 64}})


def test_load_rebuilds_the_same_model_in_eval_mode(reg, tokenizer_file):
    cfg = gpt_config(tokenizer_file)
    model = build_model("gpt_classifier", cfg)
    reg.publish("reviews", model, task="text", architecture="gpt_classifier", config=cfg, labels=["neg", "pos"],
                metrics={}, preprocessing={"max_len": 32}, files={"tokenizer.json": tokenizer_file})
    reg.promote("reviews", "v1")
    loaded = reg.load("reviews")
    assert not loaded.model.training and loaded.card.version == "v1" and loaded.path == reg.root / "reviews" / "v1"
    assert loaded.tokenizer.vocab == CharTokenizer.load(tokenizer_file).vocab
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.model.state_dict().items()):
        assert torch.equal(a, b), k
    ids = torch.tensor([loaded.tokenizer.encode("这本书很好")])
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, loaded.model(input_ids=ids).logits)


def test_load_verifies_sha256_of_every_file(reg, tokenizer_file):
    publish_vit(reg)
    weights = reg.root / "digits" / "v1" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # flip one weight byte
    weights.write_bytes(bytes(data))
    with pytest.raises(RegistryError, match=f"{weights} has sha256.*changed after it was recorded"):
        reg.load("digits", "v1")
    cfg = gpt_config(tokenizer_file)
    reg.publish("reviews", build_model("gpt_classifier", cfg), task="text", architecture="gpt_classifier",
                config=cfg, labels=["neg", "pos"], metrics={}, preprocessing={"max_len": 32},
                files={"tokenizer.json": tokenizer_file})
    tok = reg.root / "reviews" / "v1" / "tokenizer.json"
    tok.write_text(tok.read_text(encoding="utf-8").replace("好", "坏"), encoding="utf-8")
    with pytest.raises(RegistryError, match="tokenizer.json has sha256"):
        reg.load("reviews", "v1")
    (reg.root / "reviews" / "v1" / "tokenizer.json").unlink()
    with pytest.raises(RegistryError, match="tokenizer.json is missing"):
        reg.load("reviews", "v1")


def test_failed_publish_leaves_no_half_version(reg, monkeypatch):
    publish_vit(reg)

    def fail_after_weights(src, dst):
        raise OSError("disk full")

    cfg = vit_config()
    monkeypatch.setattr(registry_module.shutil, "copyfile", fail_after_weights)
    with pytest.raises(OSError, match="disk full"):
        reg.publish("digits", build_model("vit", cfg), task="image", architecture="vit", config=cfg,
                    labels=[str(d) for d in range(10)], metrics={}, preprocessing=DIGIT_PREP,
                    files={"notes.txt": __file__})
    monkeypatch.undo()

    import safetensors.torch

    def half_written(model, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\x00" * 100)
        raise RuntimeError("cannot serialise this tensor")

    monkeypatch.setattr(safetensors.torch, "save_model", half_written)
    with pytest.raises(RuntimeError, match="cannot serialise"):
        publish_vit(reg)
    assert [c.version for c in reg.versions("digits")] == ["v1"]
    assert sorted(p.name for p in (reg.root / "digits").iterdir()) == [".lock", "v1"]  # no temporary folder
    monkeypatch.undo()
    assert publish_vit(reg).version == "v2"


def test_concurrent_publishes_get_distinct_versions(reg):
    publish_vit(reg)  # creates the folder; the threads then race for v2..v5
    cards, errors = [], []

    def run():
        try:
            cards.append(publish_vit(reg).version)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(cards) == ["v2", "v3", "v4", "v5"]
    assert [c.version for c in reg.versions("digits")] == ["v1", "v2", "v3", "v4", "v5"]


def test_default_root_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("BIGMODEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("BIGMODEL_REGISTRY", raising=False)
    assert ModelRegistry().root == (tmp_path / "cache" / "registry").resolve()
    monkeypatch.setenv("BIGMODEL_REGISTRY", str(tmp_path / "elsewhere"))
    assert ModelRegistry().root == (tmp_path / "elsewhere").resolve()
    assert ModelRegistry(tmp_path / "explicit").root == (tmp_path / "explicit").resolve()
    (tmp_path / "file").write_text("x")
    with pytest.raises(RegistryError, match="is not a folder"):
        ModelRegistry(tmp_path / "file")


def test_architectures_build_models_that_return_logits(tmp_path):
    configs = {
        "gpt_classifier": GPTConfig(vocab_size=20, max_len=16, d_model=16, n_heads=2, n_layers=1,
                                    num_labels=3).to_dict(),
        "encoder_classifier": EncoderConfig(vocab_size=20, max_len=16, d_model=16, n_heads=2, n_layers=1,
                                            num_labels=3).to_dict(),
        "vit": ViTConfig(d_model=16, n_heads=2, n_layers=1, num_classes=3).to_dict(),
        "resnet18_small": {"num_classes": 3, "in_channels": 1},
    }
    assert set(configs) == set(ARCHITECTURES)
    for name, cfg in configs.items():
        model = build_model(name, cfg).eval()
        if ARCHITECTURE_TASKS[name] == "text":
            ids = torch.tensor([[2, 7, 9, 3]])
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        else:
            logits = model(pixel_values=torch.from_numpy(np.zeros((2, 1, 8, 8), np.float32))).logits
        assert logits.shape[-1] == 3, name
    with pytest.raises(ValueError, match="unknown architecture 'gpt'"):
        build_model("gpt", {})
    with pytest.raises(ValueError, match="unknown resnet18_small keys: \\['depth'\\]"):
        build_model("resnet18_small", {"depth": 18})
    with pytest.raises(ValueError, match="config must be a dict"):
        build_model("vit", [])
    with pytest.raises(ValueError, match="'encoder_classifier' makes text models, not image models"):
        check_architecture("encoder_classifier", "image")
    assert check_architecture("resnet18_small", "image") == "resnet18_small"


def test_name_and_version_predicates():
    from bigmodel_course.serving.checks import is_name, is_version, version_number

    assert is_name("digits") and not is_name("Digits") and not is_name(None)
    assert is_version("v10") and not is_version("v0") and not is_version(2)
    assert version_number("v12") == 12
    with pytest.raises(RegistryError, match="invalid version 'x'"):
        version_number("x")
