"""PyTorch's Adam and SGD-with-momentum on one parameter over four steps of changing gradients:
the golden values of crates/stn-model/src/optim.rs's `adam_and_momentum_match_pytorch_past_step_one`.
Run: target/venv/bin/python scripts/golden_adam.py"""
import numpy as np
import torch

GRADS = [-5.0, 3.0, 0.5, -2.0]
for name, make in [("adam", lambda p: torch.optim.Adam([p], lr=0.01)),
                   ("momentum", lambda p: torch.optim.SGD([p], lr=0.1, momentum=0.9))]:
    p = torch.nn.Parameter(torch.tensor([1.0]))
    opt = make(p)
    values = []
    for g in GRADS:
        p.grad = torch.tensor([g])
        opt.step()
        values.append(float(p.detach()[0]))
    print(name, ", ".join(str(np.float32(v)) for v in values))  # shortest float32 forms
