#!/usr/bin/env python3
"""The peers of scripts/bench-infer.sh: onnxruntime-Python on the same ONNX model and PyTorch eval
of the same weights (the seed's Net with the model's initializers), on the 10,000 MNIST test
images, at each batch size; one JSON line per (peer, batch)."""
import json, sys, time
import numpy as np
import onnx, onnx.numpy_helper
import onnxruntime as ort

model_path, data_dir, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
batches = [int(b) for b in sys.argv[4].split(",")]
sys.path.insert(0, sys.argv[5])  # ../shared/reference
import pytorch_stn as ref
import torch

torch.set_num_threads(threads)
x, _ = ref.load(data_dir, "test")
xs = x.numpy()

opts = ort.SessionOptions()
opts.intra_op_num_threads = threads
sess = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
net = ref.Net().eval()
weights = {t.name: torch.from_numpy(onnx.numpy_helper.to_array(t).copy()) for t in onnx.load(model_path).graph.initializer}
net.load_state_dict({k: weights[k] for k in net.state_dict()})


def timed(run, b):
    n = len(xs) if b >= 64 else 2000  # batch 1 over 2,000 images keeps the run short
    for i in range(0, min(n, 5 * b), b):  # warm-up
        run(xs[i : i + b])
    t0 = time.perf_counter()
    runs = 0
    for i in range(0, n - b + 1, b):
        run(xs[i : i + b])
        runs += 1
    s = time.perf_counter() - t0
    return runs * b / s, 1e6 * s / runs


for b in batches:
    ips, lat = timed(lambda v: sess.run(["log_probs"], {"input": v}), b)
    print(json.dumps({"runtime": "onnxruntime-python", "batch": b, "threads": threads, "img_per_s": round(ips, 1), "latency_us": round(lat, 1)}))
    with torch.no_grad():
        ips, lat = timed(lambda v: net(torch.from_numpy(v)), b)
    print(json.dumps({"runtime": "pytorch-eval", "batch": b, "threads": threads, "img_per_s": round(ips, 1), "latency_us": round(lat, 1)}))
