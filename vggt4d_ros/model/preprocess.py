"""Image preprocessing for VGGT, bit-exact with the reference image loader, plus the inverse mappings.

Forward path (reference behaviour of ``load_and_preprocess_images``):

1. Load / accept the image. RGBA images (and LA, PA, or P with a transparency entry) are alpha-composited over
   opaque white; every other mode is converted to RGB.
2. Resize with Pillow ``BICUBIC`` on 8-bit RGB:

   * ``"crop"``: width becomes ``target_size``; height ``round(h * (target_size / w) / 14) * 14`` (Python ``round``,
     ties to even). If the height exceeds ``target_size`` the rows are centre-cropped, starting at
     ``(new_h - target_size) // 2``.
   * ``"pad"``: the longer side becomes ``target_size``, the other is rounded to a multiple of 14 the same way,
     and the image is padded with white (1.0) to ``target_size x target_size``: top/left ``(target - n) // 2``,
     the rest bottom/right.

3. Values are ``code / 255`` in float32. A batch whose images end with different sizes (crop mode) is padded to
   the largest height and width with 1.0, top/left ``diff // 2`` and the rest bottom/right.

Coordinates: the mappings here use continuous pixel coordinates in which pixel ``i`` covers ``[i, i + 1)`` (the
convention under which Pillow's resize is an exact scale and VGGT's principal point is ``(W/2, H/2)``). A point
``(u, v)`` of the original image lands at ``(u * sx + pad_left, v * sy + pad_top - crop_top)`` in model pixels,
with ``sx = new_w / w`` and ``sy = new_h / h``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

logger = logging.getLogger(__name__)

PATCH_SIZE = 14
DEFAULT_TARGET_SIZE = 518
MODES: tuple[str, ...] = ("crop", "pad")

ImageInput = Union[str, Path, Image.Image, np.ndarray]

_NUMPY_SHAPES = "[H, W] (mono), [H, W, 1], [H, W, 3] (RGB) or [H, W, 4] (RGBA)"
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


@dataclass(frozen=True)
class PreprocessInfo:
    """Geometry of one preprocessed image; enough to map pixels, masks and intrinsics both ways.

    Attributes:
        original_size: ``(h, w)`` of the input image.
        resized_size: ``(new_h, new_w)`` after the bicubic resize, before any crop or pad.
        crop_top: rows removed from the top of the resized image (crop mode, tall images); else 0.
        pad_top: white rows added above the content in the model image (mode pad and/or batch padding).
        pad_left: white columns added left of the content in the model image.
        model_size: ``(H, W)`` of the final model input (the batch tensor's spatial size).
        mode: ``"crop"`` or ``"pad"``.
    """

    original_size: tuple[int, int]
    resized_size: tuple[int, int]
    crop_top: int
    pad_top: int
    pad_left: int
    model_size: tuple[int, int]
    mode: str

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        h, w = self.original_size
        rh, rw = self.resized_size
        big_h, big_w = self.model_size
        if min(h, w, rh, rw, big_h, big_w) <= 0:
            raise ValueError(
                f"sizes must be positive, got original {self.original_size}, resized {self.resized_size}, "
                f"model {self.model_size}"
            )
        if min(self.crop_top, self.pad_top, self.pad_left) < 0:
            raise ValueError(
                f"offsets must be >= 0, got crop_top={self.crop_top}, pad_top={self.pad_top}, "
                f"pad_left={self.pad_left}"
            )
        ch, cw = self.content_size
        if ch <= 0 or cw <= 0 or self.pad_left + cw > big_w:
            raise ValueError(
                f"inconsistent geometry: resized {self.resized_size}, crop_top {self.crop_top}, pad "
                f"({self.pad_top}, {self.pad_left}) does not fit model size {self.model_size}"
            )

    @property
    def content_size(self) -> tuple[int, int]:
        """``(rows, cols)`` of image content inside the model image (model size minus padding)."""
        rh, rw = self.resized_size
        big_h, _ = self.model_size
        return min(rh - self.crop_top, big_h - self.pad_top), rw

    @property
    def content_box(self) -> tuple[int, int, int, int]:
        """``(top, left, bottom, right)`` of the image content in model pixels (bottom/right exclusive)."""
        ch, cw = self.content_size
        return self.pad_top, self.pad_left, self.pad_top + ch, self.pad_left + cw

    @property
    def scale_x(self) -> float:
        """Horizontal resize factor ``new_w / w`` (model pixels per original pixel)."""
        return self.resized_size[1] / self.original_size[1]

    @property
    def scale_y(self) -> float:
        """Vertical resize factor ``new_h / h`` (model pixels per original pixel)."""
        return self.resized_size[0] / self.original_size[0]

    @property
    def offset_x(self) -> int:
        """Horizontal translation from resized to model pixels (``pad_left``)."""
        return self.pad_left

    @property
    def offset_y(self) -> int:
        """Vertical translation from resized to model pixels (``pad_top - crop_top``)."""
        return self.pad_top - self.crop_top

    def original_to_model_matrix(self) -> np.ndarray:
        """Affine ``[3, 3]`` float64 matrix taking homogeneous original pixels to model pixels."""
        return np.array(
            [[self.scale_x, 0.0, float(self.offset_x)], [0.0, self.scale_y, float(self.offset_y)], [0.0, 0.0, 1.0]],
            dtype=np.float64,
        )

    def model_to_original_matrix(self) -> np.ndarray:
        """Affine ``[3, 3]`` float64 matrix taking homogeneous model pixels to original pixels."""
        sx, sy = self.scale_x, self.scale_y
        return np.array(
            [[1.0 / sx, 0.0, -self.offset_x / sx], [0.0, 1.0 / sy, -self.offset_y / sy], [0.0, 0.0, 1.0]],
            dtype=np.float64,
        )


# --------------------------------------------------------------------------------------------------------------
# Forward path
# --------------------------------------------------------------------------------------------------------------


def _check_mode_and_target(mode: str, target_size: int) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if isinstance(target_size, bool) or not isinstance(target_size, (int, np.integer)):
        raise ValueError(f"target_size must be an int multiple of {PATCH_SIZE}, got {target_size!r}")
    if target_size <= 0 or target_size % PATCH_SIZE != 0:
        raise ValueError(f"target_size must be a positive multiple of {PATCH_SIZE}, got {target_size}")


def _rounded_side(short: int, long: int, target_size: int) -> int:
    """Reference rule for the dependent side: ``round(short * (target / long) / 14) * 14`` (ties to even)."""
    return round(short * (target_size / long) / PATCH_SIZE) * PATCH_SIZE


def plan_geometry(height: int, width: int, mode: str = "crop", target_size: int = DEFAULT_TARGET_SIZE) -> PreprocessInfo:
    """Geometry the reference loader gives one ``height x width`` image (before any batch padding).

    Raises:
        ValueError: invalid mode/target size, or an aspect ratio so extreme that a side rounds to 0.
    """
    _check_mode_and_target(mode, target_size)
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got (h, w) = ({height}, {width})")
    if mode == "crop":
        new_w = target_size
        new_h = _rounded_side(height, width, target_size)
    elif width >= height:
        new_w = target_size
        new_h = _rounded_side(height, width, target_size)
    else:
        new_h = target_size
        new_w = _rounded_side(width, height, target_size)
    if new_h <= 0 or new_w <= 0:
        raise ValueError(
            f"image of (h, w) = ({height}, {width}) resizes to ({new_h}, {new_w}) at target_size {target_size}; "
            f"the aspect ratio is too extreme"
        )
    if mode == "crop":
        crop_top = (new_h - target_size) // 2 if new_h > target_size else 0
        model_size = (min(new_h, target_size), new_w)
        pad_top = pad_left = 0
    else:
        crop_top = 0
        model_size = (target_size, target_size)
        pad_top = (target_size - new_h) // 2
        pad_left = (target_size - new_w) // 2
    return PreprocessInfo(
        original_size=(int(height), int(width)),
        resized_size=(int(new_h), int(new_w)),
        crop_top=int(crop_top),
        pad_top=int(pad_top),
        pad_left=int(pad_left),
        model_size=(int(model_size[0]), int(model_size[1])),
        mode=mode,
    )


def _composite_on_white(img: Image.Image) -> Image.Image:
    """RGB image; alpha (if any) composited over opaque white exactly as the reference does for RGBA."""
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    elif img.mode in _ALPHA_MODES and img.mode != "RGBA":
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img


def _array_to_pil(arr: np.ndarray) -> Image.Image:
    if arr.dtype != np.uint8:
        raise ValueError(f"numpy image must be uint8 with shape {_NUMPY_SHAPES}, got dtype {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        pil_mode = "L"
    elif arr.ndim == 3 and arr.shape[2] == 3:
        pil_mode = "RGB"
    elif arr.ndim == 3 and arr.shape[2] == 4:
        pil_mode = "RGBA"
    else:
        raise ValueError(f"numpy image must have shape {_NUMPY_SHAPES}, got shape {tuple(arr.shape)}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"numpy image must be non-empty with shape {_NUMPY_SHAPES}, got shape {tuple(arr.shape)}")
    return Image.fromarray(np.ascontiguousarray(arr), mode=pil_mode)


def _to_rgb(image: ImageInput) -> Image.Image:
    """Any accepted single-image input as an 8-bit RGB PIL image (alpha composited over white)."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: {str(image)!r}")
        with Image.open(path) as img:
            img.load()
            rgb = _composite_on_white(img)
            # never hand out the object whose file the context manager is about to close
            return img.copy() if rgb is img else rgb
    if isinstance(image, Image.Image):
        return _composite_on_white(image)
    if isinstance(image, np.ndarray):
        return _composite_on_white(_array_to_pil(image))
    raise TypeError(
        f"image must be a file path (str/Path), a PIL Image or a uint8 numpy array {_NUMPY_SHAPES}, "
        f"got {type(image).__name__}"
    )


