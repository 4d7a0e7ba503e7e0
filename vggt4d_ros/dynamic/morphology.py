"""Binary morphology on the device with OpenCV's conventions (the refinement's closing and dilation).

* :func:`ellipse_kernel` is OpenCV's ``getStructuringElement(MORPH_ELLIPSE, (n, n))``; :func:`square_kernel` a
  block of ones.
* :func:`binary_dilate`, :func:`binary_erode`, :func:`binary_close` work on ``[S, H, W]`` (or ``[H, W]``) bool
  masks with ORs of shifted views (exact, any device). Border handling follows OpenCV's defaults: pixels outside the image count as
  background for dilation and as foreground for erosion, so a closing never erodes a mask that touches the
  border (SciPy: ``binary_dilation(..., border_value=0)``, ``binary_erosion(..., border_value=1)``).
"""

from __future__ import annotations

import torch
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
    return mask.bool(), kernel.detach().to("cpu", torch.bool), squeeze


def _or_of_shifts(mask: Tensor, kernel: Tensor, fill: bool) -> Tensor:
    """``out[s, y, x] = OR over the set entries (i, j) of kernel of padded[s, y + i - ry, x + j - rx]``, where
    pixels outside the image read ``fill``.

    Separable by rows: the rows of the kernel with the same set of columns share one horizontal OR (for the 5x5
    ellipse: two distinct rows, 4 + 4 ORs instead of 20), then the rows are ORed with vertical shifts. Only views
    and element-wise ORs of bool tensors: exact, on any device, no float convolution.
    """
    S, H, W = mask.shape
    kh, kw = kernel.shape
    ry, rx = kh // 2, kw // 2
    padded = torch.full((S, H + 2 * ry, W + 2 * rx), fill, dtype=torch.bool, device=mask.device)
    padded[:, ry:ry + H, rx:rx + W] = mask
    rows: dict[tuple[int, ...], Tensor] = {}
    out: Tensor | None = None
    for i in range(kh):
        cols = tuple(j for j in range(kw) if bool(kernel[i, j]))
        if not cols:
            continue
        if cols not in rows:
            row = padded[:, :, cols[0]:cols[0] + W].clone()
            for j in cols[1:]:
                row |= padded[:, :, j:j + W]
            rows[cols] = row  # [S, H + 2 ry, W]
        shifted = rows[cols][:, i:i + H]
        out = shifted.clone() if out is None else out.logical_or_(shifted)
    if out is None:  # an empty structuring element
        return torch.full_like(mask, fill)
    return out


def binary_dilate(mask: Tensor, kernel: Tensor) -> Tensor:
    """Binary dilation ``out[z] = OR_b mask[z - b]`` over the offsets ``b`` set in ``kernel`` (centred).

    Pixels outside the image are background (OpenCV's default; SciPy's ``border_value=0``).

    Args:
        mask: ``[S, H, W]`` or ``[H, W]`` bool.
        kernel: ``[kh, kw]`` structuring element with odd sides.

    Returns:
        Dilated mask, same shape, bool, on the mask's device.
    """
    mask, kernel, squeeze = _check_morph_args(mask, kernel)
    out = _or_of_shifts(mask, torch.flip(kernel, dims=(0, 1)), False)
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
    mask, kernel, squeeze = _check_morph_args(mask, kernel)
    out = ~_or_of_shifts(~mask, kernel, False)  # AND of mask = NOT OR of NOT mask (outside: NOT foreground)
    return out[0] if squeeze else out


def binary_close(mask: Tensor, kernel: Tensor) -> Tensor:
    """Binary closing (dilation then erosion) with OpenCV's border handling (see :func:`binary_dilate`,
    :func:`binary_erode`): a mask touching the image border is not eroded there."""
    return binary_erode(binary_dilate(mask, kernel), kernel)
