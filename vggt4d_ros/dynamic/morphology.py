"""Binary morphology on the device with OpenCV's conventions (the refinement's closing and dilation).

* :func:`ellipse_kernel` is OpenCV's ``getStructuringElement(MORPH_ELLIPSE, (n, n))``; :func:`square_kernel` a
  block of ones.
* :func:`binary_dilate`, :func:`binary_erode`, :func:`binary_close` work on ``[S, H, W]`` (or ``[H, W]``) bool
  masks with convolutions. Border handling follows OpenCV's defaults: pixels outside the image count as
  background for dilation and as foreground for erosion, so a closing never erodes a mask that touches the
  border (SciPy: ``binary_dilation(..., border_value=0)``, ``binary_erosion(..., border_value=1)``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ELLIPSE_5X5", "binary_close", "binary_dilate", "binary_erode", "ellipse_kernel", "square_kernel"]

#: OpenCV ``getStructuringElement(MORPH_ELLIPSE, (5, 5))``.
ELLIPSE_5X5 = torch.tensor(
    [
        [0, 0, 1, 0, 0],
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1],
        [0, 0, 1, 0, 0],
    ],
    dtype=torch.bool,
)


def ellipse_kernel(size: int) -> Tensor:
    """Elliptical structuring element ``[size, size]`` bool, the shape of OpenCV's ``MORPH_ELLIPSE``.

    OpenCV's definition for a square kernel: with ``r = size // 2``, row ``i`` (``dy = i - r``) is set on
    columns ``r - dx .. r + dx`` where ``dx = round(r * sqrt(1 - dy^2 / r^2))``. ``size`` must be odd.
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"ellipse kernel size must be odd and >= 1, got {size}")
    if size == 5:
        return ELLIPSE_5X5.clone()
    r = size // 2
    if r == 0:
        return torch.ones(1, 1, dtype=torch.bool)
    dy = torch.arange(size, dtype=torch.float64) - r
    dx = torch.round(r * torch.sqrt(torch.clamp(1.0 - dy**2 / r**2, min=0.0)))
    cols = torch.arange(size, dtype=torch.float64) - r
    return cols[None, :].abs() <= dx[:, None]


def square_kernel(size: int) -> Tensor:
    """Square structuring element ``[size, size]`` of ones (bool)."""
    if size < 1:
        raise ValueError(f"kernel size must be >= 1, got {size}")
    return torch.ones(size, size, dtype=torch.bool)


def _check_morph_args(mask: Tensor, kernel: Tensor) -> tuple[Tensor, Tensor, bool]:
    if kernel.ndim != 2 or kernel.shape[0] % 2 == 0 or kernel.shape[1] % 2 == 0:
        raise ValueError(f"structuring element must be 2-D with odd sides, got {tuple(kernel.shape)}")
    squeeze = mask.ndim == 2
    if squeeze:
        mask = mask[None]
    if mask.ndim != 3:
        raise ValueError(f"mask must be [H, W] or [S, H, W], got {tuple(mask.shape)}")
    return mask.bool(), kernel.to(device=mask.device, dtype=torch.float32), squeeze


def _hit_count(mask: Tensor, weights: Tensor, pad_value: float) -> Tensor:
    """``out[s, y, x] = sum_ij weights[i, j] * mask_padded[s, y + i - ry, x + j - rx]`` (float counts)."""
    kh, kw = weights.shape
    x = mask.to(torch.float32)[:, None]
    x = F.pad(x, (kw // 2, kw // 2, kh // 2, kh // 2), mode="constant", value=pad_value)
    return F.conv2d(x, weights[None, None])[:, 0]


def binary_dilate(mask: Tensor, kernel: Tensor) -> Tensor:
    """Binary dilation ``out[z] = OR_b mask[z - b]`` over the offsets ``b`` set in ``kernel`` (centred).

    Pixels outside the image are background (OpenCV's default; SciPy's ``border_value=0``).

    Args:
        mask: ``[S, H, W]`` or ``[H, W]`` bool.
        kernel: ``[kh, kw]`` structuring element with odd sides.

    Returns:
        Dilated mask, same shape, bool, on the mask's device.
    """
    mask, weights, squeeze = _check_morph_args(mask, kernel)
    out = _hit_count(mask, torch.flip(weights, dims=(0, 1)), 0.0) > 0.5
    return out[0] if squeeze else out


def binary_erode(mask: Tensor, kernel: Tensor) -> Tensor:
    """Binary erosion ``out[z] = AND_b mask[z + b]`` over the offsets ``b`` set in ``kernel`` (centred).

    Pixels outside the image are foreground (OpenCV's default; SciPy's ``border_value=1``).

    Args:
        mask: ``[S, H, W]`` or ``[H, W]`` bool.
        kernel: ``[kh, kw]`` structuring element with odd sides.

    Returns:
        Eroded mask, same shape, bool, on the mask's device.
    """
    mask, weights, squeeze = _check_morph_args(mask, kernel)
    total = float(weights.sum())
    out = _hit_count(mask, weights, 1.0) > total - 0.5
    return out[0] if squeeze else out


def binary_close(mask: Tensor, kernel: Tensor) -> Tensor:
    """Binary closing (dilation then erosion) with OpenCV's border handling (see :func:`binary_dilate`,
    :func:`binary_erode`): a mask touching the image border is not eroded there."""
    return binary_erode(binary_dilate(mask, kernel), kernel)
