"""The peer of stn-serve's benchmark: KServe's Python model server (kserve.ModelServer) with a
kserve.Model around onnxruntime, serving the same ONNX file over the same v2 REST protocol.

    python scripts/serve_peer_kserve.py --model models/stn.onnx --port 8124 --threads 2
"""
import argparse
import uuid

import numpy as np
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer


class StnModel(Model):
    def __init__(self, name, path, threads):
        super().__init__(name)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        self.session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        self.ready = True

    def predict(self, payload: InferRequest, headers=None):
        x = payload.inputs[0].as_numpy().astype(np.float32)
        (lp,) = self.session.run(["log_probs"], {"input": x})
        out = InferOutput(name="log_probs", shape=list(lp.shape), datatype="FP32")
        out.set_data_from_numpy(lp, binary_data=False)
        return InferResponse(model_name=self.name, infer_outputs=[out], response_id=payload.id or str(uuid.uuid4()))


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="models/stn.onnx")
    p.add_argument("--name", default="stn")
    p.add_argument("--port", type=int, default=8124)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    ModelServer(http_port=a.port, workers=1, enable_grpc=False).start([StnModel(a.name, a.model, a.threads)])
