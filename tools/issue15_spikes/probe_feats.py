"""Linear probes on frozen GPT features: last token vs mean pooling, per snapshot; 250 and 1000 labels."""
import sys, json, time
import torch, numpy as np
from sklearn.linear_model import LogisticRegression
from bigmodel_course.data import review_splits
from bigmodel_course.finetuning import labelled_subset, text_loader
from bigmodel_course.pretrained import corpus
from bigmodel_course.tokenization import CharTokenizer
from bigmodel_course.transformer import GPT, GPTConfig, mean_pool
tok = CharTokenizer.train(corpus(None), min_freq=2)
s = review_splits(seed=0)
val = labelled_subset(s.val_texts, s.val_labels, 600, 0)
def feats(model, data):
    out = {"last": [], "mean": [], "max": []}
    with torch.no_grad():
        for b in text_loader(data, tok, 128, 128):
            h = model.transformer(b["input_ids"], b["attention_mask"]).last_hidden_state
            m = b["attention_mask"]
            last = m.sum(1) - 1
            out["last"].append(h[torch.arange(h.shape[0]), last])
            out["mean"].append(mean_pool(h, m))
            out["max"].append(h.masked_fill(m[..., None] == 0, -1e9).max(1).values)
    return {k: torch.cat(v).numpy() for k, v in out.items()}
for ck in sys.argv[1:]:
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, max_len=128, d_model=128, n_heads=4, n_layers=4, pad_token_id=tok.pad_id))
    if ck != "random":
        model.load_state_dict(torch.load(ck, weights_only=True)["state"])
    model.eval()
    fv = feats(model, val)
    for n in (250, 1000):
        tr = labelled_subset(s.train_texts, s.train_labels, n, 0)
        ft = feats(model, tr)
        res = {}
        for k in ("last", "mean", "max"):
            best = 0
            for c in (0.01, 0.1, 1, 10):
                clf = LogisticRegression(C=c, max_iter=3000).fit(ft[k], tr[1])
                best = max(best, (clf.predict(fv[k]) == np.array(val[1])).mean())
            res[k] = round(100 * best, 1)
        print(ck, n, res, flush=True)
