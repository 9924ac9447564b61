"""PyTorch golden values of the paper's transforms and of every sampling mode: made, or checked.

    python scripts/golden_transforms.py --out crates/stn-ops/tests/golden    # write (seeded inputs)
    python scripts/golden_transforms.py --check crates/stn-ops/tests/golden  # recompute, compare

One JSON file, transforms_torch.json; every tensor is {"shape": [...], "data": [...]}, float64:

- sample: F.grid_sample(input, grid, mode, padding_mode, align_corners) for mode nearest and
  bicubic, the three paddings and both align_corners, on random grids reaching far outside the
  image, with the gradients of input and grid for grad_output.
- projective: the projective transformer's grid, written here in PyTorch (`projective_grid`): a
  homography h (8 values, the 3x3 matrix's last entry 1) maps affine_grid's base point (x, y) to
  (u / w, v / w), w = h6 x + h7 y + 1, |w| clamped from below to 1e-3 (its sign kept, + at 0, no
  gradient through the clamp); the grid and d(grid . grad_grid)/dh. Cases include points with w
  near 0 and below 0.
- tps: the thin-plate-spline grid, written here in PyTorch (`tps_matrix`): g x g control points on
  linspace(-1, 1, g)^2, U(r) = r^2 log r^2, the spline through (control point -> predicted point)
  evaluated at affine_grid's base points; the matrix M [H*W, K], the grid M @ points and the
  points' gradient. The Rust op (crates/stn-ops/src/tps_grid.rs) solves the same system its own way.

--check recomputes every output from the stored inputs and exits 1 on a difference over 1e-12.
"""

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

D = torch.float64
MIN_W = 1e-3


def t(x):
    return {"shape": list(x.shape), "data": x.detach().reshape(-1).tolist()}


def tensor(d):
    return torch.tensor(d["data"], dtype=D).reshape(d["shape"])


def base_grid(h, w, align, dtype=D):
    """affine_grid's base points (x, y) of an h x w grid, [h*w, 2]."""
    eye = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]], dtype=dtype)
    return F.affine_grid(eye, [1, 1, h, w], align_corners=align).reshape(h * w, 2)


def projective_grid(hm, h, w, align):
    """hm [N, 8] -> grid [N, h, w, 2] (in hm's dtype)."""
    n, dt = hm.shape[0], hm.dtype
    full = torch.cat([hm, torch.ones(n, 1, dtype=dt)], dim=1).reshape(n, 3, 3)
    b = base_grid(h, w, align, dt)
    pts = torch.cat([b, torch.ones(h * w, 1, dtype=dt)], dim=1)  # [P, 3]
    uvw = torch.einsum("nij,pj->npi", full, pts)  # [N, P, 3]
    wv = uvw[..., 2:]
    small = wv.abs() < MIN_W
    sign = torch.where(wv < 0, -1.0, 1.0).to(dt)
    # The clamp: the value replaced, no gradient through it.
    wc = torch.where(small, (sign * MIN_W).detach(), wv)
    return (uvw[..., :2] / wc).reshape(n, h, w, 2)


def tps_control_points(g):
    lin = torch.linspace(-1, 1, g, dtype=D)
    yy, xx = torch.meshgrid(lin, lin, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)  # [K, 2], row by row


def tps_u(r2):
    return torch.where(r2 > 0, r2 * torch.log(torch.where(r2 > 0, r2, torch.ones_like(r2))),
                       torch.zeros_like(r2))


def tps_matrix(g, h, w, align):
    """M [h*w, K]: grid = M @ points."""
    c = tps_control_points(g)
    k = c.shape[0]
    d2 = ((c[:, None, :] - c[None, :, :]) ** 2).sum(-1)
    p = torch.cat([torch.ones(k, 1, dtype=D), c], dim=1)
    top = torch.cat([tps_u(d2), p], dim=1)
    bottom = torch.cat([p.T, torch.zeros(3, 3, dtype=D)], dim=1)
    lmat = torch.cat([top, bottom], dim=0)
    rhs = torch.cat([torch.eye(k, dtype=D), torch.zeros(3, k, dtype=D)], dim=0)
    z = torch.linalg.solve(lmat, rhs)  # [K+3, K]
    q = base_grid(h, w, align)
    dq = ((q[:, None, :] - c[None, :, :]) ** 2).sum(-1)
    a = torch.cat([tps_u(dq), torch.ones(h * w, 1, dtype=D), q], dim=1)
    return a @ z


SAMPLE_CASES = [
    # (input shape, grid [Ho, Wo], grid scale: > 1 reaches far outside)
    ([2, 3, 5, 7], [4, 6], 1.3),
    ([1, 2, 6, 6], [5, 5], 2.5),
]


def sample_case(inp, grid, mode, padding, align, grad_out):
    inp = inp.clone().requires_grad_(True)
    grid = grid.clone().requires_grad_(True)
    out = F.grid_sample(inp, grid, mode=mode, padding_mode=padding, align_corners=align)
    out.backward(grad_out)
    return {"output": t(out), "grad_input": t(inp.grad), "grad_grid": t(grid.grad)}


