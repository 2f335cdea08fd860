"""Issue 15 spike: label-efficiency runs from a spike GPT checkpoint. usage: ft.py CKPT COUNTS SEEDS INITS LRS"""
import sys, json, time, dataclasses
import torch
import bigmodel_course.finetuning as F
from bigmodel_course.pretrained import Pretrained, corpus
from bigmodel_course.tokenization import CharTokenizer
from bigmodel_course.transformer import GPT, GPTConfig

ckpt, counts, seeds, inits, lrs = sys.argv[1:6]
counts = tuple(None if c == "all" else int(c) for c in counts.split(","))
seeds = tuple(int(s) for s in seeds.split(","))
lrs = tuple(float(x) for x in lrs.split(","))
extra = json.loads(sys.argv[6]) if len(sys.argv) > 6 else {}
tok = CharTokenizer.train(corpus(None), min_freq=2)
d = torch.load(ckpt, weights_only=True)
model = GPT(GPTConfig.from_dict(d["cfg"])); model.load_state_dict(d["state"])
pre = Pretrained(model, tok, [], {}, None)
le = F.LABEL_EFFICIENCY_SPECS["full"]
F.LABEL_EFFICIENCY_SPECS["full"] = dataclasses.replace(le, seeds=seeds, lrs=lrs,
                                                        finetune=dataclasses.replace(le.finetune, **extra))
_orig = F.finetune
def _logged(*a, **k):
    r = _orig(*a, **k)
    print(json.dumps({"n": len(a[2][0]), "lr": a[4].lr, "steps": r["steps"], "best": r["best_step"],
                      "val": r["val_accuracy"], "s": round(r["seconds"], 1)}), flush=True)
    return r
F.finetune = _logged
t = time.perf_counter()
runs = F.label_efficiency("full", pretrained=pre, label_counts=counts, inits=tuple(inits.split(",")))
for r in runs:
    print(json.dumps(r), flush=True)
for row in F.summarize_label_efficiency(runs):
    print(json.dumps({k: (round(v["mean"] * 100, 2), round(v["sd"] * 100, 2)) if isinstance(v, dict) else v
                      for k, v in row.items()}))
print("seconds", round(time.perf_counter() - t))
