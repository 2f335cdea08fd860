"""Sentence embeddings against transformers' BertModel + manual pooling, and cosine top-k retrieval."""

import numpy as np
import pytest
import torch
from sklearn.metrics.pairwise import cosine_similarity
from transformers import AutoModel, AutoTokenizer

from bigmodel_course.retrieval import DEFAULT_MAX_LENGTH, SentenceEncoder, minilm_path, top_k

TEXTS = [
    "How do I install the course package?",
    "Run make test to execute every test.",
    "The weather is sunny today, with a light breeze from the west.",
    "Hi",
]


@pytest.fixture(scope="module")
def encoder():
    return SentenceEncoder.from_pretrained()


@pytest.fixture(scope="module")
def reference():
    path = minilm_path()
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


def manual_embeddings(reference, texts, max_length=DEFAULT_MAX_LENGTH):
    """transformers BertModel hidden states, averaged over the attention mask by hand, then L2-normalised."""
    tok, model = reference
    batch = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    mean = (hidden * mask).sum(1) / mask.sum(1)
    return mean / mean.norm(dim=-1, keepdim=True)


def test_minilm_path_holds_a_checkpoint():
    path = minilm_path()
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def test_embeddings_equal_automodel_with_mean_pooling(encoder, reference):
    emb = encoder.encode(TEXTS)
    assert emb.shape == (len(TEXTS), 384) == (len(TEXTS), encoder.dim)
    assert emb.dtype == torch.float32 and emb.device.type == "cpu"
    torch.testing.assert_close(emb, manual_embeddings(reference, TEXTS), atol=1e-5, rtol=0)


def test_embeddings_match_sentence_transformers(encoder):
    """The checkpoint's own pipeline (modules.json: mean pooling, Normalize; max_seq_length 256), offline."""
    from sentence_transformers import SentenceTransformer  # a pinned dev dependency: missing means failing

    model = SentenceTransformer(str(minilm_path()), device="cpu", local_files_only=True)
    assert model.max_seq_length == DEFAULT_MAX_LENGTH
    texts = [*TEXTS, " ".join(["retrieval"] * 400)]  # the last one is cut at 256 tokens by both
    expected = model.encode(texts, convert_to_tensor=True)
    torch.testing.assert_close(encoder.encode(texts), expected.cpu().float(), atol=1e-5, rtol=0)


def test_embeddings_have_unit_norm(encoder):
    norms = encoder.encode(TEXTS).norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones(len(TEXTS)), atol=1e-6, rtol=0)


def test_batch_size_and_padding_do_not_change_embeddings(encoder):
    together = encoder.encode(TEXTS, batch_size=64)
    one_by_one = encoder.encode(TEXTS, batch_size=1)
    torch.testing.assert_close(together, one_by_one, atol=1e-5, rtol=0)


def test_long_texts_are_cut_at_max_length(encoder, reference):
    long = " ".join(["retrieval"] * 400)
    emb = encoder.encode([long, long + " followed by a completely different ending about cooking pasta"])
    torch.testing.assert_close(emb[0], emb[1], atol=1e-6, rtol=0)
    short = SentenceEncoder(encoder.encoder, encoder.tokenizer, max_length=16)
    torch.testing.assert_close(short.encode(TEXTS), manual_embeddings(reference, TEXTS, max_length=16),
                               atol=1e-5, rtol=0)


def test_a_paraphrase_ranks_above_an_unrelated_sentence(encoder):
    query = encoder.encode(["How can I set up the software on my computer?"])[0]
    corpus = encoder.encode(["The weather will be rainy all weekend.",
                             "What are the steps to install this program on a laptop?",
                             "My cat likes to sleep on the sofa."])
    scores, idx = top_k(query, corpus, k=3)
    assert idx.tolist()[0] == 1
    assert scores[0] > scores[1] + 0.2


@pytest.mark.parametrize("texts, message", [
    ([], "texts is empty"),
    ([""], "text 0 is empty"),
    (["fine", "   "], "text 1 is empty"),
    ("a single string", "list of strings"),
    (["fine", 3], "text 1 must be a str"),
])
def test_encode_rejects_bad_texts(encoder, texts, message):
    with pytest.raises(ValueError, match=message):
        encoder.encode(texts)


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True])
def test_encode_rejects_bad_batch_size(encoder, batch_size):
    with pytest.raises(ValueError, match="batch_size"):
        encoder.encode(TEXTS, batch_size=batch_size)


def test_constructor_rejects_bad_arguments(encoder, tmp_path):
    with pytest.raises(ValueError, match="config.json is missing"):
        SentenceEncoder.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="max_length"):
        SentenceEncoder(encoder.encoder, encoder.tokenizer, max_length=513)
    with pytest.raises(ValueError, match="TransformerEncoder"):
        SentenceEncoder(torch.nn.Linear(2, 2), encoder.tokenizer)


def test_top_k_matches_sklearn_cosine_ranking():
    gen = torch.Generator().manual_seed(0)
    queries, corpus = torch.randn(5, 8, generator=gen), torch.randn(20, 8, generator=gen) * 3
    scores, idx = top_k(queries, corpus, k=4)
    sims = cosine_similarity(queries.numpy(), corpus.numpy())
    expected_idx = np.argsort(-sims, axis=1)[:, :4]
    assert idx.tolist() == expected_idx.tolist()
    np.testing.assert_allclose(scores.numpy(), np.take_along_axis(sims, expected_idx, axis=1), atol=1e-6)


def test_top_k_by_hand():
    corpus = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0], [1.0, 1.0]])
    scores, idx = top_k(torch.tensor([3.0, 0.0]), corpus, k=2)
    assert idx.tolist() == [0, 3]
    torch.testing.assert_close(scores, torch.tensor([1.0, 2 ** -0.5]))
    scores, idx = top_k(torch.tensor([3.0, 0.0]), corpus, k=4)
    assert idx.tolist() == [0, 3, 1, 2] and scores[-1].item() == pytest.approx(-1.0)


@pytest.mark.parametrize("k", [0, 5, -1, 1.0, True])
def test_top_k_rejects_k_out_of_range(k):
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 4\]"):
        top_k(torch.ones(2), torch.ones(4, 2), k)


@pytest.mark.parametrize("query, corpus, message", [
    (torch.ones(3), torch.ones(4, 2), "width 3 != corpus_emb width 2"),
    (torch.ones(2), torch.ones(0, 2), "corpus_emb is empty"),
    (torch.ones(2), torch.ones(2), "corpus_emb must have 2 dimensions"),
    (torch.ones(1, 1, 2), torch.ones(4, 2), "query_emb must have 1 or 2 dimensions"),
    (torch.zeros(2), torch.ones(4, 2), "query_emb contains a zero vector"),
    (torch.ones(2), torch.tensor([[1.0, float("nan")]]), "corpus_emb contains NaN"),
    (torch.ones(2, dtype=torch.long), torch.ones(4, 2), "query_emb must be a floating-point tensor"),
    ([1.0, 0.0], torch.ones(4, 2), "query_emb must be a floating-point tensor"),
])
def test_top_k_rejects_bad_embeddings(query, corpus, message):
    with pytest.raises(ValueError, match=message):
        top_k(query, corpus, 1)
