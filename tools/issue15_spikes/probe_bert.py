"""Linear probes on frozen BERT features (CLS vs mean), 250 and 1000 labels, val 600."""
import sys, torch, numpy as np
from sklearn.linear_model import LogisticRegression
from bigmodel_course.data import review_splits
from bigmodel_course.finetuning import labelled_subset, text_loader
from bigmodel_course.pretrained import load_pretrained
from bigmodel_course.transformer import mean_pool
pre = load_pretrained("bert", "full", train_if_missing=False)
tok, model = pre.tokenizer, pre.model.eval()
s = review_splits(seed=0)
val = labelled_subset(s.val_texts, s.val_labels, 600, 0)
def feats(data):
    out = {"cls": [], "mean": []}
    with torch.no_grad():
        for b in text_loader(data, tok, 128, 128):
            h = model.encoder.stack(b["input_ids"], b["attention_mask"]).last_hidden_state if hasattr(model.encoder, "stack") else model.encoder(b["input_ids"], b["attention_mask"]).last_hidden_state
            out["cls"].append(h[:, 0]); out["mean"].append(mean_pool(h, b["attention_mask"]))
    return {k: torch.cat(v).numpy() for k, v in out.items()}
fv = feats(val)
for n in (250, 1000):
    tr = labelled_subset(s.train_texts, s.train_labels, n, 0)
    ft = feats(tr)
    res = {}
    for k in ft:
        res[k] = max(round(100 * (LogisticRegression(C=c, max_iter=3000).fit(ft[k], tr[1]).predict(fv[k]) == np.array(val[1])).mean(), 1) for c in (0.01, 0.1, 1, 10))
    print("bert", n, res, flush=True)
