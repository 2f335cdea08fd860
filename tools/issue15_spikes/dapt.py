"""ULMFiT stage 2 spike: continue LM training of a GPT checkpoint on the train reviews only."""
import sys, json, time, math
import torch
from torch.utils.data import DataLoader
from bigmodel_course.data import LMBlockDataset, review_splits
from bigmodel_course.pretrained import corpus, gpt_stream
from bigmodel_course.tokenization import CharTokenizer
from bigmodel_course.training import Trainer, TrainConfig
from bigmodel_course.transformer import GPT, GPTConfig
ck, steps, lr, out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
tok = CharTokenizer.train(corpus(None), min_freq=2)
s = review_splits(seed=0)
d = torch.load(ck, weights_only=True)
model = GPT(GPTConfig.from_dict(d["cfg"])); model.load_state_dict(d["state"])
data = LMBlockDataset(gpt_stream(s.train_texts, tok), 128)
print("review blocks", len(data), "tokens", len(data) * 128, flush=True)
loader = DataLoader(data, batch_size=32, shuffle=True)
t = time.perf_counter()
Trainer(model, TrainConfig(lr=lr, max_steps=steps, warmup_steps=steps // 10, weight_decay=0.01, progress=False), loader).train()
print("seconds", round(time.perf_counter() - t), flush=True)
torch.save({"cfg": d["cfg"], "state": model.state_dict()}, out)