def _resize_and_crop(rgb: Image.Image, info: PreprocessInfo) -> np.ndarray:
    """Resized, cropped content of one image as uint8 codes ``[rows, cols, 3]`` (a view, no padding)."""
    new_h, new_w = info.resized_size
    resized = rgb.resize((new_w, new_h), Image.BICUBIC)
    codes = np.asarray(resized)
    rows, _ = info.content_size
    return codes[info.crop_top : info.crop_top + rows]


def _preprocess_one(
    image: ImageInput, info: PreprocessInfo | None, mode: str, target_size: int
) -> tuple[np.ndarray, PreprocessInfo]:
    rgb = _to_rgb(image)
    h, w = rgb.height, rgb.width
    if info is None:
        info = plan_geometry(h, w, mode, target_size)
    elif info.original_size != (h, w):
        raise ValueError(
            f"image has (h, w) = ({h}, {w}) but the given PreprocessInfo expects {info.original_size}"
        )
    return _resize_and_crop(rgb, info), info


def _assemble(contents: Sequence[np.ndarray], infos: Sequence[PreprocessInfo]) -> tuple[torch.Tensor, list[PreprocessInfo]]:
    """Place every content block on a white canvas of the largest model size; float32 ``[S, 3, H, W]``."""
    big_h = max(i.model_size[0] for i in infos)
    big_w = max(i.model_size[1] for i in infos)
    if any(i.model_size != (big_h, big_w) for i in infos):
        logger.warning(
            "images have different preprocessed sizes %s; padding all to (%d, %d) with white",
            sorted({i.model_size for i in infos}),
            big_h,
            big_w,
        )
    codes = np.full((len(infos), 3, big_h, big_w), 255, dtype=np.uint8)
    out_infos: list[PreprocessInfo] = []
    for s, (content, info) in enumerate(zip(contents, infos)):
        extra_top = (big_h - info.model_size[0]) // 2
        extra_left = (big_w - info.model_size[1]) // 2
        if extra_top or extra_left or info.model_size != (big_h, big_w):
            info = dataclasses.replace(
                info,
                pad_top=info.pad_top + extra_top,
                pad_left=info.pad_left + extra_left,
                model_size=(big_h, big_w),
            )
        top, left, bottom, right = info.content_box
        codes[s, :, top:bottom, left:right] = content.transpose(2, 0, 1)
        out_infos.append(info)
    return torch.from_numpy(codes).float().div_(255), out_infos


