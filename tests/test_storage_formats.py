import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import load_model
from torch.utils.data import DataLoader

from bigmodel_course.storage_formats import (
    H5BlockDataset,
    compare_weight_formats,
    read_token_blocks,
    save_pickled,
    save_safetensors,
    weights_only_refusal,
    write_token_blocks,
)
from bigmodel_course.transformer import GPT, GPTConfig


def tiny_gpt(seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=50, max_len=16, d_model=16, n_heads=2, n_layers=1))


def test_both_formats_store_the_same_weights(tmp_path):
    model = tiny_gpt()
    pkl, st = save_pickled(model, tmp_path / "a" / "m.pt"), save_safetensors(model, tmp_path / "b" / "m.safetensors")
    a, b = tiny_gpt(1), tiny_gpt(2)
    a.load_state_dict(torch.load(pkl, weights_only=True))
    load_model(b, str(st))
    for (k, v), w, x in zip(model.state_dict().items(), a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(v, w) and torch.equal(v, x), k


def test_compare_weight_formats_reports_sizes_and_times(tmp_path):
    model = tiny_gpt()
    rows = compare_weight_formats(model, tmp_path, rounds=2)
    assert [r["format"].split("：")[0] for r in rows] == ["pickle", "pickle", "safetensors"]
    n_bytes = 4 * sum(p.numel() for p in model.parameters())
    for r in rows:
        assert n_bytes <= r["bytes"] < n_bytes + 20_000 and r["load_ms"] > 0
    assert (tmp_path / "model.pt").stat().st_size == rows[0]["bytes"]
    with pytest.raises(ValueError):
        compare_weight_formats(model, tmp_path, rounds=0)


def test_weights_only_load_refuses_other_objects(tmp_path):
    message = weights_only_refusal(tmp_path / "x.pt")
    assert "UnpicklingError" in message and "weights" in message.lower()


@pytest.mark.parametrize("compression", [None, "gzip", "lzf"])
def test_token_blocks_round_trip(tmp_path, compression):
    blocks = torch.randint(0, 5000, (37, 12))
    path = write_token_blocks(tmp_path / "t.h5", blocks, chunk_rows=8, compression=compression)
    assert torch.equal(read_token_blocks(path), blocks)
    import h5py

    with h5py.File(path) as f:
        ds = f["input_ids"]
        assert ds.dtype == np.uint16 and ds.chunks == (8, 12) and ds.compression == compression


def test_large_vocabularies_are_stored_as_int32(tmp_path):
    blocks = np.array([[0, 70_000], [1, 2]])
    path = write_token_blocks(tmp_path / "t.h5", blocks)
    assert torch.equal(read_token_blocks(path), torch.from_numpy(blocks))
    with pytest.raises(ValueError, match="no dataset"):
        read_token_blocks(path, dataset="labels")


@pytest.mark.parametrize("blocks,kw", [
    (np.zeros((0, 4), dtype=int), {}), (np.zeros(4, dtype=int), {}), (np.zeros((2, 2)), {}),
    (np.zeros((2, 2), dtype=int), {"compression": "zstd"}), (np.zeros((2, 2), dtype=int), {"chunk_rows": 0}),
])
def test_write_rejects_bad_input(tmp_path, blocks, kw):
    with pytest.raises(ValueError):
        write_token_blocks(tmp_path / "t.h5", blocks, **kw)


def test_lazy_dataset_reads_rows_on_demand(tmp_path):
    blocks = torch.randint(0, 100, (10, 6))
    path = write_token_blocks(tmp_path / "t.h5", blocks, chunk_rows=4, compression="gzip")
    ds = H5BlockDataset(path)
    assert len(ds) == 10 and ds.shape == (10, 6) and ds._file is None  # nothing opened or read yet
    item = ds[3]
    assert torch.equal(item["input_ids"], blocks[3]) and torch.equal(item["labels"], blocks[3])
    assert torch.equal(ds[-1]["input_ids"], blocks[-1])
    with pytest.raises(IndexError):
        ds[10]
    clone = pickle.loads(pickle.dumps(ds))  # what a DataLoader worker receives: no open handle
    assert clone._file is None and torch.equal(clone[3]["input_ids"], blocks[3])
    batches = list(DataLoader(ds, batch_size=5))
    assert torch.equal(torch.cat([b["input_ids"] for b in batches]), blocks)
    ds.close()
    assert ds._file is None
    with pytest.raises(ValueError, match="2-D dataset"):
        H5BlockDataset(path, dataset="missing")
