"""Arrays across Triton's Python-backend stub, for the model files beside this one (copied with them).

The stub (its C++) is built against numpy 1's C API. With numpy 1 on its path (what ``ffsplit serve`` gives
it) arrays cross as they are; with numpy 2 they cross wrongly, so numeric tensors go through DLPack.
"""

import numpy as np
import triton_python_backend_utils as pb_utils

NUMPY1 = int(np.__version__.split(".")[0]) < 2


def from_triton(tensor):
    return tensor.as_numpy() if NUMPY1 else np.from_dlpack(tensor)


def to_triton(name, array):
    array = np.ascontiguousarray(array)
    return pb_utils.Tensor(name, array) if NUMPY1 else pb_utils.Tensor.from_dlpack(name, array)
