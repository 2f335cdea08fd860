import math

import pytest
import torch
from torch.utils.data import DataLoader

from bigmodel_course.classic import (
    MLPClassifier,
    NegativeSampler,
    RNNClassifier,
    SkipGram,
    SkipGramCollator,
    SmallCNN,
    accuracy_metrics,
    build_vocab,
    nearest_neighbours,
    skipgram_pairs,
    subsample_frequent,
)


def _fit(model, batch, steps=60, lr=1e-2):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    first = model(**batch).loss.item()
    for _ in range(steps):
        opt.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        opt.step()
    return first, model(**batch).loss.item()


@pytest.mark.parametrize("cls", [MLPClassifier, SmallCNN])
def test_image_models_shapes_and_loss_decreases(cls):
    torch.manual_seed(0)
    model = cls(num_classes=10)
    x, y = torch.rand(32, 8, 8), torch.randint(0, 10, (32,))
    out = model(pixel_values=x)
    assert out.logits.shape == (32, 10) and out.loss is None
    assert model(pixel_values=x.reshape(32, 64)).logits.shape == (32, 10)  # flattened input also works
    first, last = _fit(model.eval(), {"pixel_values": x, "labels": y})
    assert last < 0.5 * first


def test_image_models_reject_bad_input():
    with pytest.raises(ValueError, match="64 values"):
        MLPClassifier()(pixel_values=torch.rand(4, 7, 7))
    with pytest.raises(ValueError, match="8×8"):
        SmallCNN()(pixel_values=torch.rand(4, 1, 9, 9))
    with pytest.raises(ValueError, match="float"):
        SmallCNN()(pixel_values=torch.zeros(4, 64, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        MLPClassifier()(pixel_values=torch.rand(4, 64), labels=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="divisible"):
        SmallCNN(channels=(4, 4, 4, 4))


def test_cnn_matches_manual_conv_pool():
    torch.manual_seed(0)
    model = SmallCNN(channels=(3,)).eval()
    x = torch.rand(2, 1, 8, 8)
    conv = model.features[0]
    h = torch.nn.functional.max_pool2d(torch.relu(torch.nn.functional.conv2d(x, conv.weight, conv.bias, padding=1)), 2)
    assert torch.allclose(model(pixel_values=x).logits, model.classifier(h.flatten(1)), atol=1e-6)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_rnn_padding_does_not_change_real_tokens(cell):
    torch.manual_seed(0)
    model = RNNClassifier(vocab_size=20, d=8, hidden=12, num_classes=3, cell=cell).eval()
    a, b = torch.tensor([5, 6, 7]), torch.tensor([8, 9, 10, 11, 12])
    alone_a = model(input_ids=a[None])
    padded = torch.stack([torch.cat([a, torch.zeros(2, dtype=torch.long)]), b])
    mask = (padded != 0).long()
    both = model(input_ids=padded, attention_mask=mask)
    assert torch.allclose(both.logits[0], alone_a.logits[0], atol=1e-6)
    assert torch.allclose(both.last_hidden_state[0, :3], alone_a.last_hidden_state[0], atol=1e-6)
    assert torch.all(both.last_hidden_state[0, 3:] == 0)
    # the pooled state is the output at the last real token
    assert torch.allclose(both.pooled[0], both.last_hidden_state[0, 2], atol=1e-6)
    assert torch.allclose(both.logits[1], model(input_ids=b[None]).logits[0], atol=1e-6)


def test_rnn_matches_plain_lstm_and_learns():
    torch.manual_seed(0)
    model = RNNClassifier(vocab_size=10, d=6, hidden=8, num_classes=2, dropout=0.0).eval()
    ids = torch.randint(1, 10, (4, 7))
    _, (h, _) = model.rnn(model.embed(ids))
    assert torch.allclose(model(input_ids=ids).pooled, h[-1], atol=1e-6)
    labels = (ids[:, 0] > 5).long()
    first, last = _fit(model, {"input_ids": ids, "labels": labels}, steps=40)
    assert last < 0.5 * first
    bi = RNNClassifier(vocab_size=10, d=6, hidden=8, bidirectional=True, cell="gru").eval()
    assert bi(input_ids=ids).logits.shape == (4, 2) and bi(input_ids=ids).pooled.shape == (4, 16)


def test_rnn_rejects_bad_input():
    model = RNNClassifier(vocab_size=10, d=4, hidden=4)
    with pytest.raises(ValueError, match="unknown cell"):
        RNNClassifier(vocab_size=10, cell="transformer")
    with pytest.raises(ValueError, match="right"):
        model(input_ids=torch.tensor([[0, 3, 4]]), attention_mask=torch.tensor([[0, 1, 1]]))
    with pytest.raises(ValueError, match="at least one real token"):
        model(input_ids=torch.tensor([[0, 0], [1, 2]]))
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        model(input_ids=torch.tensor([[1, 12]]))
    with pytest.raises(ValueError, match="integer"):
        model(input_ids=torch.tensor([[1.0, 2.0]]))


def test_skipgram_pairs_exact():
    pairs = skipgram_pairs([[1, 2, 3], [4], [5, 6]], window=1)
    assert pairs.tolist() == [[1, 2], [2, 1], [2, 3], [3, 2], [5, 6], [6, 5]]
    pairs2 = skipgram_pairs([[1, 2, 3, 4]], window=2)
    assert pairs2.tolist() == [[1, 2], [1, 3], [2, 1], [2, 3], [2, 4], [3, 1], [3, 2], [3, 4], [4, 2], [4, 3]]
    with pytest.raises(ValueError, match="window"):
        skipgram_pairs([[1, 2]], window=0)
    with pytest.raises(ValueError, match="no pairs"):
        skipgram_pairs([[1], []])
    with pytest.raises(ValueError, match="list of int"):
        skipgram_pairs(["我爱"])


def test_negative_sampler_follows_count_power():
    counts = [1000, 100, 10, 1]
    sampler = NegativeSampler(counts)
    expected = torch.tensor([c**0.75 for c in counts]) / sum(c**0.75 for c in counts)
    assert torch.allclose(sampler.probs, expected)
    n = 200_000
    draws = sampler.sample((n,), torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=4).float() / n
    sd = (expected * (1 - expected) / n).sqrt()
    assert torch.all((freq - expected).abs() < 5 * sd + 1e-9), (freq, expected)
    assert sampler.sample((3, 5)).shape == (3, 5)
    with pytest.raises(ValueError, match="non-negative"):
        NegativeSampler([1, -1])
    with pytest.raises(ValueError, match="non-empty"):
        NegativeSampler([])


def test_skipgram_loss_reference_and_learning():
    torch.manual_seed(0)
    model = SkipGram(vocab_size=6, dim=4)
    torch.nn.init.normal_(model.out_embed.weight)
    c, o, neg = torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([[4, 5], [5, 0]])
    v, u = model.in_embed.weight, model.out_embed.weight
    ref = 0.0
    for i in range(2):
        ref += -math.log(torch.sigmoid(u[o[i]] @ v[c[i]]).item())
        ref += -sum(math.log(torch.sigmoid(-(u[k] @ v[c[i]])).item()) for k in neg[i])
    assert model.loss(c, o, neg).item() == pytest.approx(ref / 2, rel=1e-5)
    assert model(center=c, context=o, negatives=neg).loss.item() == pytest.approx(ref / 2, rel=1e-5)

    # words 0 and 1 share their contexts (4 _ 5), as do 2 and 3 (6 _ 7): their vectors end up closest
    torch.manual_seed(0)
    model = SkipGram(vocab_size=8, dim=8)
    pairs = skipgram_pairs([[4, 0, 5], [4, 1, 5], [6, 2, 7], [6, 3, 7]] * 20, window=1)
    collate = SkipGramCollator(NegativeSampler([1] * 8), k=3, seed=0)
    loader = DataLoader(list(pairs), batch_size=len(pairs), shuffle=True, collate_fn=collate)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    losses = []
    for _ in range(100):
        for batch in loader:
            opt.zero_grad()
            loss = model(**batch).loss
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert nearest_neighbours(model.embeddings, 0, 1)[0][0] == 1
    assert nearest_neighbours(model.embeddings, 2, 1)[0][0] == 3


def test_skipgram_collator_accepts_rows_or_a_batch_tensor():
    pairs = torch.tensor([[0, 1], [2, 3], [1, 0]])
    batch = SkipGramCollator(NegativeSampler([1, 1, 1, 1]), k=4, seed=0)(pairs)
    assert batch["center"].tolist() == [0, 2, 1] and batch["context"].tolist() == [1, 3, 0]
    assert batch["negatives"].shape == (3, 4)
    again = SkipGramCollator(NegativeSampler([1, 1, 1, 1]), k=4, seed=0)(list(pairs))
    assert torch.equal(again["negatives"], batch["negatives"])  # seeded
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        SkipGramCollator(NegativeSampler([1, 1]), k=1)(torch.zeros(3, 3, dtype=torch.long))


def test_skipgram_rejects_bad_ids():
    model = SkipGram(vocab_size=5, dim=3)
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        model.loss(torch.tensor([7]), torch.tensor([1]), torch.tensor([[2]]))
    with pytest.raises(ValueError, match="integer"):
        model.loss(torch.tensor([1.0]), torch.tensor([1]), torch.tensor([[2]]))
    with pytest.raises(ValueError, match=r"\(B, k\)"):
        model.loss(torch.tensor([1, 2]), torch.tensor([1, 3]), torch.tensor([2, 3]))


def test_nearest_neighbours_exact():
    emb = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0], [2.0, 0.0]])
    result = nearest_neighbours(emb, 0, k=3)
    assert [i for i, _ in result] == [4, 1, 2]
    assert result[0][1] == pytest.approx(1.0)
    assert result[1][1] == pytest.approx(0.9 / math.sqrt(0.82))
    assert result[2][1] == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="idx"):
        nearest_neighbours(emb, 5)
    with pytest.raises(ValueError, match="more than"):
        nearest_neighbours(emb, 0, k=5)
    with pytest.raises(ValueError, match="2-D float"):
        nearest_neighbours(emb[0], 0)


