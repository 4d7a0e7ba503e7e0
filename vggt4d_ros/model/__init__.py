"""VGGT network, checkpoint loading, preprocessing and camera geometry (no ROS).

Typical use::

    from vggt4d_ros.model import load_model, preprocess_images
    from vggt4d_ros.model.checkpoint import DEFAULT_WEIGHTS   # facebook/VGGT_tracker_fixed (or facebook/VGGT-1B)
    model = load_model(DEFAULT_WEIGHTS, device="cuda")
    images = preprocess_images(["a.png", "b.png"])          # [S, 3, H, W] in [0, 1]
    out = model.predict(images)                              # pose_enc, depth, world_points, ...
"""

from .checkpoint import (CheckpointError, CheckpointMismatchError, WeightsNotFoundError, load_model,
                         read_state_dict, resolve_device, resolve_weights)
from .config import (PRESETS, AggregatorConfig, CameraHeadConfig, DPTHeadConfig, PatchEmbedConfig, VGGTConfig,
                     resolve_config)
from .geometry import (camera_to_world_points, closed_form_inverse_se3, decode_pose_encoding,
                       depth_to_camera_points, depth_to_world_points, encode_pose_encoding, extrinsic_to_c2w_matrix,
                       invert_extrinsic, project_points, quaternion_to_rotation, rotation_to_quaternion,
                       world_to_camera_points)
from .masking import pixel_mask_to_token_mask
from .preprocess import (DEFAULT_TARGET_SIZE, PreprocessInfo, intrinsics_to_model, intrinsics_to_original,
                         load_and_preprocess_images, mask_to_original, pixels_to_model, pixels_to_original,
                         plan_geometry, preprocess_frame, preprocess_images)
from .vggt import DEFAULT_MASK_LAYERS, HEAD_NAMES, VGGT

__all__ = [
    "AggregatorConfig", "CameraHeadConfig", "CheckpointError", "CheckpointMismatchError", "DEFAULT_MASK_LAYERS",
    "DEFAULT_TARGET_SIZE", "DPTHeadConfig", "HEAD_NAMES", "PRESETS", "PatchEmbedConfig", "PreprocessInfo", "VGGT",
    "VGGTConfig", "WeightsNotFoundError", "camera_to_world_points", "closed_form_inverse_se3",
    "decode_pose_encoding", "depth_to_camera_points", "depth_to_world_points", "encode_pose_encoding",
    "extrinsic_to_c2w_matrix", "intrinsics_to_model", "intrinsics_to_original", "invert_extrinsic",
    "load_and_preprocess_images", "load_model", "mask_to_original", "pixel_mask_to_token_mask", "pixels_to_model",
    "pixels_to_original", "plan_geometry", "preprocess_frame", "preprocess_images", "project_points",
    "quaternion_to_rotation", "read_state_dict", "resolve_config", "resolve_device", "resolve_weights", "rotation_to_quaternion",
    "world_to_camera_points",
]