def _as_image_list(images: Sequence[ImageInput] | ImageInput) -> list[ImageInput]:
    if isinstance(images, (str, Path, Image.Image)):
        return [images]
    if isinstance(images, np.ndarray):
        return list(images) if images.ndim == 4 else [images]
    if isinstance(images, torch.Tensor):
        raise TypeError("images must be file paths, PIL Images or uint8 numpy arrays, not a torch.Tensor")
    return list(images)


def preprocess_images(
    images: Sequence[ImageInput] | ImageInput, mode: str = "crop", target_size: int = DEFAULT_TARGET_SIZE
) -> tuple[torch.Tensor, list[PreprocessInfo]]:
    """Preprocess images exactly like the reference VGGT loader.

    Args:
        images: sequence of file paths (str/Path), PIL Images, or uint8 numpy arrays ``[H, W]`` (mono),
            ``[H, W, 3]`` (RGB) or ``[H, W, 4]`` (RGBA). A single image, or a ``[S, H, W, C]`` uint8 array,
            is also accepted.
        mode: ``"crop"`` or ``"pad"``.
        target_size: model width (crop) or longest side (pad); a multiple of 14.

    Returns:
        ``(images [S, 3, H, W] float32 in [0, 1], infos)`` with one :class:`PreprocessInfo` per image describing
        the final placement (including batch padding).

    Raises:
        ValueError: empty input, invalid mode/target size, or a numpy array of the wrong dtype/shape.
        FileNotFoundError: a path that does not exist.
    """
    _check_mode_and_target(mode, target_size)
    items = _as_image_list(images)
    if not items:
        raise ValueError("at least one image is required, got an empty sequence")
    contents: list[np.ndarray] = []
    infos: list[PreprocessInfo] = []
    for item in items:
        content, info = _preprocess_one(item, None, mode, target_size)
        contents.append(content)
        infos.append(info)
    return _assemble(contents, infos)


