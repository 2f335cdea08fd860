"""Issue 15 spike: GPT pre-training with a larger batch/lr, no dropout, in a fixed budget; checkpoints at 0, 1/4,
1/2, 1 of the steps; held-out perplexity as ch02 cell 23."""
import sys, time, math, json
import torch
from torch.utils.data import DataLoader
from bigmodel_course.data import LMBlockDataset, review_splits
from bigmodel_course.pretrained import corpus, gpt_stream
from bigmodel_course.pretraining import causal_lm_blocks
from bigmodel_course.tokenization import CharTokenizer
from bigmodel_course.training import Trainer, TrainConfig
from bigmodel_course.transformer import GPT, GPTConfig

steps, batch, lr, T, drop = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
out = sys.argv[6]
torch.manual_seed(0)
texts = corpus(None)
tok = CharTokenizer.train(texts, min_freq=2)
cfg = GPTConfig(vocab_size=tok.vocab_size, max_len=T, d_model=128, n_heads=4, n_layers=4, pad_token_id=tok.pad_id,
                dropout=drop, attn_dropout=drop)
model = GPT(cfg)
import os
train_texts = review_splits(seed=0).train_texts if os.environ.get("REVIEWS_ONLY") else texts
data = LMBlockDataset(gpt_stream(train_texts, tok), T)
print("blocks", len(data), flush=True)
loader = DataLoader(data, batch_size=batch, shuffle=True)
trainer = Trainer(model, TrainConfig(lr=lr, max_steps=steps, warmup_steps=max(1, steps // 20), weight_decay=0.01,
                                     log_every=50, progress=False), loader)
held = review_splits(seed=0).val_texts[:1000]
blocks = causal_lm_blocks(gpt_stream(held, tok), 128)
def ppl():
    model.eval()
    with torch.no_grad():
        l = sum(model(b, labels=b).loss.item() for b in blocks.split(32)) / math.ceil(len(blocks) / 32)
    model.train()
    return math.exp(l)
torch.save({"cfg": cfg.to_dict(), "state": model.state_dict(), "tok": tok.to_dict() if hasattr(tok, "to_dict") else None}, f"{out}_0.pt")
t0 = time.perf_counter()
for q in (1, 2, 4):
    trainer.train(steps=steps * q // 4 - trainer.step)
    torch.save({"cfg": cfg.to_dict(), "state": model.state_dict()}, f"{out}_{q}.pt")
    print(json.dumps({"quarter": q, "step": trainer.step, "s": round(time.perf_counter() - t0), "ppl": round(ppl(), 1),
                      "loss": trainer.history[-1]["train_loss"]}), flush=True)
    if q == 1 and trainer.step: pass
