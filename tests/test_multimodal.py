"""The CLIP-style model: loss against an independent computation, encoders, zero-shot helpers, pair data."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bigmodel_course.multimodal import (HELDOUT_TEMPLATES, NUMBER_WORDS, TRAIN_TEMPLATES, ClipConfig, ClipModel,
                                        caption_tokenizer, class_embeddings, clip_loss, compose_pairs, embed_images,
                                        embed_texts, heldout_pairs, pair_word, tokenize, top_k_images, train_clip,
                                        zero_shot_predict)


def _tiny(image_size=(8, 8), words=NUMBER_WORDS, templates=TRAIN_TEMPLATES):
    tok = caption_tokenizer(words, templates)
    cfg = ClipConfig(vocab_size=tok.vocab_size, image_size=image_size, embed_dim=16, channels=4, text_width=16,
                     text_layers=1, text_heads=2, dropout=0.0)
    return ClipModel(cfg), tok


def _reference_loss(img, txt, scale):
    """Symmetric InfoNCE written out with explicit log-sum-exp over rows and columns (NumPy, float64)."""
    s = scale * img.double().numpy() @ txt.double().numpy().T
    n = len(s)
    i2t = [np.log(np.exp(s[i]).sum()) - s[i, i] for i in range(n)]
    t2i = [np.log(np.exp(s[:, j]).sum()) - s[j, j] for j in range(n)]
    return (np.mean(i2t) + np.mean(t2i)) / 2


def test_clip_loss_matches_independent_computation():
    img = F.normalize(torch.randn(7, 5), dim=-1)
    txt = F.normalize(torch.randn(7, 5), dim=-1)
    for scale in (1.0, 14.3):
        assert clip_loss(img, txt, scale).item() == pytest.approx(_reference_loss(img, txt, scale), rel=1e-5)


def test_clip_loss_known_values():
    eye = torch.eye(6)
    assert clip_loss(eye, eye, 100.0).item() < 1e-6  # perfectly aligned and distinct: about 5 e^-100
    same = F.normalize(torch.ones(6, 4), dim=-1)
    assert clip_loss(same, same, 10.0).item() == pytest.approx(math.log(6), rel=1e-6)  # nothing to tell apart
    swapped = eye[[1, 0, 2, 3, 4, 5]]
    # two wrong partners: rows and columns 0 and 1 each cost log(e^100 + 5) ≈ 100, the other four ≈ 0
    assert clip_loss(eye, swapped, 100.0).item() == pytest.approx(200 / 6, rel=1e-6)
    g = torch.Generator().manual_seed(0)
    rand_img = F.normalize(torch.randn(64, 512, generator=g), dim=-1)
    rand_txt = F.normalize(torch.randn(64, 512, generator=g), dim=-1)
    assert clip_loss(rand_img, rand_txt, 1.0).item() == pytest.approx(math.log(64), abs=0.01)


def test_clip_loss_gradient_flows_and_bad_shapes():
    """Analytic gradients with respect to both embeddings equal finite differences (float64 gradcheck)."""
    g = torch.Generator().manual_seed(0)
    img = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    txt = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: clip_loss(a, b, torch.tensor(2.0, dtype=torch.float64)), (img, txt))
    with pytest.raises(ValueError, match="one shape"):
        clip_loss(torch.randn(4, 3), torch.randn(5, 3), 1.0)
    with pytest.raises(ValueError, match="empty"):
        clip_loss(torch.randn(0, 3), torch.randn(0, 3), 1.0)


def test_config_validation():
    with pytest.raises(ValueError, match="image_size"):
        ClipConfig(vocab_size=10, image_size=(7, 8))
    with pytest.raises(ValueError, match="embed_dim"):
        ClipConfig(vocab_size=10, embed_dim=0)
    with pytest.raises(ValueError, match="init_temperature"):
        ClipConfig(vocab_size=10, init_temperature=0.0)
    assert ClipConfig(vocab_size=10, image_size=[8, 16]).to_dict()["image_size"] == (8, 16)


def test_encoders_give_unit_vectors_and_scaled_logits():
    model, tok = _tiny()
    model.eval()
    images = torch.randn(3, 1, 8, 8)
    ids, mask = tokenize(tok, ["数字七", "这是一", "三"], model.cfg.max_text_len)
    img, txt = model.encode_image(images), model.encode_text(ids, mask)
    assert torch.allclose(img.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(txt.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert model.scale().item() == pytest.approx(1 / 0.07, rel=1e-5)
    assert torch.allclose(model(images, ids, mask), model.scale() * img @ txt.T, atol=1e-5)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert model.scale().item() == pytest.approx(100.0)  # clamped like CLIP
    with pytest.raises(ValueError, match="images must be"):
        model.encode_image(torch.randn(3, 1, 8, 16))


def test_text_embedding_ignores_padding():
    model, tok = _tiny()
    alone = embed_texts(model, tok, ["七"])
    padded = embed_texts(model, tok, ["七", "图片里的数字是七"])[:1]
    assert torch.allclose(alone, padded, atol=1e-5)


def test_caption_tokenizer_covers_held_out_templates():
    tok = caption_tokenizer(NUMBER_WORDS, TRAIN_TEMPLATES)
    chars = {c for t in HELDOUT_TEMPLATES for w in NUMBER_WORDS for c in t.format(w)}
    assert chars <= set(tok.vocab), "held-out captions should only recombine characters seen in training"
    assert not set(HELDOUT_TEMPLATES) & set(TRAIN_TEMPLATES)
    with pytest.raises(ValueError, match="templates"):
        caption_tokenizer(NUMBER_WORDS, ["没有占位符"])
    with pytest.raises(ValueError, match="class words"):
        caption_tokenizer([], TRAIN_TEMPLATES)


def test_class_embeddings_are_normalised_means_of_templates():
    model, tok = _tiny()
    words, templates = ["一", "二"], ["数字{}", "这是{}"]
    ce = class_embeddings(model, tok, words, templates)
    each = embed_texts(model, tok, ["数字一", "这是一", "数字二", "这是二"]).view(2, 2, -1).mean(dim=1)
    assert torch.allclose(ce, each / each.norm(dim=-1, keepdim=True), atol=1e-5)
    single = class_embeddings(model, tok, words, "数字{}")
    assert torch.allclose(single, embed_texts(model, tok, ["数字一", "数字二"]), atol=1e-5)


def test_zero_shot_predict_and_top_k_against_argsort():
    g = torch.Generator().manual_seed(1)
    img = F.normalize(torch.randn(20, 8, generator=g), dim=-1)
    cls = F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    sims = (img @ cls.T).numpy()
    assert zero_shot_predict(img, cls).tolist() == sims.argmax(axis=1).tolist()
    top = top_k_images(cls, img, 3)
    assert top.tolist() == np.argsort(-sims.T, axis=1)[:, :3].tolist()
    assert top_k_images(cls[0], img, 2).shape == (1, 2)
    with pytest.raises(ValueError, match="k must be"):
        top_k_images(cls, img, 21)
    with pytest.raises(ValueError, match="class embeddings"):
        zero_shot_predict(img, cls[:, :4])


def test_heldout_pairs_keep_every_digit_seen_in_both_positions():
    held = heldout_pairs((3, 7))
    assert len(held) == len(set(held)) == 20
    seen = [(a, b) for a in range(10) for b in range(10) if (a, b) not in held]
    assert {a for a, _ in seen} == {b for _, b in seen} == set(range(10))
    assert (3, 6) in held and (6, 3) in held and (3, 3) not in held
    with pytest.raises(ValueError, match="shifts"):
        heldout_pairs((3, 3))
    with pytest.raises(ValueError, match="more than 8"):
        heldout_pairs(tuple(range(9)))
    assert pair_word((3, 7)) == "三七"


def test_compose_pairs_puts_the_right_digits_side_by_side():
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 16, size=(30, 8, 8)).astype(np.float32)
    labels = np.arange(30) % 10
    pairs = [(1, 2), (9, 0)]
    x, which = compose_pairs(images, labels, pairs, 12, seed=3)
    assert x.shape == (12, 8, 16) and set(which.tolist()) <= {0, 1}
    lookup = {img.tobytes(): lab for img, lab in zip(images, labels)}
    for img, w in zip(x, which):
        assert (lookup[img[:, :8].tobytes()], lookup[img[:, 8:].tobytes()]) == pairs[w]
    again, _ = compose_pairs(images, labels, pairs, 12, seed=3)
    assert np.array_equal(x, again)
    with pytest.raises(ValueError, match="no images of digit"):
        compose_pairs(images[labels < 5], labels[labels < 5], [(1, 7)], 3)


def test_training_separates_two_patterns_and_is_seeded():
    words = ["一", "二"]
    images = torch.zeros(40, 1, 8, 8)
    images[::2, :, :4] = 2.0  # class 0: top half bright
    images[1::2, :, 4:] = 2.0  # class 1: bottom half bright
    images += 0.1 * torch.randn_like(images)
    labels = [i % 2 for i in range(40)]
    losses = []
    for _ in range(2):
        torch.manual_seed(0)
        model, tok = _tiny(words=words, templates=["{}", "数字{}"])
        losses.append(train_clip(model, tok, images, labels, words, ["{}", "数字{}"], steps=40, batch_size=8,
                                 lr=1e-2, progress=False))
    assert losses[0] == losses[1]
    assert np.mean(losses[0][-5:]) < np.mean(losses[0][:5])
    pred = zero_shot_predict(embed_images(model, images), class_embeddings(model, tok, words, ["{}"]))
    assert (pred.numpy() == np.array(labels)).mean() == 1.0
    with pytest.raises(ValueError, match="labels must index"):
        train_clip(model, tok, images, [2] * 40, words, ["{}"], steps=1, progress=False)
