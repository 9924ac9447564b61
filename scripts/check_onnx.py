#!/usr/bin/env python3
"""Checks exported ONNX models with the reference tools, for tests/export.rs.

    check_onnx.py CASE.json [REFERENCE_DIR]

CASE.json: {"models": [paths], "input": {"shape", "data"}, "log_probs": {"data"}} where log_probs
are ours (dfdx). For every model: onnx.checker.check_model(full_check=True), then ONNX Runtime's
log-probs for the input, compared with ours by numpy's allclose(rtol=1e-5, atol=1e-5). With
REFERENCE_DIR (../shared/reference): the model's initializers are also loaded into
pytorch_stn.py's Net, whose log-probs must be allclose to ONNX Runtime's -- the graph is the
seed network. Prints one JSON object; exits 1 if any model fails.
"""
import json, sys
import numpy as np
import onnx
import onnxruntime as ort

case = json.load(open(sys.argv[1]))
x = np.array(case["input"]["data"], dtype=np.float32).reshape(case["input"]["shape"])
ours = np.array(case["log_probs"]["data"], dtype=np.float32).reshape(x.shape[0], 10)
report, ok = [], True
for path in case["models"]:
    r = {"model": path}
    try:
        onnx.checker.check_model(onnx.load(path), full_check=True)
        r["checker"] = "ok"
        theirs = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(["log_probs"], {"input": x})[0]
        r["max_abs_diff"] = float(np.abs(theirs - ours).max())
        r["allclose"] = bool(np.allclose(theirs, ours, rtol=1e-5, atol=1e-5))
        ok &= r["allclose"]
        if len(sys.argv) > 2:
            sys.path.insert(0, sys.argv[2])
            import torch, onnx.numpy_helper, pytorch_stn
            net = pytorch_stn.Net().eval()
            w = {t.name: torch.from_numpy(onnx.numpy_helper.to_array(t).copy()) for t in onnx.load(path).graph.initializer}
            net.load_state_dict({k: w[k] for k in net.state_dict()})
            with torch.no_grad():
                torch_lp = net(torch.from_numpy(x)).numpy()
            r["torch_max_abs_diff"] = float(np.abs(torch_lp - theirs).max())
            r["torch_allclose"] = bool(np.allclose(torch_lp, theirs, rtol=1e-5, atol=1e-5))
            ok &= r["torch_allclose"]
    except Exception as e:  # a failed check is a result, reported with its message
        r["error"] = f"{type(e).__name__}: {e}"
        ok = False
    report.append(r)
print(json.dumps({"ok": ok, "onnx": onnx.__version__, "onnxruntime": ort.__version__, "models": report}))
sys.exit(0 if ok else 1)
