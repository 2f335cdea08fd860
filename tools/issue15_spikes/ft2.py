"""Fine-tuning lever spike: ckpt x pooling x dropout x lr at given label counts, seed 0, val selection, test once."""
import sys, json, time, dataclasses
import torch
import bigmodel_course.finetuning as F
from bigmodel_course.data import review_splits
from bigmodel_course.pretrained import corpus
from bigmodel_course.tokenization import CharTokenizer
from bigmodel_course.transformer import GPT, GPTConfig, GPTForSequenceClassification, mean_pool, classification_loss
from bigmodel_course.evaluation import accuracy
from bigmodel_course.utils import seed_everything

class MeanPoolGPT(GPTForSequenceClassification):
    def forward(self, input_ids, attention_mask=None, labels=None, return_attention=False):
        out = self.transformer(input_ids, attention_mask)
        out.pooled = mean_pool(out.last_hidden_state, attention_mask)
        out.logits = self.score(out.pooled)
        out.loss = classification_loss(out.logits, labels)
        return out

tok = CharTokenizer.train(corpus(None), min_freq=2)
s = review_splits(seed=0)
val = F.labelled_subset(s.val_texts, s.val_labels, 600, 0)
test = (s.test_texts, s.test_labels)
spec0 = F.LABEL_EFFICIENCY_SPECS["full"].finetune
for job in sys.argv[1:]:
    ck, n, pool, drop, lr = job.split(":")
    n, drop, lr = int(n), float(drop), float(lr)
    train = F.labelled_subset(s.train_texts, s.train_labels, n, 0)
    d = torch.load(ck, weights_only=True) if ck != "random" else torch.load("gpt_a_4.pt", weights_only=True)
    cfg = GPTConfig.from_dict({**d["cfg"], "num_labels": 2, "dropout": drop, "attn_dropout": drop})
    seed_everything(0)
    model = (MeanPoolGPT if pool == "mean" else GPTForSequenceClassification)(cfg)
    if ck != "random":
        model.transformer.load_state_dict({k[len("transformer."):]: v for k, v in d["state"].items() if k.startswith("transformer.")})
    r = F.finetune(model, tok, train, test, dataclasses.replace(spec0, lr=lr), 0, val=val)
    print(json.dumps({"job": job, "val": round(100 * r["val_accuracy"], 1), "test": round(100 * r["test_accuracy"], 1),
                      "steps": r["steps"], "best": r["best_step"], "s": round(r["seconds"])}), flush=True)
