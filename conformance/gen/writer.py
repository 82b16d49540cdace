"""Run dtypes and deterministic safetensors output."""

import json

import ml_dtypes
import numpy as np
from safetensors import deserialize
from safetensors.numpy import save

GEN_VERSION = "1"
SOURCE = f"moemla conformance/gen {GEN_VERSION}: numpy float64 reference"

# Run dtype name (as in the golden path) -> numpy storage type.
RUN_DTYPES = {"f32": np.float32, "f16": np.float16, "bf16": ml_dtypes.bfloat16}


def to_run_dtype(a, dtype_name):
    """Round float values to the run dtype (IEEE round-to-nearest-even from float32)."""
    return np.ascontiguousarray(np.asarray(a, dtype=np.float32).astype(RUN_DTYPES[dtype_name]))


def _canonical_header(blob):
    """Re-emit the header with `__metadata__` keys sorted.

    safetensors writes the metadata map in hash order, which changes from run to run; the
    bytes of the header are otherwise deterministic. Sorting the keys (same JSON, same
    length) makes whole files reproducible byte for byte.
    """
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", None)
    ordered = {} if meta is None else {"__metadata__": dict(sorted(meta.items()))}
    ordered.update(header)
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (n - len(text))
    if len(text) != n:
        raise RuntimeError("canonical safetensors header changed length")
    return blob[:8] + text + blob[8 + n :]


def case_bytes(tensors, op, params, description, tolerance=None):
    """Serialise one case: tensors dict (name -> array) plus the contract's metadata."""
    meta = {
        "op": op,
        "params": json.dumps(params, separators=(",", ":")),
        "source": SOURCE,
        "description": description,
    }
    if tolerance:
        meta["tolerance"] = json.dumps(tolerance, separators=(",", ":"))
    blob = _canonical_header(save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, meta))
    # Read it back through safetensors to prove the file is well-formed.
    names = {name for name, _ in deserialize(blob)}
    if names != set(tensors):
        raise RuntimeError(f"round trip lost tensors: {sorted(set(tensors) ^ names)}")
    return blob