def test_build_vocab_and_subsampling():
    words, counts = build_vocab([["a", "b", "a"], ["c", "a", "b"], ["d"]], min_count=2)
    assert words == ["a", "b"] and counts == [3, 2]
    assert build_vocab([["b", "a"]])[0] == ["a", "b"]  # ties alphabetical
    with pytest.raises(ValueError, match="list of words"):
        build_vocab(["ab"])
    with pytest.raises(ValueError, match="min_count"):
        build_vocab([["a"]], min_count=2)
    # word 0 is 99 % of the corpus: most of its occurrences are dropped, the rare word 1 always kept
    sents = [[0] * 99 + [1]] * 100
    kept = subsample_frequent(sents, [9900, 100], t=1e-2, seed=0)
    n0 = sum(s.count(0) for s in kept)
    assert sum(s.count(1) for s in kept) == 100
    expected = 9900 * math.sqrt(1e-2 / 0.99)
    assert abs(n0 - expected) < 5 * math.sqrt(expected)
    assert subsample_frequent(sents, [9900, 100], t=1e-2, seed=0) == kept  # seeded


def test_accuracy_metrics():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0], [0.0, 1.0]])
    assert accuracy_metrics(logits, torch.tensor([0, 1, 1, 1]))["accuracy"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="labels"):
        accuracy_metrics(logits, None)