def load_and_preprocess_images(paths: Sequence[ImageInput], mode: str = "crop") -> torch.Tensor:
    """Reference-named loader: images ``[S, 3, H, W]`` float32 in [0, 1] (see :func:`preprocess_images`)."""
    tensor, _ = preprocess_images(paths, mode=mode, target_size=DEFAULT_TARGET_SIZE)
    return tensor


def preprocess_frame(
    frame: ImageInput,
    info: PreprocessInfo | None = None,
    mode: str | None = None,
    target_size: int | None = None,
) -> tuple[torch.Tensor, PreprocessInfo]:
    """Preprocess one in-memory frame (typically ``[H, W, 3]`` uint8 RGB from a camera topic).

    Same code path as :func:`preprocess_images`. Passing the ``info`` returned for an earlier frame of the same
    stream reuses its geometry (and checks that the frame size still matches).

    Args:
        frame: uint8 ``[H, W, 3]`` RGB array (or any single input :func:`preprocess_images` accepts).
        info: geometry to reuse, or None to derive it from ``mode`` and ``target_size``.
        mode: ``"crop"`` (default) or ``"pad"``; when ``info`` is given it must be None or equal ``info.mode``.
        target_size: default 518; ignored for geometry when ``info`` is given.

    Returns:
        ``(image [3, H, W] float32 in [0, 1], info)``.

    Raises:
        ValueError: frame size differs from ``info.original_size``, mode conflicts with ``info``, bad input.
    """
    if info is None:
        mode = "crop" if mode is None else mode
        target_size = DEFAULT_TARGET_SIZE if target_size is None else target_size
        _check_mode_and_target(mode, target_size)
    elif mode is not None and mode != info.mode:
        raise ValueError(f"mode {mode!r} conflicts with the given PreprocessInfo (mode {info.mode!r})")
    else:
        mode = info.mode
        target_size = DEFAULT_TARGET_SIZE if target_size is None else target_size
    content, frame_info = _preprocess_one(frame, info, mode, target_size)
    tensor, infos = _assemble([content], [frame_info])
    return tensor[0], infos[0]


# --------------------------------------------------------------------------------------------------------------
# Inverse mappings
# --------------------------------------------------------------------------------------------------------------


def _frame_infos(info: PreprocessInfo | Sequence[PreprocessInfo], count: int | None, what: str) -> list[PreprocessInfo]:
    if isinstance(info, PreprocessInfo):
        return [info] * (1 if count is None else count)
    infos = list(info)
    if not infos or not all(isinstance(i, PreprocessInfo) for i in infos):
        raise ValueError(f"info must be a PreprocessInfo or a non-empty sequence of them for {what}")
    if count is None or len(infos) != count:
        raise ValueError(f"{what}: got {len(infos)} PreprocessInfo entries for {count} frames")
    return infos


