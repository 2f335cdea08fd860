import math

import pytest
import torch

from bigmodel_course.pretrain_objectives import (
    IGNORE_INDEX,
    IS_NEXT,
    NOT_NEXT,
    causal_lm_blocks,
    make_nsp_pairs,
    mask_tokens,
)

PAD, UNK, CLS, SEP, MASK = range(5)
SPECIAL = [PAD, UNK, CLS, SEP, MASK]
VOCAB = 1000


def batch(n=400, length=128):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, VOCAB, (n, length), generator=g)
    ids[:, 0], ids[:, -1] = CLS, SEP
    ids[::3, 100:] = PAD  # padding at the end of every third row
    return ids


def within(observed, expected_p, n, sigmas=5):
    return abs(observed - expected_p * n) <= sigmas * math.sqrt(n * expected_p * (1 - expected_p))


def test_masking_proportions_are_15_then_80_10_10():
    ids = batch()
    masked, labels = mask_tokens(ids, MASK, VOCAB, SPECIAL, generator=torch.Generator().manual_seed(0))
    ordinary = ~torch.isin(ids, torch.tensor(SPECIAL))
    chosen = labels != IGNORE_INDEX
    n_ord, n_chosen = int(ordinary.sum()), int(chosen.sum())
    assert within(n_chosen, 0.15, n_ord)
    n_mask = int((masked[chosen] == MASK).sum())
    changed = chosen & (masked != ids) & (masked != MASK)
    kept = chosen & (masked == ids)
    p_same = 1 / (VOCAB - len(SPECIAL))  # a random replacement can draw the original token
    assert within(n_mask, 0.8, n_chosen)
    assert within(int(changed.sum()), 0.1 * (1 - p_same), n_chosen)
    assert within(int(kept.sum()), 0.1 + 0.1 * p_same, n_chosen)
    # labels hold the original token exactly where chosen
    assert torch.equal(labels[chosen], ids[chosen])


def test_special_and_padding_tokens_are_never_masked_or_drawn():
    ids = batch()
    masked, labels = mask_tokens(ids, MASK, VOCAB, SPECIAL, mlm_prob=0.5, generator=torch.Generator().manual_seed(2))
    special = torch.isin(ids, torch.tensor(SPECIAL))
    assert torch.all(labels[special] == IGNORE_INDEX)
    assert torch.equal(masked[special], ids[special])
    replaced = (labels != IGNORE_INDEX) & (masked != MASK)
    assert not torch.isin(masked[replaced], torch.tensor(SPECIAL)).any()


def test_masking_is_reproducible_with_a_generator_and_checks_input():
    ids = batch(10, 16)
    a = mask_tokens(ids, MASK, VOCAB, SPECIAL, generator=torch.Generator().manual_seed(5))
    b = mask_tokens(ids, MASK, VOCAB, SPECIAL, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="torch.long"):
        mask_tokens(ids.float(), MASK, VOCAB, SPECIAL)
    with pytest.raises(ValueError, match="mlm_prob must be in"):
        mask_tokens(ids, MASK, VOCAB, SPECIAL, mlm_prob=1.5)
    with pytest.raises(ValueError, match="mask_id 7 must be one of the special ids"):
        mask_tokens(ids, 7, VOCAB, SPECIAL)


def test_nsp_labels_are_exact_and_balanced():
    docs = [[f"d{d}s{s}" for s in range(30)] for d in range(40)]
    pairs = make_nsp_pairs(docs, seed=0)
    assert len(pairs) == 40 * 29
    for p in pairs:
        da, sa = map(int, p.a[1:].split("s"))
        db, sb = map(int, p.b[1:].split("s"))
        if p.label == IS_NEXT:
            assert (db, sb) == (da, sa + 1)
        else:
            assert p.label == NOT_NEXT and db != da
    n_next = sum(p.label == IS_NEXT for p in pairs)
    assert within(n_next, 0.5, len(pairs))
    assert make_nsp_pairs(docs, seed=0) == pairs
    with pytest.raises(ValueError, match="at least 2 non-empty documents"):
        make_nsp_pairs([["only one"]])


def test_causal_lm_blocks_cut_a_stream():
    blocks = causal_lm_blocks(list(range(10)), 4)
    assert blocks.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    with pytest.raises(ValueError, match="only 2 tokens, fewer than one block of 4"):
        causal_lm_blocks([1, 2], 4)
    with pytest.raises(ValueError, match=r"one flat \(1-D\) sequence"):
        causal_lm_blocks(torch.zeros(2, 3, dtype=torch.long), 2)