def projective_case(hm, h, w, align, grad_grid):
    hm = hm.clone().requires_grad_(True)
    grid = projective_grid(hm, h, w, align)
    grid.backward(grad_grid)
    return {"grid": t(grid), "grad_h": t(hm.grad)}


def tps_case(points, g, h, w, align, grad_grid):
    m = tps_matrix(g, h, w, align)
    points = points.clone().requires_grad_(True)
    grid = torch.einsum("pk,nkd->npd", m, points).reshape(-1, h, w, 2)
    grid.backward(grad_grid)
    return {"matrix": t(m), "grid": t(grid), "grad_points": t(points.grad)}


def make():
    g = torch.Generator().manual_seed(0)
    sample = []
    for shape, (ho, wo), scale in SAMPLE_CASES:
        for mode in ["nearest", "bicubic"]:
            for padding in ["zeros", "border", "reflection"]:
                for align in [False, True]:
                    inp = torch.randn(shape, generator=g, dtype=D)
                    grid = scale * (2 * torch.rand(shape[0], ho, wo, 2, generator=g, dtype=D) - 1)
                    grad_out = torch.randn(shape[0], shape[1], ho, wo, generator=g, dtype=D)
                    c = {"mode": mode, "padding_mode": padding, "align_corners": align,
                         "input": t(inp), "grid": t(grid), "grad_output": t(grad_out)}
                    c.update(sample_case(inp, grid, mode, padding, align, grad_out))
                    sample.append(c)
    projective = []
    for n, h, w, align, scale in [(3, 4, 5, False, 0.3), (2, 6, 6, True, 0.3), (2, 28, 28, False, 0.2)]:
        eye = torch.tensor([1.0, 0, 0, 0, 1.0, 0, 0, 0], dtype=D)
        hm = eye + scale * torch.randn(n, 8, generator=g, dtype=D)
        if h == 6:
            # w = 0 at x = 0 for every y (h6 = 0, h7 = 0 gives w = 1; h7 = -1/y0 ... ): a w through 0
            # and below it across the grid.
            hm[0, 6], hm[0, 7] = 2.0, 0.0
            hm[1, 6], hm[1, 7] = 0.0, -1.5
        grad_grid = torch.randn(n, h, w, 2, generator=g, dtype=D)
        c = {"align_corners": align, "size": [n, h, w], "h": t(hm), "grad_grid": t(grad_grid)}
        c.update(projective_case(hm, h, w, align, grad_grid))
        projective.append(c)
    tps = []
    for gside, n, h, w, align in [(4, 2, 28, 28, False), (2, 2, 3, 5, True), (3, 1, 7, 6, False)]:
        points = tps_control_points(gside).unsqueeze(0) + 0.2 * torch.randn(
            n, gside * gside, 2, generator=g, dtype=D)
        grad_grid = torch.randn(n, h, w, 2, generator=g, dtype=D)
        c = {"g": gside, "size": [h, w], "align_corners": align, "points": t(points),
             "grad_grid": t(grad_grid)}
        c.update(tps_case(points, gside, h, w, align, grad_grid))
        tps.append(c)
    return {"about": "grid_sample nearest/bicubic, the projective and TPS grids (scripts/golden_transforms.py), float64",
            "torch": torch.__version__, "sample": sample, "projective": projective, "tps": tps}


def compare(what, got, want, failures):
    a, b = tensor(got), tensor(want)
    if list(a.shape) != list(b.shape):
        failures.append(f"{what}: shape {list(a.shape)} vs stored {list(b.shape)}")
        return
    diff = (a - b).abs().max().item() if a.numel() else 0.0
    if not diff <= 1e-12:
        failures.append(f"{what}: differs by {diff:.3g}")


def check(path):
    fx = json.load(open(path))
    failures = []
    for i, c in enumerate(fx["sample"]):
        got = sample_case(tensor(c["input"]), tensor(c["grid"]), c["mode"], c["padding_mode"],
                          c["align_corners"], tensor(c["grad_output"]))
        for k, v in got.items():
            compare(f"sample case {i} {k}", v, c[k], failures)
    for i, c in enumerate(fx["projective"]):
        _, h, w = c["size"]
        got = projective_case(tensor(c["h"]), h, w, c["align_corners"], tensor(c["grad_grid"]))
        for k, v in got.items():
            compare(f"projective case {i} {k}", v, c[k], failures)
    for i, c in enumerate(fx["tps"]):
        h, w = c["size"]
        got = tps_case(tensor(c["points"]), c["g"], h, w, c["align_corners"], tensor(c["grad_grid"]))
        for k, v in got.items():
            compare(f"tps case {i} {k}", v, c[k], failures)
    for f in failures:
        print(f, file=sys.stderr)
    print(f"{path}: {'reproduced' if not failures else f'{len(failures)} differences'}")
    return not failures


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="write transforms_torch.json into this directory")
    ap.add_argument("--check", help="recompute the outputs of DIR/transforms_torch.json")
    args = ap.parse_args()
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, "transforms_torch.json")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(make(), f)
        os.replace(tmp, path)
        print(f"wrote {path}")
    if args.check:
        sys.exit(0 if check(os.path.join(args.check, "transforms_torch.json")) else 1)
    if not (args.out or args.check):
        ap.error("give --out DIR or --check DIR")


if __name__ == "__main__":
    main()
