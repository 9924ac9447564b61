#!/usr/bin/env python3
"""The speedrun's recipe run by PyTorch (scripts/speedrun.sh): the peer's own network and data
loading (../shared/reference/pytorch_stn.py, imported, not copied), trained with the recipe
stn-train runs — Adam (β 0.9/0.999, ε 1e-8), the localisation head's learning rate scaled, the
learning rate cosine-annealed per epoch as stn-train's `--schedule cosine` (epoch e of E:
lr·½(1 + cos(π(e−1)/E))), batch B, reshuffled every epoch — then evaluated on the 10,000 test
images. The network is the peer's `Net` with its two dropouts' rates set (`--dropout2d`,
`--dropout`: the `speedrun` preset's 0.1 and 0.25; the tutorial's are 0.5 and 0.5). Prints one JSON line: the wall time from the start of this process (imports and data
loading included, as ours is timed from a cold start of the binary) and the test accuracy.

    python3 scripts/speedrun_peer.py --data ../shared/data/mnist --epochs 3 --batch 64 --lr 0.002 \
        --loc-lr-scale 0.1 --dropout2d 0.1 --dropout 0.25 --threads 2 --seed 1
"""
import time

START = time.perf_counter()

import argparse, importlib.util, json, math, os

import torch
import torch.nn.functional as F


def peer_module():
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(here, "..", "..", "shared", "reference", "pytorch_stn.py")
    spec = importlib.util.spec_from_file_location("pytorch_stn", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def net_with_dropout(peer, p2d, p):
    """The peer's `Net`, its forward unchanged but for the two dropout rates (its forward calls
    `F.dropout` with the default 0.5, so the classifier's lines are repeated here with `p`)."""

    class Net(peer.Net):
        def __init__(self):
            super().__init__()
            self.conv2_drop = torch.nn.Dropout2d(p2d)

        def forward(self, x):
            x = self.stn(x)
            x = F.relu(F.max_pool2d(self.conv1(x), 2))
            x = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(x)), 2))
            x = x.view(-1, 320)
            x = F.relu(self.fc1(x))
            x = F.dropout(x, p=p, training=self.training)
            return F.log_softmax(self.fc2(x), dim=1)

    return Net()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.002)
    ap.add_argument("--loc-lr-scale", type=float, default=0.1)
    ap.add_argument("--dropout2d", type=float, default=0.1)
    ap.add_argument("--dropout", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    peer = peer_module()
    xtr, ytr = peer.load(args.data, "train")
    xte, yte = peer.load(args.data, "test")
    model = net_with_dropout(peer, args.dropout2d, args.dropout)
    loc = [p for n, p in model.named_parameters() if n.startswith(("localization.", "fc_loc."))]
    rest = [p for n, p in model.named_parameters() if not n.startswith(("localization.", "fc_loc."))]
    groups = [{"params": rest, "scale": 1.0}, {"params": loc, "scale": args.loc_lr_scale}]
    opt = torch.optim.Adam(groups, lr=args.lr, betas=(0.9, 0.999), eps=1e-8)
    for epoch in range(1, args.epochs + 1):
        factor = 0.5 * (1 + math.cos(math.pi * (epoch - 1) / args.epochs))
        for g in opt.param_groups:
            g["lr"] = args.lr * factor * g["scale"]
        model.train()
        perm = torch.randperm(len(xtr))
        for i in range(0, len(xtr), args.batch):
            idx = perm[i : i + args.batch]
            opt.zero_grad()
            F.nll_loss(model(xtr[idx]), ytr[idx]).backward()
            opt.step()
    _, acc = peer.evaluate(model, xte, yte, 1000)
    print(json.dumps({
        "peer": "pytorch", "torch": torch.__version__, "threads": torch.get_num_threads(),
        "seed": args.seed, "epochs": args.epochs, "batch": args.batch, "lr": args.lr,
        "dropout2d": args.dropout2d, "dropout": args.dropout,
        "wall_s": round(time.perf_counter() - START, 2), "test_accuracy": round(acc, 5),
    }))


if __name__ == "__main__":
    main()
