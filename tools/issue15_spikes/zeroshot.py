"""Zero-shot sentiment from the LM: score = log P(pos words | review + prompt) - log P(neg words | ...)."""
import sys, torch, numpy as np
from bigmodel_course.data import review_splits
from bigmodel_course.finetuning import labelled_subset
from bigmodel_course.pretrained import corpus
from bigmodel_course.tokenization import CharTokenizer
from bigmodel_course.transformer import GPT, GPTConfig
tok = CharTokenizer.train(corpus(None), min_freq=2)
s = review_splits(seed=0)
val = labelled_subset(s.val_texts, s.val_labels, 600, 0)
PAIRS = [("总的来说，很", "好", "差"), ("总之，", "很满意", "很失望"), ("。总之，", "推荐", "不推荐"),
         ("。总的来说，", "非常好", "非常差"), ("。", "很好", "很差")]
def lp(model, ctx, cont):
    ids = tok.encode(ctx, add_special=False)[-(128 - len(cont) - 1):]
    c = tok.encode(cont, add_special=False)
    x = torch.tensor([ids + c])
    with torch.no_grad():
        logp = model(x).logits.log_softmax(-1)[0]
    return sum(float(logp[len(ids) - 1 + i, c[i]]) for i in range(len(c)))
for ck in sys.argv[1:]:
    d = torch.load(ck, weights_only=True)
    model = GPT(GPTConfig.from_dict(d["cfg"])); model.load_state_dict(d["state"]); model.eval()
    y = np.array(val[1])
    for prompt, pos, neg in PAIRS:
        sc = np.array([lp(model, t + prompt, pos) - lp(model, t + prompt, neg) for t in val[0][:300]])
        yy = y[:300]
        acc0 = ((sc > 0) == yy).mean()
        accm = ((sc > np.median(sc)) == yy).mean()
        print(ck, prompt, pos, neg, "acc@0 %.1f acc@median %.1f" % (100 * acc0, 100 * accm), flush=True)
