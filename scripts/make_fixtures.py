"""The PyTorch fixtures of ../shared/fixtures: made, or checked.

    python scripts/make_fixtures.py --out DIR            # write fresh fixtures (seeded inputs)
    python scripts/make_fixtures.py --check DIR          # recompute DIR's outputs from its inputs

Each fixture is JSON; every tensor is {"shape": [...], "data": [...]} in row-major order:

- grid_sample_torch.json: F.affine_grid(theta, out_size, align_corners) then F.grid_sample(input,
  grid, "bilinear", padding_mode, align_corners) in float64, and the gradients of input, grid and
  theta for grad_output; six cases (align_corners both ways, the three paddings, samples far
  outside the image, the seed's 28x28 shape).
- conv_pool_torch.json: F.conv2d (stride 1, no padding, bias) then F.max_pool2d(2, 2) in float64
  at the seed network's four shapes, with every gradient for grad_pooled.
- seed_net_torch.json: the seed's Net (../shared/reference/pytorch_stn.py) in eval mode, float32:
  its state_dict, an input batch, and theta, the warped images and the log-probs.

--check recomputes every output and gradient from the inputs stored in DIR with this PyTorch and
exits 1 if one differs by more than 1e-12 (float64) or 2e-5 (float32): the fixtures are what
PyTorch computes, and this script is what made them. The tests run it on ../shared/fixtures.
"""

import argparse
import importlib.util
import json
import os
import sys

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE = os.path.join(HERE, "..", "..", "shared", "reference", "pytorch_stn.py")


def t(x):
    return {"shape": list(x.shape), "data": x.detach().reshape(-1).tolist()}


def tensor(d, dtype):
    return torch.tensor(d["data"], dtype=dtype).reshape(d["shape"])


def grid_sample_case(inp, theta, out_size, align, padding, grad_out):
    inp = inp.clone().requires_grad_(True)
    theta = theta.clone().requires_grad_(True)
    grid = F.affine_grid(theta, out_size, align_corners=align)
    grid.retain_grad()
    out = F.grid_sample(inp, grid, mode="bilinear", padding_mode=padding, align_corners=align)
    out.backward(grad_out)
    return {
        "grid": t(grid),
        "output": t(out),
        "grad_input": t(inp.grad),
        "grad_grid": t(grid.grad),
        "grad_theta": t(theta.grad),
    }


def conv_pool_case(inp, weight, bias, grad_pooled):
    inp, weight, bias = (x.clone().requires_grad_(True) for x in (inp, weight, bias))
    conv = F.conv2d(inp, weight, bias)
    pooled = F.max_pool2d(conv, 2, stride=2)
    pooled.backward(grad_pooled)
    return {
        "conv": t(conv),
        "pooled": t(pooled),
        "grad_input": t(inp.grad),
        "grad_weight": t(weight.grad),
        "grad_bias": t(bias.grad),
    }


