"""The case record shared by the per-op builders, and the deterministic per-case RNG."""

import zlib
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Case:
    """One golden case: where it goes, what it holds, and how it is compared."""

    op: str
    dtype: str  # run dtype name: f32 | f16 | bf16
    name: str
    description: str
    params: dict
    tensors: dict = field(default_factory=dict)  # "in.*" and "out.*" arrays, as stored
    tolerance: dict | None = None  # only ever tighter than the contract's defaults
    # Worst simulated-kernel error / tolerance (must stay < 1); None until the case's fairness
    # check ran (generate.py refuses to write such a case).
    check_ratio: float | None = None
    # Informational: worst error, in tolerance units, of a backend that ignores the case's
    # feature under test (e.g. skips activation quantization); > 1 means the case catches it.
    discrimination: float | None = None

    @property
    def path(self):
        """Relative path of the case file inside the golden directory."""
        return f"{self.op}/{self.dtype}/{self.name}.safetensors"


def case_rng(op, dtype, name):
    """A RandomState seeded by a stable hash of the case identity.

    RandomState (not Generator) because numpy freezes its streams across versions.
    """
    return np.random.RandomState(zlib.crc32(f"{op}/{dtype}/{name}".encode("utf-8")))
