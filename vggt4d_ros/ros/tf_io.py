"""The node's side of TF: listen to ``/tf`` and ``/tf_static``, choose how to join the robot's tree, publish.

tf2_ros is not installable from PyPI, so the node keeps its own time-indexed
:class:`~vggt4d_ros.windows.tf_buffer.TransformBuffer` (ROS-free, interpolating, chain lookups) and fills it from
two subscriptions: ``/tf`` (reliable, volatile, depth 100, as tf2's listener) and ``/tf_static`` (reliable,
transient local, so transforms published before the node started arrive too). Transforms the node publishes
itself are not put into the buffer (they would make the camera frame look as if it had a parent).

Modes (parameter ``tf_mode``; REP-105 ``map -> odom -> base_link -> ... -> camera``):

* ``map_to_odom``: the node publishes ``map_frame -> odom_frame`` such that ``map -> odom -> ... -> camera`` is
  the estimated camera pose at the newest processed frame (:meth:`Stitcher.map_to_odom`), and republishes it at
  ``tf_publish_rate`` stamped ``now + transform_tolerance`` (slam_toolbox / rtabmap do the same) so that
  consumers can always look it up. The windows get the metric ``odom -> camera`` poses of their frames. When
  ``odom_frame`` already has a parent (another localization node publishes ``map -> odom``), nothing is published
  (logged as an error): the odometry still gives the scale.
* ``map_to_camera`` (a bare camera, a bag without TF): ``map_frame -> camera frame`` for every processed frame,
  stamped with the frame's stamp; when the camera frame already has a parent on ``/tf`` or ``/tf_static``
  (detected, logged once), ``map_frame -> <camera frame>_vggt4d`` instead: a frame never gets a second parent.
* ``auto``: ``map_to_odom`` when ``odom_frame -> camera frame`` can be looked up within ``tf_timeout`` seconds
  after the first image, else ``map_to_camera``. The choice is made once (at the first window, on the worker
  thread), logged, and shown on ``/diagnostics`` (``tf_mode``, ``tf_child``).
* ``none``: no listening, no publishing.

``publish_tf: false`` keeps the listening (scale, anchoring, ``~/odometry``'s child frame) and publishes nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from vggt4d_ros.windows.tf_buffer import TransformBuffer, TransformLookupError

from .conversions import matrix_to_transform_stamped, ns_to_stamp, stamp_to_ns, transform_to_matrix
from .qos import map_cloud_qos, reliable_qos

__all__ = ["TF_MODES", "TF_SUFFIX", "TfSettings", "TfBridge"]

logger = logging.getLogger(__name__)

TF_MODES = ("auto", "map_to_odom", "map_to_camera", "none")
#: Appended to the camera frame's name when that frame already has a parent (map_to_camera mode).
TF_SUFFIX = "_vggt4d"
_POLL_S = 0.02


@dataclass(frozen=True)
class TfSettings:
    """The TF parameters of the node (see ``config/vggt4d.yaml``)."""

    mode: str = "auto"
    map_frame: str = "map"
    odom_frame: str = "odom"
    base_frame: str = "base_link"
    publish: bool = True
    publish_rate: float = 20.0
    tolerance_s: float = 0.1
    timeout_s: float = 2.0
    cache_time_s: float = 60.0
    odometry_for_scale: bool = False  # look up odometry even in map_to_camera mode (scale_source 'odometry')

    @classmethod
    def from_params(cls, p: Any) -> "TfSettings":
        return cls(mode=p.tf_mode, map_frame=p.map_frame, odom_frame=p.odom_frame, base_frame=p.base_frame,
                   publish=p.publish_tf, publish_rate=p.tf_publish_rate, tolerance_s=p.transform_tolerance,
                   timeout_s=p.tf_timeout, cache_time_s=p.tf_cache_time,
                   odometry_for_scale=p.scale_source == "odometry")


class TfBridge:
    """TF listening, mode choice and publishing for one node (see the module docstring).

    Thread use: the subscriptions and the republish timer run on the executor; :meth:`window_odometry`,
    :meth:`odometry_child` and :meth:`publish_window` are called by the worker thread (they may wait up to
    ``tf_timeout`` for transforms). The buffer is thread-safe; the rest is guarded by a lock.

    Args:
        node: the (lifecycle) node.
        settings: TF parameters.
        tf_type: ``tf2_msgs.msg.TFMessage``.
        publisher: the ``/tf`` publisher (None: publish nothing).
        callback_group: group of the subscriptions and the timer.
    """

    def __init__(self, node: Any, settings: TfSettings, tf_type: type, publisher: Any,
                 callback_group: Any = None) -> None:
        self._node = node
        self.settings = settings
        self._tf_type = tf_type
        self._publisher = publisher if settings.publish else None
        self._group = callback_group
        self._counts = {"tf_invalid": 0, "tf_lookup_failed": 0}
        self.buffer = TransformBuffer(cache_time_s=settings.cache_time_s)
        self._lock = threading.Lock()
        self._subs: list = []
        self._timer = None
        self._own_edges: set[tuple[str, str]] = set()
        self._first_image_wall: float | None = None
        self._mode: str | None = "none" if settings.mode == "none" else None
        self._child: str | None = None
        self._camera: str | None = None
        self._map_to_odom: np.ndarray | None = None
        self._odom_taken = False  # odom_frame has another parent: map -> odom is not published
        self._warned: set[str] = set()
        self._last_warn: dict[str, float] = {}

    # ------------------------------------------------------------------ life cycle
    def activate(self) -> None:
        """Subscribe to /tf and /tf_static and start the republish timer (not in mode ``none``)."""
        if self.settings.mode == "none":
            return
        node = self._node
        self._subs = [
            node.create_subscription(self._tf_type, "/tf", lambda m: self._on_tf(m, False), reliable_qos(100),
                                     callback_group=self._group),
            node.create_subscription(self._tf_type, "/tf_static", lambda m: self._on_tf(m, True),
                                     map_cloud_qos(100), callback_group=self._group),
        ]
        if self._publisher is not None and self.settings.mode in ("auto", "map_to_odom"):
            self._timer = node.create_timer(1.0 / self.settings.publish_rate, self._republish,
                                            callback_group=self._group)

    def deactivate(self) -> None:
        for sub in self._subs:
            self._node.destroy_subscription(sub)
        self._subs = []
        if self._timer is not None:
            self._node.destroy_timer(self._timer)
            self._timer = None

    def reset(self) -> None:
        """``~/reset``: the map is new, so the published map -> odom is forgotten (the mode stays)."""
        with self._lock:
            self._map_to_odom = None

    # ------------------------------------------------------------------ listening
    def _on_tf(self, msg: Any, static: bool) -> None:
        for t in msg.transforms:
            parent = t.header.frame_id.lstrip("/")
            child = t.child_frame_id.lstrip("/")
            if (parent, child) in self._own_edges:
                continue
            try:
                if not parent or not child or parent == child:
                    raise ValueError(f"bad frame names {parent!r} -> {child!r}")
                T = transform_to_matrix(t.transform)
                if not np.isfinite(T).all():
                    raise ValueError("non-finite transform")
                self.buffer.set_transform(parent, child, stamp_to_ns(t.header.stamp), T, static=static)
            except Exception as exc:  # noqa: BLE001 - bad input never stops the node
                self._counts["tf_invalid"] += 1
                self._warn_once(f"tf_invalid:{parent}->{child}", logging.WARNING,
                                f"ignoring a transform {parent!r} -> {child!r} on "
                                f"{'/tf_static' if static else '/tf'}: {exc}")

    def note_image(self) -> None:
        """Called for every accepted image: the first one starts the ``tf_timeout`` of mode ``auto``."""
        if self._first_image_wall is None:
            self._first_image_wall = time.monotonic()

    # ------------------------------------------------------------------ mode
    @property
    def mode(self) -> str | None:
        """``'map_to_odom'``, ``'map_to_camera'``, ``'none'``, or None while undecided."""
        return self._mode

    @property
    def child(self) -> str | None:
        """The child frame the node publishes under ``map_frame`` (None before the first window)."""
        return self._child

    def _wait_for(self, target: str, source: str, stamp_ns: int | None, deadline: float) -> bool:
        while True:
            if self.buffer.can_transform(target, source, stamp_ns):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_S)

    def resolve(self, camera: str) -> str:
        """Decide the mode (once) and the published child frame for ``camera``; returns the mode."""
        s = self.settings
        if self._mode is None:
            if s.mode == "map_to_odom":
                mode = "map_to_odom"
            else:
                start = self._first_image_wall if self._first_image_wall is not None else time.monotonic()
                if s.mode == "auto" and self._wait_for(s.odom_frame, camera, None, start + s.timeout_s):
                    mode = "map_to_odom"
                else:
                    mode = "map_to_camera"
            with self._lock:
                self._mode = mode
            why = {"auto": f" (auto: {s.odom_frame} -> {camera} "
                           f"{'found' if mode == 'map_to_odom' else f'not found within {s.timeout_s:g} s'})"}
            logger.info("tf_mode %s%s", mode, why.get(s.mode, ""))
        if self._mode != "none":
            self._choose_child(camera)
        return self._mode

    def _choose_child(self, camera: str) -> None:
        s = self.settings
        if self._mode == "map_to_odom":
            self._child, self._camera = s.odom_frame, camera
            parent = self.buffer.parent_of(s.odom_frame)
            if parent is not None and not self._odom_taken:
                self._odom_taken = True
                logger.error("%s already has the parent %s on TF (another localization node?): not publishing "
                             "%s -> %s, a frame cannot have two parents", s.odom_frame, parent, s.map_frame,
                             s.odom_frame)
            return
        parent = self.buffer.parent_of(camera)
        if self._child is None or self._camera != camera:
            self._camera = camera
            self._child = camera if parent is None else camera + TF_SUFFIX
            if parent is not None:
                logger.warning("%s already has the parent %s on TF: publishing %s -> %s instead (a frame cannot "
                               "have two parents)", camera, parent, s.map_frame, self._child)
            else:
                logger.info("publishing %s -> %s", s.map_frame, camera)
        elif self._child == camera and parent is not None:
            self._child = camera + TF_SUFFIX
            logger.warning("%s got the parent %s on TF: from now on publishing %s -> %s instead", camera, parent,
                           s.map_frame, self._child)

    # ------------------------------------------------------------------ lookups for a window
    def window_odometry(self, camera: str, stamps_ns: Sequence[int]) -> np.ndarray | None:
        """``[S, 4, 4]`` metric ``odom_frame -> camera`` poses (camera-to-odom) at the frames' stamps, or None
        when the mode does not use odometry or a lookup fails within ``tf_timeout`` (logged, counted as
        ``tf_lookup_failed``)."""
        mode = self.resolve(camera)
        s = self.settings
        if mode == "none" or not (mode == "map_to_odom" or s.odometry_for_scale):
            return None
        stamps = [int(x) for x in stamps_ns]
        deadline = time.monotonic() + s.timeout_s
        try:
            if not self._wait_for(s.odom_frame, camera, max(stamps), deadline):
                raise TransformLookupError(f"no {s.odom_frame} -> {camera} at {max(stamps) * 1e-9:.3f} s within "
                                           f"{s.timeout_s:g} s")
            return np.stack([self.buffer.lookup(s.odom_frame, camera, st) for st in stamps])
        except LookupError as exc:
            self._counts["tf_lookup_failed"] += 1
            self._warn_throttled("lookup", f"no odometry for a window ({exc}); its scale and anchoring fall back")
            return None

    def odometry_child(self, camera: str, stamp_ns: int) -> tuple[str, np.ndarray]:
        """Child frame of ``~/odometry`` and the pose of that frame in the camera frame ``[4, 4]``:
        ``base_frame`` when TF has ``base_frame -> camera`` at ``stamp_ns``, else the published camera frame
        (identity)."""
        s = self.settings
        if self._mode not in (None, "none"):
            try:
                if self.buffer.can_transform(camera, s.base_frame, int(stamp_ns)):
                    return s.base_frame, self.buffer.lookup(camera, s.base_frame, int(stamp_ns))
            except LookupError:
                pass
        child = self._child if self._mode == "map_to_camera" and self._child else camera
        return child, np.eye(4)

    # ------------------------------------------------------------------ publishing
    def publish_window(self, c2w: np.ndarray, headers: Sequence[Any], map_to_odom: np.ndarray | None) -> None:
        """Publish the TF of one window: in ``map_to_camera`` one transform per frame (``c2w`` ``[N, 4, 4]``
        map-frame poses of the optical camera, ``headers`` their image headers); in ``map_to_odom`` the new
        map -> odom ``[4, 4]`` (kept and republished by the timer)."""
        s = self.settings
        if self._mode == "map_to_odom":
            if map_to_odom is not None and np.isfinite(map_to_odom).all():
                with self._lock:
                    self._map_to_odom = np.asarray(map_to_odom, dtype=np.float64)
                self._republish()
            return
        if self._mode != "map_to_camera" or self._publisher is None or not len(headers):
            return
        child = self._child or headers[0].frame_id
        self._own_edges.add((s.map_frame, child))
        msg = self._tf_type()
        msg.transforms = [matrix_to_transform_stamped(T, h.stamp, s.map_frame, child) for T, h in zip(c2w, headers)]
        self._publisher.publish(msg)

    def _republish(self) -> None:
        """Timer (and after each window): map -> odom stamped now + transform_tolerance."""
        try:
            with self._lock:
                T = self._map_to_odom
            if T is None or self._publisher is None or self._odom_taken:
                return
            s = self.settings
            now_ns = self._node.get_clock().now().nanoseconds
            self._own_edges.add((s.map_frame, s.odom_frame))
            msg = self._tf_type()
            msg.transforms = [matrix_to_transform_stamped(T, ns_to_stamp(now_ns + int(s.tolerance_s * 1e9)),
                                                          s.map_frame, s.odom_frame)]
            self._publisher.publish(msg)
        except Exception as exc:  # noqa: BLE001 - a timer must never raise
            self._warn_throttled("republish", f"publishing {self.settings.map_frame} -> "
                                              f"{self.settings.odom_frame} failed: {type(exc).__name__}: {exc}")

    def values(self) -> dict[str, Any]:
        """What ``/diagnostics`` shows about TF: the mode, the published child frame, and the counters
        ``tf_invalid`` (transforms ignored: bad names or non-finite values) and ``tf_lookup_failed`` (windows
        without odometry although the mode uses it)."""
        return {"tf_mode": self._mode or f"{self.settings.mode} (undecided)", "tf_child": self._child or "",
                **self._counts}

    # ------------------------------------------------------------------ logging
    def _warn_once(self, key: str, level: int, message: str) -> None:
        if key in self._warned:
            return
        self._warned.add(key)
        logger.log(level, message)

    def _warn_throttled(self, key: str, message: str, period_s: float = 5.0) -> None:
        now = time.monotonic()
        if now - self._last_warn.get(key, -1e9) >= period_s:
            self._last_warn[key] = now
            logger.warning(message)