def reference_net():
    spec = importlib.util.spec_from_file_location("pytorch_stn", REFERENCE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.Net


def seed_net_outputs(net, x):
    with torch.no_grad():
        xs = net.localization(x).view(-1, 10 * 3 * 3)
        theta = net.fc_loc(xs).view(-1, 2, 3)
        grid = F.affine_grid(theta, x.size(), align_corners=False)
        warped = F.grid_sample(x, grid, align_corners=False)
        log_probs = net(x)
    return {"theta": t(theta), "warped": t(warped), "log_probs": t(log_probs)}


GRID_CASES = [
    # (input shape, out_size, align_corners, padding, theta scale: > 1 samples far outside)
    ([2, 3, 5, 7], [2, 3, 4, 6], False, "zeros", 0.3),
    ([2, 3, 5, 7], [2, 3, 4, 6], True, "zeros", 0.3),
    ([1, 2, 6, 6], [1, 2, 6, 6], False, "zeros", 2.5),
    ([1, 2, 6, 6], [1, 2, 6, 6], False, "border", 2.5),
    ([1, 2, 6, 6], [1, 2, 6, 6], False, "reflection", 2.5),
    ([3, 1, 28, 28], [3, 1, 28, 28], False, "zeros", 0.3),
]
CONV_CASES = [([2, 1, 28, 28], [8, 1, 7, 7]), ([2, 8, 11, 11], [10, 8, 5, 5]),
              ([2, 1, 28, 28], [10, 1, 5, 5]), ([2, 10, 12, 12], [20, 10, 5, 5])]


def make(out_dir):
    g = torch.Generator().manual_seed(0)
    d64 = torch.float64
    cases = []
    for shape, out_size, align, padding, scale in GRID_CASES:
        n = shape[0]
        inp = torch.randn(shape, generator=g, dtype=d64)
        eye = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], dtype=d64)
        theta = eye + scale * torch.randn(n, 2, 3, generator=g, dtype=d64)
        grad_out = torch.randn(out_size, generator=g, dtype=d64)
        case = {"align_corners": align, "padding_mode": padding, "mode": "bilinear",
                "input": t(inp), "theta": t(theta), "out_size": out_size, "grad_output": t(grad_out)}
        case.update(grid_sample_case(inp, theta, out_size, align, padding, grad_out))
        cases.append(case)
    write(out_dir, "grid_sample_torch.json", {
        "about": "torch.nn.functional.affine_grid + grid_sample in float64; gradients for grad_output",
        "torch": torch.__version__, "cases": cases})
    cases = []
    for shape, wshape in CONV_CASES:
        inp = torch.randn(shape, generator=g, dtype=d64)
        weight = 0.2 * torch.randn(wshape, generator=g, dtype=d64)
        bias = 0.1 * torch.randn(wshape[0], generator=g, dtype=d64)
        conv_out = [shape[0], wshape[0], shape[2] - wshape[2] + 1, shape[3] - wshape[3] + 1]
        grad_pooled = torch.randn([*conv_out[:2], conv_out[2] // 2, conv_out[3] // 2],
                                  generator=g, dtype=d64)
        case = {"input": t(inp), "weight": t(weight), "bias": t(bias), "grad_pooled": t(grad_pooled)}
        case.update(conv_pool_case(inp, weight, bias, grad_pooled))
        cases.append(case)
    write(out_dir, "conv_pool_torch.json", {
        "about": "F.conv2d (stride 1, no padding) then F.max_pool2d(2, stride 2), float64; "
                 "pooling ties have probability ~0",
        "torch": torch.__version__, "cases": cases})
    torch.manual_seed(0)
    net = reference_net()().eval()
    # A transform off the identity, so that theta and warped say something.
    with torch.no_grad():
        net.fc_loc[2].weight.normal_(0, 0.05)
    x = torch.randn(4, 1, 28, 28, generator=g)
    out = {"about": "the seed's Net (pytorch_stn.py) in eval mode: state_dict in PyTorch names, an "
                    "input batch, and theta, the warped images and the log-probs PyTorch computes (float32)",
           "torch": torch.__version__,
           "params": {k: t(v) for k, v in net.state_dict().items()},
           "input": t(x)}
    out.update(seed_net_outputs(net, x))
    write(out_dir, "seed_net_torch.json", out)


def write(out_dir, name, obj):
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, name)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)
    print(f"wrote {path}")


def compare(what, got, want, tol, failures):
    a, b = tensor(got, torch.float64), tensor(want, torch.float64)
    if list(a.shape) != list(b.shape):
        failures.append(f"{what}: shape {list(a.shape)} vs stored {list(b.shape)}")
        return
    diff = (a - b).abs().max().item() if a.numel() else 0.0
    if not diff <= tol:
        failures.append(f"{what}: differs by {diff:.3g} (tolerance {tol})")


def check(dir_):
    failures = []
    d64 = torch.float64
    fx = json.load(open(os.path.join(dir_, "grid_sample_torch.json")))
    for i, c in enumerate(fx["cases"]):
        got = grid_sample_case(tensor(c["input"], d64), tensor(c["theta"], d64), c["out_size"],
                               c["align_corners"], c["padding_mode"], tensor(c["grad_output"], d64))
        for k, v in got.items():
            compare(f"grid_sample case {i} {k}", v, c[k], 1e-12, failures)
    fx = json.load(open(os.path.join(dir_, "conv_pool_torch.json")))
    for i, c in enumerate(fx["cases"]):
        got = conv_pool_case(tensor(c["input"], d64), tensor(c["weight"], d64),
                             tensor(c["bias"], d64), tensor(c["grad_pooled"], d64))
        for k, v in got.items():
            compare(f"conv_pool case {i} {k}", v, c[k], 1e-12, failures)
    fx = json.load(open(os.path.join(dir_, "seed_net_torch.json")))
    net = reference_net()().eval()
    net.load_state_dict({k: tensor(v, torch.float32) for k, v in fx["params"].items()}, strict=True)
    got = seed_net_outputs(net, tensor(fx["input"], torch.float32))
    # float32: the convolutions' summation order follows the CPU's kernels (oneDNN picks them by
    # instruction set), and the sampler amplifies theta's last bits (a pixel edge of 3.2 over a
    # 1/14 step): 7.9e-6 seen on warped, 1e-7 on theta.
    for k, v in got.items():
        compare(f"seed_net {k}", v, fx[k], 2e-5, failures)
    for f in failures:
        print(f, file=sys.stderr)
    print(f"{dir_}: {'reproduced' if not failures else f'{len(failures)} differences'}")
    return not failures


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="write fresh fixtures into this directory")
    ap.add_argument("--check", help="recompute the outputs of the fixtures in this directory")
    args = ap.parse_args()
    if args.out:
        make(args.out)
    if args.check:
        sys.exit(0 if check(args.check) else 1)
    if not (args.out or args.check):
        ap.error("give --out DIR or --check DIR")


if __name__ == "__main__":
    main()
