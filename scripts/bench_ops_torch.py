#!/usr/bin/env python3
"""The PyTorch side of scripts/bench-ops.sh: the same ops, shapes and timing rule as
crates/stn-ops/benches/ops.rs (median of 200 runs after 20 warm-ups), one JSON line per op."""
import json, sys, time
import torch
import torch.nn.functional as F

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
torch.set_num_threads(threads)
torch.manual_seed(0)


def median_us(f):
    for _ in range(20):
        f()
    t = []
    for _ in range(200):
        s = time.perf_counter()
        f()
        t.append((time.perf_counter() - s) * 1e6)
    t.sort()
    return t[len(t) // 2]


for c in (1, 10):
    n = 64
    x = torch.randn(n, c, 28, 28)
    theta = torch.randn(n, 2, 3, requires_grad=True)

    def step():
        g = F.affine_grid(theta, [n, c, 28, 28], align_corners=False)
        F.grid_sample(x, g, align_corners=False).sum().backward()

    us = round(median_us(step), 1)
    print(json.dumps({"op": "grid_sample_fwd_bwd", "shape": [n, c, 28, 28], "torch_us": us}))
    # Ours also runs the pair as one op (affine_sample); torch's is the same two calls.
    print(json.dumps({"op": "affine_sample_fwd_bwd", "shape": [n, c, 28, 28], "torch_us": us}))
    for mode in ("nearest", "bicubic"):
        def step_mode():
            g = F.affine_grid(theta, [n, c, 28, 28], align_corners=False)
            F.grid_sample(x, g, mode=mode, align_corners=False).sum().backward()

        us = round(median_us(step_mode), 1)
        print(json.dumps({"op": f"grid_sample_{mode}_fwd_bwd", "shape": [n, c, 28, 28], "torch_us": us}))
        # Ours also runs the pair as one op (affine_sample_with); torch's is the same two calls.
        print(json.dumps({"op": f"affine_sample_{mode}_fwd_bwd", "shape": [n, c, 28, 28], "torch_us": us}))

layers = [("localization.0", (64, 1, 28, 28), (8, 1, 7, 7), False),
          ("localization.3", (64, 8, 11, 11), (10, 8, 5, 5), True),
          ("conv1", (64, 1, 28, 28), (10, 1, 5, 5), True),
          ("conv2", (64, 10, 12, 12), (20, 10, 5, 5), True)]
for name, xs, ws, traced in layers:
    x = torch.randn(*xs, requires_grad=traced)
    w = torch.randn(*ws, requires_grad=True)
    b = torch.randn(ws[0], requires_grad=True)

    def step():
        F.max_pool2d(F.conv2d(x, w, b), 2, 2).sum().backward()

    print(json.dumps({"op": "conv_pool_fwd_bwd", "layer": name, "shape": list(xs), "torch_us": round(median_us(step), 1)}))
