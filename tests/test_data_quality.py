"""Data quality helpers: duplicates, conflicts, MinHash/LSH near-duplicates, leakage, out-of-fold label issues."""

import random

import numpy as np
import pytest

from bigmodel_course.data import (
    char_shingles,
    char_tfidf_logreg,
    conflicting_labels,
    cross_near_duplicates,
    deduplicate,
    exact_duplicates,
    exact_jaccard_pairs,
    fit_and_score,
    jaccard,
    label_issues,
    load_raw_reviews,
    load_reviews,
    minhash_signatures,
    near_duplicate_groups,
    near_duplicates,
    out_of_fold_probabilities,
    verbatim_overlap,
)

TEXTS = ["好评", "差评", "好评", "一般", "差评", "好评", "还行"]
LABELS = [1, 0, 1, 1, 1, 1, 0]


def test_exact_duplicates_counts_and_order():
    assert exact_duplicates(TEXTS) == {"好评": 3, "差评": 2}
    assert list(exact_duplicates(TEXTS)) == ["好评", "差评"]
    assert exact_duplicates(["a", "b"]) == {}
    with pytest.raises(ValueError, match="single str"):
        exact_duplicates("好评")
    with pytest.raises(ValueError, match=r"texts\[1\]"):
        exact_duplicates(["a", 3])


def test_conflicting_labels_and_deduplicate():
    assert conflicting_labels(TEXTS, LABELS) == {"差评": [0, 1]}
    texts, labels = deduplicate(TEXTS, LABELS)
    assert texts == ["好评", "一般", "还行"] and labels == [1, 1, 0]
    with pytest.raises(ValueError, match="7 texts but 2 labels"):
        deduplicate(TEXTS, [0, 1])
    with pytest.raises(ValueError, match="must be an int"):
        conflicting_labels(["a"], ["pos"])


def test_raw_reviews_deduplicate_to_the_cleaned_corpus():
    raw_texts, raw_labels = load_raw_reviews()
    assert len(raw_texts) == 16_548 + 18_575 and sum(raw_labels) == 16_548
    texts, labels, stats = load_reviews()
    assert deduplicate(raw_texts, raw_labels) == (texts, labels)
    assert len(conflicting_labels(raw_texts, raw_labels)) == stats.conflicting == 47


def test_verbatim_overlap():
    assert verbatim_overlap(["a", "b", "c"], ["c", "d", "a", "a"]) == [0, 2, 3]
    assert verbatim_overlap([], ["x"]) == []


def test_shingles_and_exact_jaccard():
    assert char_shingles("质量很好", 2) == {"质量", "量很", "很好"}
    assert char_shingles("好", 3) == {"好"}
    assert jaccard({1, 2, 3}, {2, 3, 4}) == pytest.approx(0.5)
    assert jaccard(set(), set()) == 0.0
    with pytest.raises(ValueError, match="non-empty"):
        char_shingles("", 3)
    with pytest.raises(ValueError, match="positive int"):
        char_shingles("abc", 0)
    with pytest.raises(ValueError, match="two sets"):
        jaccard([1], {1})


def _pair_with_jaccard(n_common: int, n_each: int) -> tuple[str, str]:
    """Two texts of distinct characters whose 1-shingle Jaccard is n_common / (n_common + 2 n_each)."""
    chars = [chr(0x4E00 + i) for i in range(n_common + 2 * n_each)]
    common, a, b = chars[:n_common], chars[n_common:n_common + n_each], chars[n_common + n_each:]
    return "".join(common + a), "".join(common + b)


@pytest.mark.parametrize("n_common,n_each", [(80, 10), (50, 25), (20, 40)])
def test_minhash_estimate_is_close_to_exact_jaccard(n_common, n_each):
    a, b = _pair_with_jaccard(n_common, n_each)
    exact = jaccard(char_shingles(a, 1), char_shingles(b, 1))
    assert exact == pytest.approx(n_common / (n_common + 2 * n_each))
    est = minhash_signatures([a, b], k=1, num_perm=512, seed=3)
    # standard error of the MinHash estimate is sqrt(J (1 - J) / num_perm) <= 0.022; allow 4 of them
    assert abs(est[0].jaccard(est[1]) - exact) < 0.09


def _random_text(rng: random.Random, n: int) -> str:
    return "".join(chr(0x4E00 + rng.randrange(3000)) for _ in range(n))


