"""Five-point face alignment onto insightface's ArcFace crop (numpy only).

A face is aligned by the least-squares similarity transform (rotation, uniform scale,
translation; no reflection) that carries its five landmarks -- left eye, right eye, nose tip,
left and right mouth corner, in image pixels -- onto the five points of the canonical 112x112
crop every insightface model (and every partialfc model trained on insightface data) was trained
on. The transform is Umeyama's closed form, as scikit-image's ``SimilarityTransform.estimate``
computes it in insightface's ``face_align.py``; the warp samples bilinearly with a black border,
as OpenCV's ``warpAffine`` does, with pixel centres at integer coordinates.
"""

from __future__ import annotations

import numpy as np

ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],  # left eye (in the image: the subject's right)
        [73.5318, 51.5014],  # right eye
        [56.0252, 71.7366],  # nose tip
        [41.5493, 92.3655],  # left mouth corner
        [70.7299, 92.2041],  # right mouth corner
    ]
)
"""The five landmark positions of insightface's 112x112 ArcFace crop, (x, y) in pixels."""


def template(size: int = 112) -> np.ndarray:
    """The five template points for a ``size`` x ``size`` crop.

    Sizes that are multiples of 112 scale the 112 template; multiples of 128 scale it by
    ``size/128`` and centre it horizontally (8 px at 128), as insightface does.

    Raises:
        ValueError: ``size`` is a multiple of neither 112 nor 128.
    """
    if size > 0 and size % 112 == 0:
        return ARCFACE_TEMPLATE * (size / 112.0)
    if size > 0 and size % 128 == 0:
        ratio = size / 128.0
        return ARCFACE_TEMPLATE * ratio + np.array([8.0 * ratio, 0.0])
    raise ValueError(f"alignment size must be a multiple of 112 or 128, got {size}")


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 similarity ``M`` minimising ``sum |M [src_i; 1] - dst_i|^2`` (Umeyama, 1991).

    Args:
        src: (K, 2) points, K >= 2, not all equal.
        dst: (K, 2) points they should land on.

    Returns:
        (2, 3) float64 ``[s R | t]`` with ``R`` a proper rotation.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise ValueError(f"need two (K, 2) point sets with K >= 2, got {src.shape}, {dst.shape}")
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    variance = float(np.sum(src_c**2)) / src.shape[0]
    if variance == 0.0:
        raise ValueError("the source points coincide: no similarity transform is defined")
    cov = dst_c.T @ src_c / src.shape[0]  # (2, 2) cross-covariance
    u, sv, vt = np.linalg.svd(cov)
    # A reflection would fit better when det(cov) < 0; Umeyama's sign flip keeps a rotation.
    d = np.array([1.0, -1.0 if np.linalg.det(u) * np.linalg.det(vt) < 0 else 1.0])
    rotation = u @ np.diag(d) @ vt
    scale = float(sv @ d) / variance
    out = np.empty((2, 3))
    out[:, :2] = scale * rotation
    out[:, 2] = dst_mean - scale * rotation @ src_mean
    return out


def estimate_norm(landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """The 2x3 transform taking a face's five ``landmarks`` (5, 2) onto the template."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.shape != (5, 2):
        raise ValueError(f"landmarks must be (5, 2) (x, y) points, got shape {landmarks.shape}")
    return similarity_transform(landmarks, template(size))


def warp_affine(image: np.ndarray, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``out[y, x] = image(M^-1 [x, y])``, bilinear, zero outside ``image``.

    Args:
        image: (H, W) or (H, W, C) array.
        matrix: (2, 3) forward transform (input pixel -> output pixel).
        size: ``(width, height)`` of the output, as OpenCV orders it.

    Returns:
        The warped image, ``image``'s dtype (integers rounded and clipped).
    """
    width, height = size
    inverse = np.linalg.inv(np.vstack([np.asarray(matrix, dtype=np.float64), [0.0, 0.0, 1.0]]))
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    sx = inverse[0, 0] * xs + inverse[0, 1] * ys + inverse[0, 2]
    sy = inverse[1, 0] * xs + inverse[1, 1] * ys + inverse[1, 2]
    x0, y0 = np.floor(sx).astype(np.int64), np.floor(sy).astype(np.int64)
    fx, fy = sx - x0, sy - y0
    src = np.asarray(image)
    flat = src.reshape(src.shape[0], src.shape[1], -1)  # (H, W, C) view, no copy
    out = np.zeros((height, width, flat.shape[2]))
    h, w = src.shape[:2]
    # Each of the four neighbours contributes where it lies inside the image; outside is black.
    for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
        xi, yi = x0 + dx, y0 + dy
        weight = (fx if dx else 1 - fx) * (fy if dy else 1 - fy)
        inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        values = flat[np.clip(yi, 0, h - 1), np.clip(xi, 0, w - 1)].astype(np.float64)
        out += np.where(inside, weight, 0.0)[..., None] * values
    if np.issubdtype(src.dtype, np.integer):
        info = np.iinfo(src.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    out = out.astype(src.dtype)
    return out.reshape((height, width, *src.shape[2:]))


def norm_crop(image: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """The ``size`` x ``size`` aligned crop of the face with five ``landmarks`` in ``image``.

    Args:
        image: (H, W, C) or (H, W) image, any channel order (it is kept).
        landmarks: (5, 2) pixel positions (x, y) of left eye, right eye, nose tip, left and right
            mouth corner, as insightface's detectors and IJB metadata give them.
        size: output side, a multiple of 112 (or of 128, insightface's 128 variant).

    Returns:
        The crop, ``image``'s dtype.
    """
    return warp_affine(image, estimate_norm(landmarks, size), (size, size))
