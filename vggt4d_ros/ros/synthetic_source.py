"""TEST ONLY: the node's ``geometry_source: synthetic`` -- the synthetic scene's true geometry in place of the
network.

Geometry through the whole node (TF, metric scale, map, path) cannot be judged with the random-weight tiny
model, so tests let the node take its windows' depth, cameras and masks from
:class:`vggt4d_ros.synthetic_geometry.SyntheticGeometrySource` (the truth of :func:`vggt4d_ros.synthetic.render_scene`
in a random scale per window, with noise). Windows, stitching, TF and publishing stay the real code. The scene
is given by the ``synthetic_scene`` parameter, e.g. ``"seed=3 frames=24"``; a test publishes the images (and
TF) of the same ``render_scene`` call. Never use it with a real camera.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SCENE_KEYS", "parse_scene", "synthetic_source"]

#: key -> type of the ``synthetic_scene`` parameter's pairs.
SCENE_KEYS: dict[str, type] = {"seed": int, "frames": int, "fps": float, "depth_noise": float,
                               "pose_noise": float, "noise_seed": int}


def parse_scene(spec: str) -> dict[str, Any]:
    """``"seed=3 frames=24"`` -> ``{"seed": 3, "frames": 24}``.

    Raises:
        ValueError: a pair that is not ``key=value``, an unknown key, or a value of the wrong type.
    """
    out: dict[str, Any] = {}
    for pair in spec.split():
        key, sep, value = pair.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"expected key=value pairs separated by spaces, got {pair!r}")
        if key not in SCENE_KEYS:
            raise ValueError(f"unknown key {key!r}; expected some of {', '.join(SCENE_KEYS)}")
        try:
            out[key] = SCENE_KEYS[key](value)
        except ValueError:
            raise ValueError(f"{key} must be of type {SCENE_KEYS[key].__name__}, got {value!r}") from None
    if "frames" not in out:
        raise ValueError("the scene needs frames=N (the number of frames the test renders)")
    return out


def synthetic_source(spec: str) -> Any:
    """The geometry source for ``spec`` (see :func:`parse_scene`); its ``run(stamps_ns, infos)`` returns what
    the node reads from a VGGT4D result."""
    from vggt4d_ros.synthetic_geometry import SyntheticGeometrySource

    kwargs = parse_scene(spec)
    kwargs["num_frames"] = kwargs.pop("frames")
    return SyntheticGeometrySource(**kwargs)