def test_lsh_finds_a_planted_near_duplicate_and_not_unrelated_texts():
    rng = random.Random(0)
    texts = [_random_text(rng, 60) for _ in range(200)]
    planted = texts[17][:58] + "！！"  # the same review with a different ending
    texts.append(planted)
    pairs = near_duplicates(texts, threshold=0.8, k=3)
    true = [p for p in pairs if p.exact >= 0.8]
    assert [(p.i, p.j) for p in true] == [(17, 200)]
    assert abs(true[0].estimate - true[0].exact) < 0.15
    # the brute-force reference agrees
    assert [(i, j) for i, j, _ in exact_jaccard_pairs(texts, 0.8, k=3)] == [(17, 200)]
    assert near_duplicate_groups(len(texts), true) == [[17, 200]]


def test_cross_near_duplicates_between_splits():
    rng = random.Random(1)
    train = [_random_text(rng, 50) for _ in range(100)]
    test = [_random_text(rng, 50) for _ in range(20)] + [train[5][:49] + "。"]
    found = cross_near_duplicates(train, test, threshold=0.8)
    assert list(found) == [20] and found[20][0] == 5 and found[20][1] >= 0.8


def test_exact_jaccard_pairs_against_python_reference():
    rng = random.Random(2)
    base = [_random_text(rng, 12) for _ in range(10)]
    texts = base + [t[:10] + "好的" for t in base[:5]] + [t[2:] for t in base[5:]]
    ref = sorted((i, j) for i in range(len(texts)) for j in range(i + 1, len(texts))
                 if jaccard(char_shingles(texts[i], 2), char_shingles(texts[j], 2)) >= 0.5)
    got = sorted((i, j) for i, j, _ in exact_jaccard_pairs(texts, 0.5, k=2, chunk=4))
    assert got == ref and len(ref) >= 5
    with pytest.raises(ValueError, match="threshold"):
        exact_jaccard_pairs(texts, 1.5)


def test_near_duplicate_groups_merge_chains():
    assert near_duplicate_groups(6, [(0, 1), (1, 2), (4, 5)]) == [[0, 1, 2], [4, 5]]
    with pytest.raises(ValueError, match="out of range"):
        near_duplicate_groups(3, [(0, 3)])


def _separable_texts(n: int, seed: int = 0) -> tuple[list[str], list[int]]:
    """Texts whose label is obvious from their characters (好/棒 vs 差/烂), padded with neutral characters."""
    rng = random.Random(seed)
    neutral = "的了是在我有这个们中来上大为和国地到以说时要就出会可也你对生能而子那得于着下自之年过发后作里"
    texts, labels = [], []
    for i in range(n):
        y = i % 2
        words = ["好", "棒", "赞"] if y else ["差", "烂", "糟"]
        body = [rng.choice(neutral) for _ in range(6)] + [rng.choice(words) for _ in range(4)]
        rng.shuffle(body)
        texts.append("".join(body))
        labels.append(y)
    return texts, labels


def test_label_issues_flags_planted_flipped_labels():
    texts, labels = _separable_texts(400)
    flipped = [3, 50, 123, 200, 333]
    noisy = list(labels)
    for i in flipped:
        noisy[i] = 1 - noisy[i]
    probs = out_of_fold_probabilities(texts, noisy, folds=5, seed=0)
    assert probs.shape == (400, 2) and np.allclose(probs.sum(1), 1)
    issues = label_issues(noisy, probs)
    assert set(flipped) <= set(issues.tolist())
    assert len(issues) <= 15  # a handful of false alarms at most
    assert set(issues[:5].tolist()) == set(flipped)  # the planted ones are the most suspicious


def test_label_issues_rejects_bad_input():
    with pytest.raises(ValueError, match="need labels"):
        label_issues([0, 1], np.ones((3, 2)) / 2)
    with pytest.raises(ValueError, match="sum to 1"):
        label_issues([0, 1], np.ones((2, 2)))
    with pytest.raises(ValueError, match="ints in"):
        label_issues([0, 2], np.ones((2, 2)) / 2)
    with pytest.raises(ValueError, match="folds"):
        out_of_fold_probabilities(["a", "b"], [0, 1], folds=1)


def test_fit_and_score_and_baseline_model():
    texts, labels = _separable_texts(200, seed=1)
    test_texts, test_labels = _separable_texts(60, seed=2)
    acc, correct = fit_and_score(texts, labels, test_texts, test_labels)
    assert acc == correct.mean() and acc > 0.95
    # a reference: the same pipeline built by hand with sklearn
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    vec = TfidfVectorizer(analyzer="char", ngram_range=(1, 3))
    clf = LogisticRegression(solver="liblinear").fit(vec.fit_transform(texts), labels)
    assert (clf.predict(vec.transform(test_texts)) == np.array(test_labels)).mean() == acc
    with pytest.raises(ValueError, match="ngram_range"):
        char_tfidf_logreg((3, 1))
    with pytest.raises(ValueError, match="non-empty"):
        fit_and_score([], [], test_texts, test_labels)
