"""Writes the ONNX standard's backend node tests of the operators stn computes on tract with its
own kernels: GridSample, AffineGrid, MaxPool and Conv.

    python scripts/onnx_node_tests.py OUT_DIR

The onnx wheel no longer ships onnx/backend/test/data/node; its case generators
(onnx.backend.test.case.node) rebuild it. This writes those operators' cases in the onnx
repository's layout: OUT_DIR/<case>/model.onnx and
OUT_DIR/<case>/test_data_set_<i>/{input,output}_<j>.pb (TensorProto), `_expanded` variants
(the function body instead of the operator) included.
"""

import os
import shutil
import sys
import warnings

from onnx import numpy_helper
from onnx.backend.test.case import node


def main():
    out = sys.argv[1]
    # All cases at once (the generators run when their modules are imported, once), then ours.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = [c for c in node.collect_testcases()
                 if c.name.startswith(("test_gridsample", "test_affine_grid", "test_maxpool",
                                       "test_basic_conv", "test_conv_"))]
    for case in cases:
        d = os.path.join(out, case.name)
        if os.path.exists(d):
            shutil.rmtree(d)
        os.makedirs(d)
        with open(os.path.join(d, "model.onnx"), "wb") as f:
            f.write(case.model.SerializeToString())
        for i, (inputs, outputs) in enumerate(case.data_sets):
            s = os.path.join(d, f"test_data_set_{i}")
            os.makedirs(s)
            for kind, values, infos in (("input", inputs, case.model.graph.input),
                                         ("output", outputs, case.model.graph.output)):
                for j, v in enumerate(values):
                    with open(os.path.join(s, f"{kind}_{j}.pb"), "wb") as f:
                        f.write(numpy_helper.from_array(v, infos[j].name).SerializeToString())
    print(f"wrote {len(cases)} cases to {out}")


if __name__ == "__main__":
    main()
