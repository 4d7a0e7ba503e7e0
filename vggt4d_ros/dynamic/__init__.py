"""VGGT4D: training-free dynamic masks from VGGT attention, and dynamic-robust camera poses.

Stages: :mod:`.cues` (streamed attention cues), :mod:`.masks` (clustering + adaptive multi-Otsu),
:mod:`.refine` (projection refinement), and the masked second pass, tied together by :class:`VGGT4D`.
Public names are imported lazily, so importing one stage module does not import the others.
"""

from importlib import import_module

_EXPORTS = {
    "VGGT4D": "pipeline", "VGGT4DConfig": "pipeline", "VGGT4DResult": "pipeline", "attention_cues": "pipeline",
    "CueAccumulator": "cues", "CueConfig": "cues", "RefineConfig": "refine", "refine_dynamic_mask": "refine",
    "cluster_dynamic_points": "refine",
    "coarse_dynamic_mask": "masks",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