def mask_to_original(
    mask: torch.Tensor | np.ndarray,
    info: PreprocessInfo | Sequence[PreprocessInfo],
    interpolation: str | None = None,
) -> np.ndarray:
    """Map a model-space mask or map back to original image pixels.

    Padding is discarded, rows removed by the centre crop become False/0, and the result is resized from the
    resized-image size to the original size.

    Args:
        mask: ``[H, W]`` or ``[S, H, W]`` bool/integer/float tensor or array at ``info.model_size``.
        info: one PreprocessInfo (used for every frame) or one per frame (all with the same original size).
        interpolation: ``"nearest"`` (default for bool and integer inputs; keeps the dtype) or ``"bilinear"``
            (default for float inputs; returns float32, or float64 for float64 input).

    Returns:
        ndarray ``[h, w]`` or ``[S, h, w]`` at the original size.
    """
    if isinstance(mask, torch.Tensor):
        tensor = mask.detach().cpu()
        arr = (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()
    elif isinstance(mask, np.ndarray):
        arr = mask
    else:
        raise TypeError(f"mask must be a torch.Tensor or numpy array, got {type(mask).__name__}")
    if arr.ndim not in (2, 3):
        raise ValueError(f"mask must have shape [H, W] or [S, H, W], got {tuple(arr.shape)}")
    single = arr.ndim == 2
    stack = arr[None] if single else arr
    infos = _frame_infos(info, stack.shape[0], "mask_to_original")
    orig = {i.original_size for i in infos}
    if len(orig) != 1:
        raise ValueError(f"all PreprocessInfo entries must share one original size, got {sorted(orig)}")
    h, w = infos[0].original_size

    is_discrete = arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.integer)
    if interpolation is None:
        interpolation = "nearest" if is_discrete else "bilinear"
    if interpolation not in ("nearest", "bilinear"):
        raise ValueError(f"interpolation must be 'nearest' or 'bilinear', got {interpolation!r}")
    work_dtype = arr.dtype if interpolation == "nearest" else (np.float64 if arr.dtype == np.float64 else np.float32)

    results = []
    for idx, geo in _group_by_geometry(infos):
        if stack.shape[-2:] != geo.model_size:
            raise ValueError(
                f"mask has spatial shape {tuple(stack.shape[-2:])}, expected model size {geo.model_size}"
            )
        new_h, new_w = geo.resized_size
        top, left, bottom, right = geo.content_box
        canvas = np.zeros((len(idx), new_h, new_w), dtype=work_dtype)
        canvas[:, geo.crop_top : geo.crop_top + (bottom - top), :] = stack[idx, top:bottom, left:right]
        if interpolation == "nearest":
            rows = np.minimum(((np.arange(h) + 0.5) * (new_h / h)).astype(np.int64), new_h - 1)
            cols = np.minimum(((np.arange(w) + 0.5) * (new_w / w)).astype(np.int64), new_w - 1)
            out = canvas[:, rows[:, None], cols[None, :]]
        else:
            src = torch.from_numpy(canvas)[:, None]
            downscale = h < new_h or w < new_w
            out = F.interpolate(src, size=(h, w), mode="bilinear", align_corners=False, antialias=downscale)
            out = out[:, 0].numpy()
        results.append((idx, out))

    full = np.empty((stack.shape[0], h, w), dtype=work_dtype)
    for idx, out in results:
        full[idx] = out
    return full[0] if single else full


def _group_by_geometry(infos: Sequence[PreprocessInfo]) -> list[tuple[np.ndarray, PreprocessInfo]]:
    """Frame indices grouped by identical PreprocessInfo, so each geometry is processed in one batched op."""
    groups: dict[PreprocessInfo, list[int]] = {}
    for s, i in enumerate(infos):
        groups.setdefault(i, []).append(s)
    return [(np.asarray(idx, dtype=np.int64), geo) for geo, idx in groups.items()]


