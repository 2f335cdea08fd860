"""Issue 15 spike: can the small BERT leave the unigram plateau (held-out masked-char accuracy >= 20 %) in a fixed
CPU budget? Variant 'repo' = the package's full spec (post-LN, dropout 0.1, 15 % masking, MLM+NSP, len 128,
batch 32, lr 5e-4); variant 'mlm35' = MLM only, 35 % masking, pre-LN, no dropout, len 64, batch 64, lr 1e-3.
Both get the same wall-clock budget; evaluation as ch02_pretraining: 1,000 validation reviews as sentence pairs,
15 % masking (80/10/10), seed 0, accuracy over all selected positions."""
import sys, time, math, json
import torch
from torch.utils.data import DataLoader
from bigmodel_course.data import review_splits
from bigmodel_course.pretrained import NSPMLMDataset, corpus
from bigmodel_course.pretraining import mask_tokens
from bigmodel_course.tokenization import CharTokenizer
from bigmodel_course.training import Trainer, TrainConfig
from bigmodel_course.transformer import EncoderConfig, EncoderForPreTraining

variant, budget = sys.argv[1], float(sys.argv[2])
torch.manual_seed(0)
texts = corpus(None)
tok = CharTokenizer.train(texts, min_freq=2)
V = dict(repo=dict(max_len=128, batch=32, lr=5e-4, mask=0.15, nsp=True, norm_first=False, dropout=0.1),
         mlm35=dict(max_len=64, batch=64, lr=1e-3, mask=0.35, nsp=False, norm_first=True, dropout=0.0),
         post128=dict(max_len=128, batch=32, lr=1e-3, mask=0.35, nsp=False, norm_first=False, dropout=0.0),
         pre128=dict(max_len=128, batch=32, lr=1e-3, mask=0.35, nsp=False, norm_first=True, dropout=0.0))[variant]
cfg = EncoderConfig(vocab_size=tok.vocab_size, max_len=V["max_len"], d_model=128, n_heads=4, n_layers=4,
                    pad_token_id=tok.pad_id, dropout=V["dropout"], attn_dropout=V["dropout"], norm_first=V["norm_first"])
model = EncoderForPreTraining(cfg)
data = NSPMLMDataset(texts, tok, V["max_len"])

def collate(batch):
    b = data.collate(batch)
    if V["mask"] != 0.15:
        ids = b["input_ids"]  # already masked at 15 %: rebuild from the originals
        orig = torch.where(b["labels"] != -100, b["labels"], ids)
        b["input_ids"], b["labels"] = mask_tokens(orig, tok.mask_id, tok.vocab_size, tok.special_ids, mlm_prob=V["mask"])
    if not V["nsp"]:
        b.pop("next_sentence_label")
    return b

loader = DataLoader(data, batch_size=V["batch"], shuffle=True, collate_fn=collate)
# measure the step time to size the schedule to the budget
probe = Trainer(EncoderForPreTraining(cfg), TrainConfig(lr=V["lr"], max_steps=12, warmup_steps=1), loader)
t = time.perf_counter(); probe.train(); step_s = (time.perf_counter() - t) / 12
steps = int(budget / step_s)
print(f"{variant}: {step_s*1000:.0f} ms/step -> {steps} steps in {budget:.0f} s", flush=True)
trainer = Trainer(model, TrainConfig(lr=V["lr"], max_steps=steps, warmup_steps=max(1, steps // 20), weight_decay=0.01,
                                     log_every=50), loader)
t = time.perf_counter(); trainer.train(); train_s = time.perf_counter() - t

def evaluate(max_len):
    held = review_splits(seed=0).val_texts[:1000]
    torch.manual_seed(0)
    ds = NSPMLMDataset(held, tok, max_len)
    hits = total = 0
    model.eval()
    with torch.no_grad():
        for b in DataLoader(ds, batch_size=64, collate_fn=ds.collate):
            out = model(b["input_ids"], b["attention_mask"], b["token_type_ids"])
            sel = b["labels"] != -100
            hits += int((out.logits.argmax(-1)[sel] == b["labels"][sel]).sum()); total += int(sel.sum())
    return hits / total, total
acc, n = evaluate(V["max_len"])
acc64, n64 = evaluate(128)
print(json.dumps({"variant": variant, "steps": steps, "train_s": round(train_s), "mlm_acc_own_len": round(acc, 4),
                  "positions": n, "mlm_acc_len128": round(acc64, 4), "positions64": n64}), flush=True)
