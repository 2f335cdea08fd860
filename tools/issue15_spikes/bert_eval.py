import torch, json
from torch.utils.data import DataLoader
from bigmodel_course.data import review_splits
from bigmodel_course.pretrained import NSPMLMDataset, load_pretrained
bert = load_pretrained("bert", "full", train_if_missing=False)
held = review_splits(seed=0).val_texts[:1000]
torch.manual_seed(0)
ds = NSPMLMDataset(held, bert.tokenizer, bert.model.cfg.max_len)
hits = total = top = 0
with torch.no_grad():
    for b in DataLoader(ds, batch_size=64, collate_fn=ds.collate):
        out = bert.model(b["input_ids"], b["attention_mask"], b["token_type_ids"])
        sel = b["labels"] != -100
        hits += int((out.logits.argmax(-1)[sel] == b["labels"][sel]).sum()); total += int(sel.sum())
        top += int((b["labels"][sel] == 5).sum())
print(json.dumps({"mlm_acc": hits / total, "positions": total, "most_common": top / total,
                  "first_loss": bert.history[0]["train_loss"], "last_loss": bert.history[-1]["train_loss"],
                  "train_seconds": bert.meta["train_seconds"]}))
