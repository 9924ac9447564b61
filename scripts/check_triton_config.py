"""Parses config.pbtxt files against Triton's own model-config schema (tritonclient's
model_config_pb2, the ModelConfig message Triton reads), and checks them against their ONNX model.

    python scripts/check_triton_config.py REPO_DIR

Prints one JSON line per model; exits non-zero on the first config Triton would refuse. The module
is loaded from its file, not through `tritonclient.grpc`, whose package import needs grpcio.
"""
import importlib.util
import json
import os
import sys

import onnx
import tritonclient
from google.protobuf import text_format


def model_config_module():
    path = os.path.join(os.path.dirname(tritonclient.__file__), "grpc", "model_config_pb2.py")
    spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def dims_of(value_info):
    return [d.dim_value if d.HasField("dim_value") else -1 for d in value_info.type.tensor_type.shape.dim]


def main(repo):
    mc = model_config_module()
    for name in sorted(os.listdir(repo)):
        model_dir = os.path.join(repo, name)
        if not os.path.isdir(model_dir):
            continue
        text = open(os.path.join(model_dir, "config.pbtxt")).read()
        config = text_format.Parse(text, mc.ModelConfig())  # raises on any unknown field or value
        assert config.name == name, (config.name, name)
        assert config.backend == "onnxruntime", config.backend
        assert config.max_batch_size >= 1
        versions = sorted(v for v in os.listdir(model_dir) if v.isdigit())
        assert versions, f"{name}: no version directory"
        for v in versions:
            model = onnx.load(os.path.join(model_dir, v, "model.onnx"))
            onnx.checker.check_model(model, full_check=True)
            g = model.graph
            inits = {i.name for i in g.initializer}
            inputs = [i for i in g.input if i.name not in inits]
            for cfg, graph in ((config.input, inputs), (config.output, list(g.output))):
                assert [t.name for t in cfg] == [t.name for t in graph], (list(cfg), graph)
                for t, gt in zip(cfg, graph):
                    assert t.data_type == mc.TYPE_FP32
                    # Triton's dims leave out the batch dimension, which must be symbolic.
                    assert dims_of(gt)[0] == -1, (t.name, dims_of(gt))
                    want = dims_of(gt)[1:]
                    if all(d > 0 for d in want):
                        assert list(t.dims) == want, (t.name, list(t.dims), want)
        print(json.dumps({
            "model": name,
            "versions": versions,
            "max_batch_size": config.max_batch_size,
            "inputs": {t.name: list(t.dims) for t in config.input},
            "outputs": {t.name: list(t.dims) for t in config.output},
            "dynamic_batching_delay_us": config.dynamic_batching.max_queue_delay_microseconds,
            "instance_group": [mc.ModelInstanceGroup.Kind.Name(g.kind) for g in config.instance_group],
        }))


if __name__ == "__main__":
    main(sys.argv[1])
