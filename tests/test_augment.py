"""Text augmentation for Chinese (seeded, negation-safe, label-preserving) and seeded image copies."""

import random

import numpy as np
import pytest
import torch

from bigmodel_course.data import (
    NEGATION_WORDS,
    augment_dataset,
    augment_images,
    augment_text,
    count_negations,
    is_negation,
)
from bigmodel_course.data.augment import random_deletion, random_insertion, random_swap

REVIEWS = ["这本书不太好看，没有想象中那么好。", "房间没有窗户，服务也不怎么样，但是价格便宜。",
           "不推荐，完全没有用。", "物流很快，包装完好，宝贝和描述的一样，好评！", "质量还不错，就是有点贵。"]
NEG_CHARS = "不没无非未别"


def _negations(text: str) -> list[str]:
    """The negation characters of text, outside the non-negating words (非常, 特别, 不错, ...)."""
    for w in sorted(["非常", "特别", "不错"], key=len, reverse=True):
        text = text.replace(w, "")
    return [c for c in text if c in NEG_CHARS]


def test_is_negation():
    assert all(is_negation(w) for w in ["不", "没有", "不好", "别买", "无法", "并非", "不太好"])
    assert "没有" in NEGATION_WORDS
    assert not any(is_negation(w) for w in ["好", "推荐", "，"])


def test_intensifiers_and_positive_words_are_not_negations():
    # 非常/特别 intensify and 不错 is a positive word: deleting them never flips a review's sentiment
    assert not any(is_negation(w) for w in ["非常", "特别", "不错", "非常不错", "特别差", "未来", "无论如何"])
    assert count_negations("非常不错，特别是服务，不错不错") == 0
    assert count_negations("质量不好，非常差，没有用，别买") == 3
    assert count_negations("不错，但不如别家") == 1  # the 不 of 不如 negates; 不错 and 别家 do not
    words = ["非常", "好", "，", "特别", "满意", "，", "不错"]
    kept = [random_deletion(words, 0.9, random.Random(s)) for s in range(40)]
    assert any("非常" not in k or "不错" not in k for k in kept)  # they are free words, not locked like 不


def test_word_operations_keep_negations_in_place():
    words = ["不", "推荐", "，", "质量", "很", "差", "，", "没有", "用"]
    for seed in range(50):
        rng = random.Random(seed)
        deleted = random_deletion(words, 0.9, rng)
        assert [w for w in deleted if is_negation(w)] == ["不", "没有"]
        assert deleted[deleted.index("不") + 1] == "推荐" and deleted[-1] == "用"  # the negated words stay too
        swapped = random_swap(words, 3, rng)
        assert sorted(swapped) == sorted(words) and swapped != words
        assert {i for i, w in enumerate(swapped) if w != words[i]} <= {3, 4, 5}  # only the free clause moves
        inserted = random_insertion(words, 3, rng)
        assert len(inserted) == len(words) + 3 and [w for w in inserted if is_negation(w)] == ["不", "没有"]
        for i, w in enumerate(inserted[:-1]):
            if is_negation(w):
                assert inserted[i + 1] in ("推荐", "用")


def test_without_protection_negations_can_be_deleted():
    words = ["不", "推荐", "，", "没有", "用"]
    lost = sum("不" not in random_deletion(words, 0.5, random.Random(s), protect=False) for s in range(40))
    assert lost > 5


def test_augment_text_is_seeded_changes_text_and_keeps_negations():
    changed = 0
    for text in REVIEWS:
        for op in ("delete", "swap", "insert"):
            a = augment_text(text, random.Random(7), op, p_delete=0.3)
            b = augment_text(text, random.Random(7), op, p_delete=0.3)
            assert a == b
            assert _negations(a) == _negations(text)
            changed += a != text
    assert changed >= 12
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment_text("好", random.Random(0), "translate")
    with pytest.raises(ValueError, match="non-empty"):
        augment_text("  ", random.Random(0))
    with pytest.raises(ValueError, match="random.Random"):
        augment_text("好", 0)


def test_augment_text_keeps_whitespace_between_latin_words():
    out = augment_text("ThinkPad X200 很好用", random.Random(0), "swap", n_swap=0)
    assert out == "ThinkPad X200 很好用"


def test_augment_dataset_keeps_labels_and_originals():
    labels = [0, 0, 0, 1, 1]
    texts, ys = augment_dataset(REVIEWS, labels, copies=3, seed=1)
    assert len(texts) == 20 and texts[:5] == REVIEWS and ys == labels * 4
    assert augment_dataset(REVIEWS, labels, copies=3, seed=1) == (texts, ys)
    assert augment_dataset(REVIEWS, labels, copies=3, seed=2)[0] != texts
    assert sum(t != REVIEWS[i % 5] for i, t in enumerate(texts)) >= 8
    for i, t in enumerate(texts):
        assert _negations(t) == _negations(REVIEWS[i % 5])
    with pytest.raises(ValueError, match="5 texts but 2 labels"):
        augment_dataset(REVIEWS, [0, 1])
    with pytest.raises(ValueError, match="copies"):
        augment_dataset(REVIEWS, labels, copies=-1)


def test_augment_images_is_seeded_and_changes_pixels():
    from bigmodel_course.data import digits_augmentation

    images = np.random.default_rng(0).uniform(0, 16, size=(4, 8, 8)).astype(np.float32)
    before = torch.random.get_rng_state()
    a = augment_images(images, 3, digits_augmentation(), seed=5)
    assert torch.equal(before, torch.random.get_rng_state())  # the global generator is left alone
    b = augment_images(images, 3, digits_augmentation(), seed=5)
    assert a.shape == (12, 8, 8) and a.dtype == np.float32 and np.array_equal(a, b)
    assert not np.allclose(a[:4], images)
    ident = augment_images(images, 2, lambda x: x)
    assert np.array_equal(ident, np.concatenate([images, images]))
    with pytest.raises(ValueError, match="copies"):
        augment_images(images, 0, lambda x: x)
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        augment_images(images[0], 1, lambda x: x)
