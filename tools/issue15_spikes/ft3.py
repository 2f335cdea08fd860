"""BERT label-efficiency spike via the package: counts, seed 0, both inits, one lr."""
import sys, json, dataclasses
import bigmodel_course.finetuning as F
from pathlib import Path
from bigmodel_course.model_cache import HISTORY_FILE, read_json
from bigmodel_course.pretrained import Pretrained, read_model_folder
from bigmodel_course.transformer import EncoderConfig, EncoderForPreTraining
counts = tuple(int(c) for c in sys.argv[1].split(",")); lrs = tuple(float(x) for x in sys.argv[2].split(","))
inits = tuple(sys.argv[3].split(","))
le = F.LABEL_EFFICIENCY_SPECS["full"]
F.LABEL_EFFICIENCY_SPECS["full"] = dataclasses.replace(le, seeds=(0,), lrs=lrs)
_orig = F.finetune
def _logged(*a, **k):
    r = _orig(*a, **k)
    print(json.dumps({"n": len(a[2][0]), "lr": a[4].lr, "steps": r["steps"], "best": r["best_step"], "val": r["val_accuracy"], "s": round(r["seconds"], 1)}), flush=True)
    return r
F.finetune = _logged
folder = Path("bert-full-post35")  # the post-LN MLM-only 35 % BERT (copy of the cache folder)
pre = Pretrained(*read_model_folder(folder, EncoderConfig, EncoderForPreTraining)[:2], [], {}, folder)
for r in F.label_efficiency("full", kind="bert", pretrained=pre, label_counts=counts, inits=inits, tfidf=False):
    print(json.dumps({k: v for k, v in r.items()}), flush=True)
