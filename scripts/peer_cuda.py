#!/usr/bin/env python3
"""PyTorch CUDA peer for scripts/gpu-check.sh: one epoch of the seed recipe (pytorch_stn.py's Net,
SGD lr 0.01) on the GPU, batch given, TF32 off; prints one JSON line with img/s."""
import json, sys, time
sys.path.insert(0, sys.argv[2])  # ../shared/reference
import torch, torch.nn.functional as F
import pytorch_stn as ref

data, batch = sys.argv[1], int(sys.argv[3])
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
torch.manual_seed(1)
dev = torch.device("cuda")
x, y = ref.load(data, "train")
x, y = x.to(dev), y.to(dev)
model = ref.Net().to(dev)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
model.train()
perm = torch.randperm(len(x), device=dev)
torch.cuda.synchronize()
t0 = time.perf_counter()
for i in range(0, len(x), batch):
    idx = perm[i : i + batch]
    opt.zero_grad()
    F.nll_loss(model(x[idx]), y[idx]).backward()
    opt.step()
torch.cuda.synchronize()
s = time.perf_counter() - t0
print(json.dumps({"peer": "pytorch-cuda", "torch": torch.__version__, "gpu": torch.cuda.get_device_name(0),
                  "batch": batch, "train_img_per_s": round(len(x) / s, 1)}))
