"""Rebuilds the network of an stn model spec in PyTorch and checks it against ONNX Runtime.

    python scripts/spec_torch.py MODEL.onnx [N]

Reads the spec from the model's `stn.spec` metadata, builds it as `nn.Sequential`s of the same
layers (`localization`, with the transform head's regressor appended, and `classifier`: the names
stn gives a spec's parameters), loads the model's initializers into it with `load_state_dict`
(strict), runs N random images through both it and ONNX Runtime, and exits 1 unless the
log-probs agree within numpy's allclose(rtol=1e-5, atol=1e-5) (and the warped images within 1e-4).

This is what a PyTorch user does to take an stn network on: the same spec, the same names.
"""

import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from golden_transforms import projective_grid, tps_matrix  # noqa: E402

# Each head's parameter count, and for attention/similarity the basis expanding it to theta.
BASES = {
    "attention": [[1, 0, 0, 0, 1, 0], [0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 1]],
    "similarity": [[1, 0, 0, 0, 1, 0], [0, -1, 0, 1, 0, 0], [0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 1]],
}


def n_params(t):
    return {"affine": 6, "attention": 3, "similarity": 4, "projective": 8}.get(
        t["kind"], 2 * t.get("grid", 4) ** 2)


def layer(spec, shape):
    """The torch module of one spec layer, and the shape it leaves ((C, H, W) or (features,))."""
    op = spec["op"]
    if op == "conv2d":
        c, h, w = shape
        k, s, p = spec["kernel"], spec.get("stride", 1), spec.get("padding", 0)
        out = ((h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1)
        return nn.Conv2d(c, spec["out"], k, stride=s, padding=p), (spec["out"], *out)
    if op in ("max_pool2d", "avg_pool2d"):
        c, h, w = shape
        k = spec["kernel"]
        s = spec.get("stride") or k
        m = nn.MaxPool2d(k, s) if op == "max_pool2d" else nn.AvgPool2d(k, s)
        return m, (c, (h - k) // s + 1, (w - k) // s + 1)
    if op == "relu":
        return nn.ReLU(), shape
    if op == "dropout":
        return nn.Dropout(spec.get("p", 0.5)), shape
    if op == "dropout2d":
        return nn.Dropout2d(spec.get("p", 0.5)), shape
    if op == "flatten":
        return nn.Flatten(), (int(np.prod(shape)),)
    if op == "linear":
        return nn.Linear(shape[0], spec["out"]), (spec["out"],)
    raise SystemExit(f"unknown layer {op!r}")


def sequential(layers, shape):
    mods = []
    for spec in layers:
        m, shape = layer(spec, shape)
        mods.append(m)
    return nn.Sequential(*mods), shape


class SpecNet(nn.Module):
    """A spec's network: localisation net + regressor, the head's grid and sampler, classifier."""

    def __init__(self, spec):
        super().__init__()
        i = spec["input"]
        self.c = i["channels"]
        t = spec["transform"]
        self.t = t
        shape = (i["channels"], i["height"], i["width"])
        if t["kind"] != "none":
            ho, wo = t["output"]
            loc, feats = sequential(spec["localization"], shape)
            # The regressor: the next index of the Sequential, as stn names it.
            self.localization = nn.Sequential(*loc, nn.Linear(feats[0], n_params(t)))
            shape = (i["channels"], ho, wo)
            if t["kind"] == "tps":
                align = t.get("align_corners", False)
                self.tps = tps_matrix(t.get("grid", 4), ho, wo, align).float()
        self.classifier, _ = sequential(spec["classifier"], shape)

    def forward(self, x):
        warped = None
        kind = self.t["kind"]
        if kind != "none":
            ho, wo = self.t["output"]
            align = self.t.get("align_corners", False)
            p = self.localization(x)
            if kind in BASES:
                p = p @ torch.tensor(BASES[kind], dtype=p.dtype)
            if kind in ("affine", "attention", "similarity"):
                grid = F.affine_grid(p.view(-1, 2, 3), [x.shape[0], self.c, ho, wo],
                                     align_corners=align)
            elif kind == "projective":
                grid = projective_grid(p, ho, wo, align)
            else:
                pts = p.view(x.shape[0], -1, 2)
                grid = torch.einsum("pk,nkd->npd", self.tps, pts).reshape(-1, ho, wo, 2)
            x = warped = F.grid_sample(
                x, grid, mode=self.t.get("mode", "bilinear"),
                padding_mode=self.t.get("padding", "zeros"), align_corners=align
            )
        return F.log_softmax(self.classifier(x), dim=1), warped


def main():
    path = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 16
    model = onnx.load(path)
    meta = {p.key: p.value for p in model.metadata_props}
    if "stn.spec" not in meta:
        raise SystemExit(f"{path}: no stn.spec metadata (not exported by stn-export)")
    spec = json.loads(meta["stn.spec"])
    if spec.get("names", "sequential") != "sequential":
        raise SystemExit(f"{path}: this script builds nn.Sequential-named specs")
    net = SpecNet(spec).eval()
    # The parameters: the initializers named as the network's (the grids' constants are not).
    names = set(net.state_dict())
    state = {t.name: torch.from_numpy(onnx.numpy_helper.to_array(t).copy())
             for t in model.graph.initializer if t.name in names}
    net.load_state_dict(state, strict=True)
    i = spec["input"]
    x = np.random.default_rng(0).standard_normal((n, i["channels"], i["height"], i["width"]),
                                                 dtype=np.float32)
    with torch.no_grad():
        lp, warped = net(torch.from_numpy(x))
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    got = dict(zip(names, sess.run(None, {"input": x})))
    ok = True
    # The warped images within 1e-4: ONNX Runtime's AffineGrid (opset 20) rounds its grid
    # differently from torch's affine_grid (1.4e-5 apart seen with border padding); the log-probs
    # within 1e-5.
    for name, want, tol in [("log_probs", lp, 1e-5), ("warped", warped, 1e-4)]:
        if name not in got or want is None:
            continue
        want = want.numpy()
        close = np.allclose(got[name], want, rtol=tol, atol=tol)
        print(f"{name}: max |onnxruntime - torch| = {np.abs(got[name] - want).max():.3g}"
              f" ({'allclose' if close else 'NOT allclose'})")
        ok &= close
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
