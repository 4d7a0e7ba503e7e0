"""The VGGT4D ROS 2 node: a managed (lifecycle) node turning a camera stream into dynamic masks, camera poses,
TF, odometry and static point clouds.

Life cycle (``rclpy.lifecycle``; drive it with the standard ``~/change_state`` service, or set ``autostart``):

* ``configure``: validates every parameter (all problems reported at once), resolves the device, loads the
  checkpoint (hub id or local path; a missing file or key mismatch fails here with one message), runs a tiny
  warm-up forward pass, builds the VGGT4D pipeline and creates the output publishers. Any problem logs one
  error line and returns FAILURE (the node stays *unconfigured*).
* ``activate``: starts the worker thread and subscribes to the input topics.
* ``deactivate``: unsubscribes and stops the worker; the window being processed is finished and published,
  queued windows and keyframes still waiting for a window are dropped (counted as ``dropped.deactivated``).
* ``cleanup``: releases the model and the device memory (``torch.cuda.empty_cache``); ``shutdown`` does all of it.

Inputs (relative names, so a bag's ``/image`` reaches a node in the root namespace without remapping):
``image`` (sensor_msgs/Image: rgb8, bgr8, rgba8, bgra8, mono8, ...) or ``image/compressed``
(sensor_msgs/CompressedImage, JPEG/PNG) per ``input_transport``, and optionally ``camera_info``.

Threading: the image callback only takes the message (and notes DDS sequence-number and stamp gaps, see
:mod:`vggt4d_ros.ros.input_gaps`) and returns; the input thread (:class:`~vggt4d_ros.ros.intake.InputQueue`,
``input_queue_size`` messages) converts, validates, preprocesses (keyframes) and hands the frame to the windows
layer, so neither decoding nor a busy worker can starve the executor. Complete windows go to a
:class:`WindowWorker` whose thread runs VGGT4D, stitches the window into the map (:class:`Stitcher`) and
publishes the outputs (rclpy publishers may be used from any thread). With ``drop_policy: wait`` the input
thread waits for room in the window queue instead of dropping a window (images then wait in the input queue:
for senders with back-pressure, such as ``vggt4d replay --rate 0``). Invalid input never raises out of a
callback: it is logged (throttled, one line per reason) and counted by reason on ``/diagnostics``.

End of input: when no image arrives for ``flush_timeout`` seconds (wall clock) while the worker is idle, the partial
window is processed and the next image starts a new segment, so the last frames of a bag are not left waiting;
``keyframes_pending`` on ``/diagnostics`` is then 0 once everything has been published (see
:mod:`vggt4d_ros.ros.diagnostics`). While a window is being processed or waits in the queue the input does not
count as idle (a sender with back-pressure, such as ``vggt4d replay --rate 0``, pauses until the worker is
free): the quiet time is counted from the later of the last image and the moment the worker became free.

Services: ``~/reset`` (std_srvs/Trigger: drop pending windows, the map and the trajectory; window numbering
restarts; answers at once: the window in flight is marked stale and its outputs are discarded) and ``~/save_map`` (std_srvs/Trigger: writes ``map.ply`` and ``trajectory.txt`` (TUM) into
``save_directory``, with the process's umask).

Shutdown: SIGINT/SIGTERM at any moment end the process with status 0 and no ERROR line; the window in flight
is discarded (the process: :mod:`vggt4d_ros.ros.node_main`).

Outputs: see :mod:`vggt4d_ros.ros.publishers` and :mod:`vggt4d_ros.ros.window_outputs`. Frames and TF (REP-105
``map -> odom``, or ``map -> camera`` for a bare camera; never a second parent): see :mod:`vggt4d_ros.ros.tf_io`.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header
from std_srvs.srv import Trigger

from vggt4d_ros.model.preprocess import PreprocessInfo, plan_geometry, preprocess_frame
from vggt4d_ros.windows import (
    Frame,
    KeyframeSelector,
    SegmentTracker,
    Stitcher,
    Trajectory,
    VoxelMap,
    Window,
    WindowAssembler,
    WindowBuilder,
    WindowWorker,
    write_ply,
    save_tum,
)
from vggt4d_ros.windows.worker import current_worker, is_out_of_memory

from .bond import ManagerBond
from .conversions import (
    IMAGE_ENCODINGS,
    ImageConversionError,
    compressed_to_rgb,
    image_to_rgb,
    points_to_pointcloud2,
    stamp_to_ns,
)
from .diagnostics import NodeStats, build_status, device_memory_bytes
from .input_gaps import InputGapEstimator
from .intake import InputQueue
from .params import (
    NodeParams,
    ParameterError,
    check_parameter_update,
    declare_node_parameters,
    read_node_parameters,
    resolve_device,
    resolve_dtype,
    unknown_overrides,
)
from .publishers import OutputPublishers, make_header, output_depths
from .qos import qos_from_name
from .synthetic_source import synthetic_source
from .tf_io import TfBridge, TfSettings
from .window_geometry import window_geometry
from .window_outputs import WindowOutputs

__all__ = ["VGGT4DNode", "NodeFrame", "NonFiniteOutputError"]

logger = logging.getLogger(__name__)

DEFAULT_NODE_NAME = "vggt4d"
FALLBACK_CAMERA_FRAME = "vggt4d_camera_optical"
_LOG_THROTTLE_S = 5.0


class NonFiniteOutputError(RuntimeError):
    """The network produced NaN/Inf camera poses or intrinsics for a window."""


class _ConfigureError(RuntimeError):
    """A configure step failed; the message is the one error line."""


@dataclass(eq=False)
class NodeFrame(Frame):
    """A :class:`Frame` with what the node needs to publish its outputs.

    Attributes:
        model_image: ``[3, H, W]`` float32 model input (set for keyframes).
        prep: geometry of the preprocessing (maps masks and intrinsics back to the input resolution).
        header: the input image's header (stamp and frame_id of every per-frame output).
        recv_time: ``time.monotonic()`` when the image was received (latency).
        camera_info: the input camera_info the frame's ``K`` comes from (copied into the outputs' twins).
    """

    model_image: torch.Tensor | None = None
    prep: PreprocessInfo | None = None
    header: Header | None = None
    recv_time: float = 0.0
    camera_info: CameraInfo | None = None


def _classify_failure(exc: BaseException) -> str:
    if isinstance(exc, NonFiniteOutputError):
        return "nan_output"
    if is_out_of_memory(exc):
        return "out_of_memory"
    return "error"


def _invalid_reason(msg: Image | CompressedImage, compressed: bool) -> str:
    """Counter name for an image that failed to convert: ``empty_image``, ``bad_encoding``,
    ``size_mismatch`` (raw) or ``decode_error`` (compressed)."""
    if compressed:
        return "empty_image" if len(msg.data) == 0 else "decode_error"
    if msg.width == 0 or msg.height == 0 or len(msg.data) == 0:
        return "empty_image"
    if msg.encoding not in IMAGE_ENCODINGS:
        return "bad_encoding"
    return "size_mismatch"


def _default_save_directory() -> Path:
    ros_home = os.environ.get("ROS_HOME")
    base = Path(ros_home) if ros_home else Path.home() / ".ros"
    return base / "vggt4d"


class VGGT4DNode(LifecycleNode):
    """Managed node running VGGT4D on sliding windows of a camera stream (see the module docstring)."""

    def __init__(self, node_name: str = DEFAULT_NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._declaration_problems = declare_node_parameters(self)
        self.add_on_set_parameters_callback(lambda params: check_parameter_update(self, params))

        self.stats = NodeStats()
        self.params: NodeParams | None = None
        self.model: torch.nn.Module | None = None
        self.pipeline: Any = None
        self.device: str | None = None
        self.configure_error: str | None = None
        self.state_label = "unconfigured"

        self._state_lock = threading.RLock()
        self._active = False
        self._pubs: OutputPublishers | None = None
        self._assembler: WindowAssembler | None = None
        self._builder_seqs: list[int] = []
        self._worker: WindowWorker | None = None
        self._intake: InputQueue | None = None
        self._gaps = InputGapEstimator()
        self._stop_reason = "stopped"
        self._stitcher: Stitcher | None = None
        self._input_subscriptions: list = []
        self._processing_timers: list = []
        self._seq = 0
        self._geometry: dict[tuple[int, int], PreprocessInfo] = {}
        self._camera_info: tuple[int, int, np.ndarray] | None = None
        self._camera_info_msg: CameraInfo | None = None
        self._last_frame_wall: float | None = None
        self._segment_has_frames = False
        self._last_input: tuple[int, str, int, int] | None = None
        self._last_stamp = None
        self._map_version = 0
        self._map_published_version = 0
        self._retry_index: int | None = None
        self._started_index: int | None = None
        self._last_log: dict[str, float] = {}
        self._warned_frame_id = False
        self._last_report: dict[str, int] = {}
        self._tf: TfBridge | None = None
        self._outputs: WindowOutputs | None = None
        self._bond = ManagerBond(self)  # a Nav2 lifecycle manager's bond, answered while active

        self._input_group = MutuallyExclusiveCallbackGroup()
        self._timer_group = MutuallyExclusiveCallbackGroup()
        self._tf_group = MutuallyExclusiveCallbackGroup()
        self._service_group = MutuallyExclusiveCallbackGroup()
        self._steady = Clock(clock_type=ClockType.STEADY_TIME)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diag_timer = self.create_timer(1.0, self._publish_diagnostics, callback_group=self._timer_group,
                                             clock=self._steady)
        self._reset_srv = self.create_service(Trigger, "~/reset", self._on_reset,
                                              callback_group=self._service_group)
        self._save_srv = self.create_service(Trigger, "~/save_map", self._on_save_map,
                                             callback_group=self._service_group)

    # ================================================================== lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.configure_error = None
        try:
            params = read_node_parameters(self, self._declaration_problems)
        except ParameterError as exc:
            return self._configure_failed(str(exc))
        unknown = unknown_overrides(self)
        if unknown:
            text = f"unknown parameter override(s), not used by this node: {unknown}"
            if params.strict_parameters:
                return self._configure_failed(text + " (strict_parameters is true)")
            self.get_logger().warning(text)
        try:
            from tf2_msgs.msg import TFMessage
            from vggt4d_ros.msg import Window as WindowMsg
        except ImportError as exc:
            return self._configure_failed(
                f"message types are missing ({exc}); build the package with colcon and run the node from its "
                f"install space (see README)")
        try:
            device = resolve_device(params.device)
            dtype = resolve_dtype(params.dtype, device)
        except ValueError as exc:
            return self._configure_failed(str(exc))
        if params.geometry_source == "synthetic":
            try:
                model, pipeline = None, synthetic_source(params.synthetic_scene)
            except ValueError as exc:
                return self._configure_failed(str(exc))
            self.get_logger().warning(f"TEST ONLY: geometry_source 'synthetic' ({params.synthetic_scene}) replaces "
                                      f"the network by the synthetic scene's true geometry")
        else:
            try:
                model, pipeline = self._load_pipeline(params, device, dtype)
            except _ConfigureError as exc:
                return self._configure_failed(str(exc))

        with self._state_lock:
            self.params = params
            self.device = device
            self.model = model
            self.pipeline = pipeline
            self._pubs = OutputPublishers(self, WindowMsg, TFMessage, params.publish_overlay,
                                          depths=output_depths(params.output_qos_depth, params.window_size),
                                          gate=self._may_publish)
            self._tf = TfBridge(self, TfSettings.from_params(params), TFMessage, self._pubs.tf,
                                callback_group=self._tf_group)
            self._outputs = WindowOutputs(params, self._pubs, self._tf, WindowMsg)
            self._new_processing_state()
            self.stats.reset()
            self._gaps = InputGapEstimator(max_gap_s=params.max_gap)
            self.stats.set_value("device", device)
            self.stats.set_value("dtype", dtype)
            if unknown:
                self.stats.set_value("unknown_parameters", "; ".join(unknown))
        self.destroy_timer(self._diag_timer)
        self._diag_timer = self.create_timer(params.diagnostics_period, self._publish_diagnostics,
                                             callback_group=self._timer_group, clock=self._steady)
        self.state_label = "inactive"
        self.get_logger().info(
            f"configured: weights {params.weights!r} ({params.model_config}) on {device} ({dtype}), windows of "
            f"{params.window_size} keyframes overlapping by {params.window_overlap}, input "
            f"{self._input_topic(params)} ({params.input_qos})")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        ret = super().on_activate(state)
        if ret != TransitionCallbackReturn.SUCCESS:
            return ret
        try:
            with self._state_lock:
                self._start_processing()
                self._active = True
        except Exception as exc:  # noqa: BLE001
            self.get_logger().error(f"activate failed: {type(exc).__name__}: {exc}")
            self._stop_processing("deactivated")
            super().on_deactivate(state)
            return TransitionCallbackReturn.FAILURE
        self.state_label = "active"
        self._bond.start()
        assert self.params is not None
        self.get_logger().info(f"active: listening on {self.resolve_topic_name(self._input_topic(self.params))}")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing("deactivated")
        self.state_label = "inactive"
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_all()
        self.state_label = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing("shutdown")
        self._release_all()
        self.state_label = "finalized"
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error(f"error during a transition from '{state.label}': releasing everything")
        try:
            self._stop_processing("error")
            self._release_all()
        except Exception as exc:  # noqa: BLE001
            self.get_logger().error(f"error recovery failed: {type(exc).__name__}: {exc}")
            return TransitionCallbackReturn.FAILURE
        self.state_label = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    # ------------------------------------------------------------------ lifecycle helpers
    def _configure_failed(self, message: str) -> TransitionCallbackReturn:
        self.configure_error = message
        self.get_logger().error(f"configure failed: {message}")
        return TransitionCallbackReturn.FAILURE

    def _load_pipeline(self, params: NodeParams, device: str, dtype: str) -> tuple[torch.nn.Module, Any]:
        """Load the checkpoint, build VGGT4D and warm it up; raises :class:`_ConfigureError` with one message."""
        try:
            from vggt4d_ros.model import load_model

            model = load_model(params.weights, params.model_config, device=device)
        except Exception as exc:  # noqa: BLE001 - every loading problem becomes one clear message
            raise _ConfigureError(
                f"cannot load weights {params.weights!r} with model_config {params.model_config!r}: "
                f"{type(exc).__name__}: {exc}") from exc
        try:
            from vggt4d_ros.dynamic import VGGT4D, VGGT4DConfig

            pipeline = VGGT4D(model, VGGT4DConfig(refine=params.refine, pass2_mask=params.pass2_mask,
                                                  static_conf_percentile=params.conf_threshold,
                                                  max_points_per_frame=params.max_points_per_frame,
                                                  dtype=params.dtype))
            if params.warmup:
                self._warm_up(model, device, dtype)
        except Exception as exc:  # noqa: BLE001
            del model
            self._release_device(device)
            raise _ConfigureError(f"warm-up forward pass on {device} failed: {type(exc).__name__}: {exc}") from exc
        return model, pipeline

    @staticmethod
    def _input_topic(params: NodeParams) -> str:
        return "image/compressed" if params.input_transport == "compressed" else "image"

    def _warm_up(self, model: torch.nn.Module, device: str, dtype: str) -> None:
        """One forward pass on two tiny frames (4 x 4 patches) so the first window runs at full speed."""
        patch = int(model.config.patch_size)
        images = torch.rand(2, 3, 4 * patch, 4 * patch, generator=torch.Generator().manual_seed(0)).to(device)
        use_bf16 = dtype == "bfloat16" and device.startswith("cuda")
        device_type = "cuda" if device.startswith("cuda") else "cpu"
        with torch.inference_mode(), torch.autocast(device_type=device_type, dtype=torch.bfloat16,
                                                    enabled=use_bf16):
            out = model(images)
        depth = out["depth"].float()
        if not bool(torch.isfinite(depth).all()):
            raise NonFiniteOutputError("the warm-up pass produced non-finite depth")
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)

    def _new_processing_state(self) -> None:
        """Fresh windows, map and trajectory (configure, reset). Lock held."""
        p = self.params
        assert p is not None
        self._assembler = WindowAssembler(
            builder=WindowBuilder(window_size=p.window_size, overlap=p.window_overlap),
            selector=KeyframeSelector(stride=p.keyframe_stride, min_period_s=p.keyframe_min_period),
            tracker=SegmentTracker(max_gap_s=p.max_gap),
        )
        self._builder_seqs = []
        self._stitcher = Stitcher(
            voxel_map=VoxelMap(voxel_size=p.voxel_size, max_points=p.max_map_points),
            trajectory=Trajectory(max_poses=p.max_path_length),
            max_points_per_frame=p.max_points_per_frame,
            scale_source="none" if p.tf_mode == "none" else p.scale_source,
            min_motion=p.min_motion,
        )
        if self._tf is not None:
            self._tf.reset()
        self._map_version += 1
        self._geometry.clear()
        self._last_frame_wall = None
        self._segment_has_frames = False
        self._started_index = None
        self._retry_index = None

    def _start_processing(self) -> None:
        """Worker, subscriptions and timers (activate). Lock held."""
        p = self.params
        assert p is not None
        self._start_worker()
        self._intake = InputQueue(self._handle_queued_input, max_size=p.input_queue_size,
                                  on_discard=lambda item: self.stats.count_invalid("inactive"),
                                  name="vggt4d-input")
        qos = qos_from_name(p.input_qos, p.input_qos_depth)
        if p.input_transport == "compressed":
            sub = self.create_subscription(CompressedImage, "image/compressed", self._on_compressed, qos,
                                           callback_group=self._input_group)
        else:
            sub = self.create_subscription(Image, "image", self._on_image, qos, callback_group=self._input_group)
        info_sub = self.create_subscription(CameraInfo, "camera_info", self._on_camera_info, qos,
                                            callback_group=self._input_group)
        self._input_subscriptions = [sub, info_sub]
        assert self._tf is not None
        self._tf.activate()
        self._processing_timers = [
            self.create_timer(p.map_publish_period, self._publish_map, callback_group=self._timer_group,
                              clock=self._steady)]
        if p.flush_timeout > 0:
            period = min(0.25, p.flush_timeout / 2.0)
            self._processing_timers.append(
                self.create_timer(period, self._check_idle, callback_group=self._timer_group, clock=self._steady))
        # a (re)activation starts a new segment: frames seen before are not continued
        self._begin_new_segment(None)
        self._map_published_version = -1  # publish the (possibly empty) map once for late subscribers

    def _start_worker(self) -> None:
        p = self.params
        assert p is not None
        self._worker = WindowWorker(
            self._process_window, max_queue=p.queue_size, drop_policy=p.drop_policy,
            on_result=self._on_window_result, on_error=self._on_window_error, on_drop=self._on_window_drop,
            retry_smaller=p.oom_retry, name="vggt4d-worker")

    def _stop_worker(self, reason: str, timeout: float | None = None, discard: bool = False) -> None:
        """Stop the worker (the window in flight is finished and published unless ``discard``; queued windows are
        dropped) and count every keyframe still waiting as dropped with ``reason``. Lock held."""
        worker, self._worker = self._worker, None
        self._stop_reason = reason
        if worker is not None and not worker.stop(timeout=timeout, drain=False, discard=discard):
            self.get_logger().warning(f"{reason}: the window in flight did not finish within {timeout:g} s")
        lost = self.stats.ledger.abandon_all(reason)
        if self._assembler is not None:
            self._assembler.builder.reset()
        self._builder_seqs = []
        if lost:
            self.get_logger().info(f"{reason}: {lost} keyframe(s) waiting for a window were dropped")

    def _stop_processing(self, reason: str, timeout: float | None = None, discard: bool = False) -> None:
        """Break the lifecycle-manager bond, unsubscribe, stop the timers, the input thread and the worker, and drop
        what is left (deactivate, shutdown). Images still waiting in the input queue are counted as
        ``invalid.inactive``."""
        self._bond.stop()
        intake, self._intake = self._intake, None
        self._active = False
        if intake is not None:
            intake.stop(timeout=timeout if timeout is not None else 30.0)
            st = intake.stats()
            self.stats.incr("frames_received", st["received"])
            self.stats.incr("input_overflow", st["overflow"])
        with self._state_lock:
            self._active = False
            for sub in self._input_subscriptions:
                self.destroy_subscription(sub)
            self._input_subscriptions = []
            if self._tf is not None:
                self._tf.deactivate()
            for timer in self._processing_timers:
                self.destroy_timer(timer)
            self._processing_timers = []
            self._stop_worker(reason, timeout, discard=discard)

    def release(self) -> None:
        """Stop processing and release the model and device memory (idempotent; used at process exit, where
        the window in flight gets at most 10 s to finish)."""
        self._stop_processing("shutdown", timeout=10.0, discard=True)
        self._release_all()
        self.state_label = "finalized"

    def _release_all(self) -> None:
        with self._state_lock:
            if self._pubs is not None:
                self._pubs.destroy()
                self._pubs = None
            device = self.device
            self.pipeline = None
            self.model = None
            self._tf = None
            self._outputs = None
            self._stitcher = None
            self._assembler = None
            self.params = None
            self.device = None
        self._release_device(device)

    @staticmethod
    def _release_device(device: str | None) -> None:
        gc.collect()
        if device is not None and device.startswith("cuda") and torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ================================================================== input
    def _throttled(self, key: str, level: int, message: str) -> None:
        now = time.monotonic()
        if now - self._last_log.get(key, -math.inf) < _LOG_THROTTLE_S:
            return
        self._last_log[key] = now
        if level >= logging.ERROR and self._shutting_down():
            logger.debug("while shutting down: %s", message)  # the context is gone: not an error of the node
            return
        log = self.get_logger()
        if level >= logging.ERROR:
            log.error(message)
        elif level >= logging.WARNING:
            log.warning(message)
        else:
            log.info(message)

    def _reject(self, reason: str, detail: str) -> None:
        count = self.stats.count_invalid(reason)
        self._throttled(f"invalid:{reason}", logging.WARNING,
                        f"dropping invalid image ({reason}, {count} so far): {detail}")

    # Two parameters: rclpy then passes the MessageInfo (DDS publication sequence number, publisher GID).
    def _on_image(self, msg: Image, info: Any) -> None:
        self._enqueue_input(msg, False, info)

    def _on_compressed(self, msg: CompressedImage, info: Any) -> None:
        self._enqueue_input(msg, True, info)

    def _enqueue_input(self, msg: Image | CompressedImage, compressed: bool, info: Any) -> None:
        """Subscription callback (executor thread): note gaps, queue the message, return."""
        recv = time.monotonic()
        try:
            seq, publisher = None, None
            if isinstance(info, dict):
                seq = info.get("publication_sequence_number")
                gid = info.get("publisher_gid")
                if isinstance(gid, dict):
                    publisher = bytes(gid.get("data", b""))
            self._gaps.update(stamp_to_ns(msg.header.stamp), seq, publisher)
            intake = self._intake
            if intake is None:
                self.stats.count_invalid("inactive")
                return
            if not intake.put((msg, compressed, recv)):
                self._throttled("input_overflow", logging.WARNING,
                                f"input queue full ({intake.max_size}): the oldest image was dropped "
                                f"({intake.stats()['overflow']} so far); raise input_queue_size or lower the rate")
        except Exception as exc:  # noqa: BLE001 - a callback must never raise
            self._reject("internal_error", f"{type(exc).__name__}: {exc}")

    def _handle_queued_input(self, item: tuple[Image | CompressedImage, bool, float]) -> None:
        """Input thread: convert, wait for room under ``drop_policy: wait``, hand the frame to the windows."""
        msg, compressed, recv = item
        try:
            try:
                rgb = compressed_to_rgb(msg) if compressed else image_to_rgb(msg)
            except ImageConversionError as exc:
                self._reject(_invalid_reason(msg, compressed), str(exc))
                return
            p = self.params
            if p is not None and p.drop_policy == "wait":
                # each frame completes at most one window: room for one window is all it needs
                while self._active:
                    worker = self._worker
                    if worker is None or worker.wait_for_room(0.1):
                        break
            h, w = int(rgb.shape[0]), int(rgb.shape[1])
            self._accept_frame(msg.header, rgb, h, w, recv)
        except Exception as exc:  # noqa: BLE001 - the input thread must never die
            self._reject("internal_error", f"{type(exc).__name__}: {exc}")
            logger.debug("input handling failed", exc_info=True)

    def _geometry_for(self, h: int, w: int) -> PreprocessInfo:
        key = (h, w)
        info = self._geometry.get(key)
        if info is None:
            p = self.params
            assert p is not None
            info = plan_geometry(h, w, mode=p.preprocess_mode, target_size=p.target_size)
            if len(self._geometry) > 16:
                self._geometry.clear()
            self._geometry[key] = info
        return info

    def _camera_k_for(self, h: int, w: int) -> np.ndarray | None:
        ci = self._camera_info
        if ci is None or not self.params or not self.params.use_camera_info:
            return None
        ch, cw, K = ci
        if (ch, cw) != (h, w):
            self._throttled("camera_info_size", logging.WARNING,
                            f"camera_info is for {cw}x{ch} but images are {w}x{h}: its intrinsics are ignored")
            return None
        return K

    def _accept_frame(self, header: Header, rgb: np.ndarray, h: int, w: int, recv: float) -> None:
        with self._state_lock:
            if not self._active or self._assembler is None or self._worker is None:
                self.stats.count_invalid("inactive")
                return
            try:
                info = self._geometry_for(h, w)
            except ValueError as exc:
                self._reject("unsupported_size", f"{w}x{h}: {exc}")
                return
            stamp_ns = stamp_to_ns(header.stamp)
            if self._last_input == (stamp_ns, header.frame_id, h, w):
                self._reject("duplicate_stamp", f"image with the same stamp {stamp_ns * 1e-9:.6f} s as the "
                                                f"previous one (a repeated message?)")
                return
            self._last_input = (stamp_ns, header.frame_id, h, w)
            self.stats.incr("frames_in")
            self._seq += 1
            K = self._camera_k_for(h, w)
            frame = NodeFrame(stamp_ns=stamp_ns, image=rgb, frame_id=header.frame_id, K=K, seq=self._seq, prep=info,
                              header=header, recv_time=recv, camera_info=self._camera_info_msg if K is not None else None)
            if self._tf is not None:
                self._tf.note_image()
            step = self._assembler.push(frame)
            self._segment_has_frames = True
            if step.segment_reason is not None:
                self.stats.count_segment(step.segment_reason)
                self._throttled(f"segment:{step.segment_reason}", logging.INFO,
                                f"new segment {step.segment} ({step.segment_reason}) at stamp "
                                f"{stamp_ns * 1e-9:.3f} s, image {w}x{h}")
                self._builder_seqs = []
            if step.is_keyframe:
                frame.model_image, _ = preprocess_frame(rgb, info=info)
                self.stats.ledger.add_keyframe(frame.seq)
                self._builder_seqs.append(frame.seq)
            else:
                self.stats.incr("frames_skipped")
            for window in step.windows:
                self._submit(window)
                if window.frames[-1] is frame:
                    overlap = self._assembler.builder.overlap
                    self._builder_seqs = [f.seq for f in window.frames[len(window.frames) - overlap:]] \
                        if overlap > 0 else []
            self.stats.ledger.set_builder(self._builder_seqs, "segment_end")
            self._last_frame_wall = recv

    def _on_camera_info(self, msg: CameraInfo) -> None:
        try:
            K = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
            reason = None
            if msg.width == 0 or msg.height == 0:
                reason = "zero_size"
            elif not np.all(np.isfinite(K)):
                reason = "non_finite"
            elif not (K[0, 0] > 0 and K[1, 1] > 0):
                reason = "bad_focal"
            if reason is not None:
                count = self.stats.count_camera_info_invalid(reason)
                self._throttled(f"camera_info_invalid:{reason}", logging.WARNING,
                                f"ignoring camera_info ({reason}, {count} so far): K must be finite with fx, fy > 0 "
                                f"and the size non-zero")
                return
            first = self._camera_info is None
            self._camera_info = (int(msg.height), int(msg.width), K)
            self._camera_info_msg = msg
            self.stats.incr("camera_info_received")
            if first:
                self.get_logger().info(f"camera_info received: {msg.width}x{msg.height}, fx={K[0, 0]:.1f} "
                                       f"fy={K[1, 1]:.1f}")
        except Exception as exc:  # noqa: BLE001
            self.stats.count_camera_info_invalid("malformed")
            self._throttled("camera_info_error", logging.WARNING, f"ignoring camera_info: {exc}")

    # ================================================================== windows
    def _submit(self, window: Window) -> None:
        """Hand a window to the worker (lock held)."""
        assert self._worker is not None and self.params is not None
        seqs = [f.seq for f in window.frames]
        self.stats.ledger.window_submitted(window.index, seqs, accepted=True)
        self.stats.incr("windows_submitted")
        if not self._worker.submit(window):
            self.stats.ledger.window_finished(window.index, "queue_full")
            self._throttled("queue_full", logging.WARNING,
                            f"window queue full ({self.params.queue_size}): dropped window {window.index}")

    def _begin_new_segment(self, reason: str | None) -> None:
        """Make the next frame open a new segment (idle flush, re-activation). Lock held."""
        asm = self._assembler
        if asm is None:
            return
        asm.builder.reset()
        self._builder_seqs = []
        self.stats.ledger.set_builder([], "segment_end")
        asm.selector.reset()
        if not self._segment_has_frames:
            return
        asm.tracker.reset()
        asm.tracker.segment += 1
        asm.builder.segment = asm.tracker.segment
        self._segment_has_frames = False
        if reason is not None:
            self.stats.count_segment(reason)

    def _check_idle(self) -> None:
        """Timer: process the partial window once the input has been quiet for ``flush_timeout`` with the worker
        free (a busy worker or a queued window restarts the quiet time)."""
        try:
            with self._state_lock:
                p = self.params
                if not self._active or p is None or self._assembler is None or self._last_frame_wall is None:
                    return
                worker, intake = self._worker, self._intake
                if intake is not None and not intake.idle():
                    self._last_frame_wall = time.monotonic()
                    return
                if worker is not None:
                    wstats = worker.stats()
                    if wstats["busy"] or wstats["queue_depth"] > 0:
                        self._last_frame_wall = time.monotonic()
                        return
                if time.monotonic() - self._last_frame_wall < p.flush_timeout:
                    return
                self._last_frame_wall = None
                if self._assembler.builder.pending == 0:
                    return
                window = self._assembler.finish()
                if window is not None:
                    self._submit(window)
                self._begin_new_segment("idle")
                self.get_logger().info(
                    f"no image for {p.flush_timeout:g} s: processing the partial window"
                    + (f" {window.index} ({len(window)} frames)" if window is not None else " (too short, dropped)"))
        except Exception as exc:  # noqa: BLE001
            self._throttled("idle_error", logging.ERROR, f"idle flush failed: {type(exc).__name__}: {exc}")

    def _process_window(self, window: Window) -> Any:
        """Worker thread: run VGGT4D on one window (or half of one, after an out-of-memory retry)."""
        self.stats.ledger.window_started(window.index)
        if self._started_index == window.index and self._retry_index != window.index:
            self._retry_index = window.index
            self.stats.incr("oom_retries")
        self._started_index = window.index
        pipeline = self.pipeline
        if pipeline is None:
            raise RuntimeError("the pipeline was released")
        try:
            if self.params is not None and self.params.geometry_source == "synthetic":  # TEST ONLY
                result = pipeline.run(window.stamps_ns, [f.prep for f in window.frames])
            else:
                result = pipeline.run(torch.stack([f.model_image for f in window.frames]))
        except Exception as exc:
            if is_out_of_memory(exc) and self.device is not None and self.device.startswith("cuda"):
                torch.cuda.empty_cache()
            raise
        for name in ("extrinsic", "intrinsic"):
            value = getattr(result, name)
            if not bool(torch.isfinite(torch.as_tensor(value)).all()):
                raise NonFiniteOutputError(f"the network produced non-finite {name} for window {window.index}")
        return result

    @staticmethod
    def _delivering_stale() -> bool:
        """On a worker thread: the window being delivered was discarded by ``~/reset`` or shutdown."""
        worker = current_worker()
        return worker is not None and worker.delivering_stale()

    def _may_publish(self) -> bool:
        """Publisher gate: outputs of a stale window are not published (other threads always may)."""
        return not self._delivering_stale()

    def _shutting_down(self) -> bool:
        try:
            return not self.context.ok()
        except Exception:  # noqa: BLE001
            return True

    def _on_window_drop(self, part: Window, reason: str) -> None:
        """A window the worker will not process: ``queue_full`` or ``stopped`` (reset, deactivate, shutdown)."""
        self.stats.ledger.window_finished(part.index, reason if reason == "queue_full" else self._stop_reason)

    def _on_window_error(self, part: Window, exc: BaseException) -> None:
        if self._delivering_stale():
            return
        reason = _classify_failure(exc)
        self.stats.count_window_failure(reason, f"window {part.index}: {type(exc).__name__}: {exc}")
        self.stats.ledger.window_finished(part.index, reason)
        self._throttled(f"window_error:{reason}", logging.ERROR,
                        f"window {part.index} ({len(part)} frames) failed ({reason}): {type(exc).__name__}: {exc}")

    def _on_window_result(self, part: Window, result: Any) -> None:
        if self._delivering_stale():
            return
        try:
            self._publish_window(part, result)
        except Exception as exc:  # noqa: BLE001 - count, log, keep running
            if self._delivering_stale():
                return
            if self._shutting_down():  # the context went away under the publisher (SIGINT mid-publish)
                logger.debug("window %d not published: shutting down", part.index)
                self.stats.ledger.window_finished(part.index, "shutdown")
                return
            self.stats.count_window_failure("publish_error", f"window {part.index}: {type(exc).__name__}: {exc}")
            self._throttled("publish_error", logging.ERROR,
                            f"stitching/publishing window {part.index} failed: {type(exc).__name__}: {exc}")
            logger.debug("publish failed", exc_info=True)
            self.stats.ledger.window_finished(part.index, "publish_error")
            return
        if self._delivering_stale():  # reset while publishing: the rest was not published, nothing is counted
            return
        self.stats.incr("windows_processed")
        self.stats.ledger.window_finished(part.index, None, last_seq=part.frames[-1].seq)

    # ================================================================== outputs
    def _publish_window(self, part: Window, result: Any) -> None:
        """Worker thread: stitch the window into the map and publish every output of it."""
        out, stitcher = self._outputs, self._stitcher
        if self._delivering_stale():  # read the stitcher first: ~/reset marks stale before replacing it
            return
        if out is None or stitcher is None:
            raise RuntimeError("the node was cleaned up while a window was processed")
        t0 = time.perf_counter()
        frames: list[NodeFrame] = list(part.frames)  # type: ignore[arg-type]
        camera = self._camera_frame(frames[-1])
        p, tf = self.params, self._tf
        assert p is not None and tf is not None
        geom = window_geometry(part, result, frames, p.conf_threshold, p.use_camera_info,
                               tf.window_odometry(camera, part.stamps_ns))
        stitch = stitcher.add(geom)
        mapped = geom.transformed(stitch.sim3)
        t1 = time.perf_counter()

        per_frame = out.frame_outputs(stitch, mapped, [f.prep for f in frames])
        new = set(self.stats.ledger.frames_processed([f.seq for f in frames]))
        fresh = [i for i, f in enumerate(frames) if f.seq in new]
        out.publish_frames(frames, fresh, per_frame, camera, stitch)
        out.publish_tf(frames, fresh, per_frame, stitch)
        now = time.monotonic()
        self.stats.latency.add_many([now - frames[i].recv_time for i in fresh])
        self._last_stamp = frames[-1].header.stamp
        out.publish_clouds(stitch, mapped, self._last_stamp)
        out.publish_path(stitcher)
        self._map_version += 1
        t2 = time.perf_counter()

        timings = dict(getattr(result, "timings", {}) or {})
        timings["stitch"] = t1 - t0
        timings["publish"] = t2 - t1
        out.publish_window_msg(part, frames, per_frame, stitch, timings)
        for name, value in (("last_alignment_status", stitch.status), ("last_alignment_scale", float(stitch.scale)),
                            ("last_alignment_residual", float(stitch.residual)), ("map_points", len(stitcher.map)),
                            ("metric", bool(stitch.metric)), ("scale_source", stitch.scale_source),
                            ("last_anchor", stitch.anchor)):
            self.stats.set_value(name, value)

    def _camera_frame(self, frame: NodeFrame) -> str:
        """The camera's optical frame: ``camera_frame``, else the image's frame_id, else a fixed name."""
        p = self.params
        if p is not None and p.camera_frame:
            return p.camera_frame
        if frame.frame_id:
            return frame.frame_id
        if not self._warned_frame_id:
            self._warned_frame_id = True
            self.get_logger().warning(
                f"images have an empty header.frame_id and camera_frame is '': using '{FALLBACK_CAMERA_FRAME}'")
        return FALLBACK_CAMERA_FRAME

    def _publish_map(self) -> None:
        """Timer: publish ``~/map_cloud`` when the map changed since the last publication."""
        try:
            version = self._map_version  # read before the map: a concurrent change publishes again next time
            stitcher, pubs, p = self._stitcher, self._pubs, self.params
            if stitcher is None or pubs is None or p is None or version == self._map_published_version:
                return
            points, colors, _, _ = stitcher.snapshot()
            stamp = self._last_stamp if self._last_stamp is not None else self.get_clock().now().to_msg()
            pubs.map_cloud.publish(points_to_pointcloud2(points, colors, make_header(stamp, p.map_frame)))
            self._map_published_version = version
        except Exception as exc:  # noqa: BLE001
            self._throttled("map_error", logging.ERROR, f"publishing the map failed: {type(exc).__name__}: {exc}")

    # ================================================================== diagnostics
    def diagnostics_values(self) -> dict[str, Any]:
        """Everything ``/diagnostics`` reports, as a flat dict (also handy in tests)."""
        values = self.stats.snapshot()
        worker, intake, pubs = self._worker, self._intake, self._pubs
        wstats = worker.stats() if worker is not None else {}
        istats = intake.stats() if intake is not None else {}
        values["frames_received"] = self.stats.get("frames_received") + istats.get("received", 0)
        values["input_overflow"] = self.stats.get("input_overflow") + istats.get("overflow", 0)
        values["input_queue_depth"] = istats.get("depth", 0)
        gaps = self._gaps
        values["input_gaps"] = gaps.total
        values["input_gaps_sequence"] = gaps.by_sequence
        values["input_gaps_stamps"] = gaps.by_stamps
        values["input_gap_events"] = gaps.events
        period = gaps.period_ns()
        values["input_period_s"] = period * 1e-9 if period else None
        if pubs is not None:
            values.update({f"published.{k}": v for k, v in pubs.published().items()})
        values["queue_depth"] = wstats.get("queue_depth", 0)
        values["worker_busy"] = bool(wstats.get("busy", False))
        values["window_process_last_s"] = wstats.get("last_process_s")
        values["state"] = self.state_label
        tf, stitcher = self._tf, self._stitcher
        if tf is not None:
            values.update(tf.values())
        if stitcher is not None:
            values["windows_without_odometry"] = stitcher.num_missing_odometry
        kind, used = device_memory_bytes(self.device)
        values["memory_kind"] = kind
        values["memory_bytes"] = used
        if self.configure_error:
            values["configure_error"] = self.configure_error
        return values

    def _publish_diagnostics(self) -> None:
        try:
            values = self.diagnostics_values()
            level, message = self._diagnostic_level(values)
            array = DiagnosticArray()
            array.header.stamp = self.get_clock().now().to_msg()
            array.status = [build_status(f"{self.get_name()}: vggt4d pipeline", str(self.device or "none"), values,
                                         level, message)]
            self._diag_pub.publish(array)
        except Exception as exc:  # noqa: BLE001
            self._throttled("diagnostics_error", logging.ERROR, f"diagnostics failed: {type(exc).__name__}: {exc}")

    def _diagnostic_level(self, values: dict[str, Any]) -> tuple[int, str]:
        watched = ("frames_dropped", "frames_invalid", "windows_failed", "windows_processed", "input_overflow",
                   "input_gaps", "camera_info_invalid")
        delta = {k: int(values.get(k) or 0) - self._last_report.get(k, 0) for k in watched}
        self._last_report = {k: int(values.get(k) or 0) for k in watched}
        summary = (f"{values['state']}: {values['frames_in']} frames in, {values['frames_processed']} processed, "
                   f"{values['frames_dropped']} dropped, {values['frames_invalid']} invalid, "
                   f"{values['input_overflow']} lost in the input queue, {values['input_gaps']} missing upstream")
        if self.configure_error and self.state_label == "unconfigured":
            return int.from_bytes(DiagnosticStatus.ERROR, "little"), f"configure failed: {self.configure_error}"
        if delta["windows_failed"] > 0 and delta["windows_processed"] == 0:
            return int.from_bytes(DiagnosticStatus.ERROR, "little"), f"{summary}; last error: {values['last_error']}"
        if any(delta[k] > 0 for k in watched if k != "windows_processed"):
            return int.from_bytes(DiagnosticStatus.WARN, "little"), summary
        if self.state_label != "active":
            return int.from_bytes(DiagnosticStatus.WARN, "little"), summary
        return int.from_bytes(DiagnosticStatus.OK, "little"), summary

    # ================================================================== services
    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        with self._state_lock:
            if self.params is None or self._stitcher is None:
                response.success = False
                response.message = f"node is {self.state_label}: configure it first"
                return response
            # Subscriptions and the worker stay (no re-discovery, no lost images). Nothing here waits for the
            # network: the window in flight is marked stale (its outputs are discarded when it ends), queued
            # windows and the keyframes waiting for a window are dropped (dropped.reset).
            self._stop_reason = "reset"
            if self._worker is not None:
                self._worker.discard()
            lost = self.stats.ledger.abandon_all("reset")
            self._new_processing_state()  # a new Stitcher: the next window anchors at the identity
            self._gaps.restart()
            self.stats.set_value("map_points", 0)
            self._last_stamp = None
            self._last_input = None
        if lost:
            self.get_logger().info(f"reset: {lost} keyframe(s) waiting for a window were dropped")
        self.get_logger().info("reset: windows, map and trajectory cleared")
        response.success = True
        response.message = "windows, map and trajectory cleared"
        return response

    def _on_save_map(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        stitcher = self._stitcher
        if stitcher is None:
            response.success = False
            response.message = f"node is {self.state_label}: nothing to save"
            return response
        try:
            directory_param = str(self.get_parameter("save_directory").value)
            directory = Path(os.path.expanduser(directory_param)) if directory_param else _default_save_directory()
            directory.mkdir(parents=True, exist_ok=True)
            points, colors, stamps, poses = stitcher.snapshot()
            map_path = directory / "map.ply"
            traj_path = directory / "trajectory.txt"
            write_ply(map_path, points, colors)
            save_tum(traj_path, stamps, poses)
        except Exception as exc:  # noqa: BLE001
            response.success = False
            response.message = f"saving the map failed: {type(exc).__name__}: {exc}"
            self.get_logger().error(response.message)
            return response
        response.success = True
        response.message = f"wrote {len(points)} points to {map_path} and {len(stamps)} poses to {traj_path}"
        self.get_logger().info(response.message)
        return response