def _apply_affine_to_k(
    K: torch.Tensor | np.ndarray, info: PreprocessInfo | Sequence[PreprocessInfo], inverse: bool, what: str
) -> torch.Tensor | np.ndarray:
    if not isinstance(K, (torch.Tensor, np.ndarray)):
        raise TypeError(f"K must be a torch.Tensor or numpy array, got {type(K).__name__}")
    if K.ndim < 2 or tuple(K.shape[-2:]) != (3, 3):
        raise ValueError(f"K must have shape [..., 3, 3], got {tuple(K.shape)}")
    if isinstance(info, PreprocessInfo):
        infos = [info]
    else:
        if K.ndim < 3:
            raise ValueError(f"{what}: a sequence of PreprocessInfo needs K of shape [..., S, 3, 3], got {tuple(K.shape)}")
        infos = _frame_infos(info, int(K.shape[-3]), what)
    mats = np.stack([(i.model_to_original_matrix() if inverse else i.original_to_model_matrix()) for i in infos])
    affine = mats[0] if isinstance(info, PreprocessInfo) else mats
    if isinstance(K, torch.Tensor):
        dtype = K.dtype if K.is_floating_point() else torch.float32
        return torch.as_tensor(affine, dtype=dtype, device=K.device) @ K.to(dtype)
    dtype = K.dtype if np.issubdtype(K.dtype, np.floating) else np.float64
    return affine.astype(dtype) @ K.astype(dtype, copy=False)


def intrinsics_to_original(
    K: torch.Tensor | np.ndarray, info: PreprocessInfo | Sequence[PreprocessInfo]
) -> torch.Tensor | np.ndarray:
    """Map model-pixel intrinsics ``[..., 3, 3]`` to original-image pixels.

    ``fx / sx``, ``fy / sy``, ``cx' = (cx - pad_left) / sx``, ``cy' = (cy - pad_top + crop_top) / sy``. ``info`` is
    one PreprocessInfo, or one per frame for ``K`` of shape ``[..., S, 3, 3]``. Returns the input's type.
    """
    return _apply_affine_to_k(K, info, inverse=True, what="intrinsics_to_original")


def intrinsics_to_model(
    K: torch.Tensor | np.ndarray, info: PreprocessInfo | Sequence[PreprocessInfo]
) -> torch.Tensor | np.ndarray:
    """Map original-image intrinsics ``[..., 3, 3]`` to model pixels (inverse of :func:`intrinsics_to_original`)."""
    return _apply_affine_to_k(K, info, inverse=False, what="intrinsics_to_model")


def _apply_affine_to_points(
    uv: torch.Tensor | np.ndarray, info: PreprocessInfo, inverse: bool
) -> torch.Tensor | np.ndarray:
    if not isinstance(info, PreprocessInfo):
        raise TypeError(f"info must be a PreprocessInfo, got {type(info).__name__}")
    if not isinstance(uv, (torch.Tensor, np.ndarray)):
        raise TypeError(f"uv must be a torch.Tensor or numpy array, got {type(uv).__name__}")
    if uv.ndim < 1 or uv.shape[-1] != 2:
        raise ValueError(f"uv must have shape [..., 2] (u, v), got {tuple(uv.shape)}")
    mat = info.model_to_original_matrix() if inverse else info.original_to_model_matrix()
    scale = np.array([mat[0, 0], mat[1, 1]])
    shift = np.array([mat[0, 2], mat[1, 2]])
    if isinstance(uv, torch.Tensor):
        dtype = uv.dtype if uv.is_floating_point() else torch.float32
        return uv.to(dtype) * torch.as_tensor(scale, dtype=dtype, device=uv.device) + torch.as_tensor(
            shift, dtype=dtype, device=uv.device
        )
    dtype = uv.dtype if np.issubdtype(uv.dtype, np.floating) else np.float64
    return uv.astype(dtype, copy=False) * scale.astype(dtype) + shift.astype(dtype)


def pixels_to_model(uv: torch.Tensor | np.ndarray, info: PreprocessInfo) -> torch.Tensor | np.ndarray:
    """Original-image pixel coordinates ``[..., 2]`` (u, v) to model pixels: ``(u sx + pad_left, v sy + offset_y)``."""
    return _apply_affine_to_points(uv, info, inverse=False)


def pixels_to_original(uv: torch.Tensor | np.ndarray, info: PreprocessInfo) -> torch.Tensor | np.ndarray:
    """Model pixel coordinates ``[..., 2]`` (u, v) back to original-image pixels (inverse of :func:`pixels_to_model`)."""
    return _apply_affine_to_points(uv, info, inverse=True)


__all__ = [
    "DEFAULT_TARGET_SIZE",
    "MODES",
    "PATCH_SIZE",
    "PreprocessInfo",
    "intrinsics_to_model",
    "intrinsics_to_original",
    "load_and_preprocess_images",
    "mask_to_original",
    "pixels_to_model",
    "pixels_to_original",
    "plan_geometry",
    "preprocess_frame",
    "preprocess_images",
]
