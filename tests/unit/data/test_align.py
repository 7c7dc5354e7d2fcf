"""Five-point alignment against a closed form derived independently (complex least squares)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from partialfc.data.align import (
    ARCFACE_TEMPLATE,
    estimate_norm,
    norm_crop,
    similarity_transform,
    template,
    warp_affine,
)

# insightface python-package/insightface/utils/face_align.py, ``arcface_dst``
INSIGHTFACE_POINTS = [
    (38.2946, 51.6963),
    (73.5318, 51.5014),
    (56.0252, 71.7366),
    (41.5493, 92.3655),
    (70.7299, 92.2041),
]


def _closed_form(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity in the complex plane: dst ~ z * src + t, z = a + ib.

    Minimising sum |z p_i + t - q_i|^2 over complex z, t gives, for centred points,
    z = sum(conj(p) q) / sum |p|^2; a complex factor is a rotation and a scale, never a reflection.
    """
    p = src[:, 0] + 1j * src[:, 1]
    q = dst[:, 0] + 1j * dst[:, 1]
    pc, qc = p - p.mean(), q - q.mean()
    z = np.sum(np.conj(pc) * qc) / np.sum(np.abs(pc) ** 2)
    t = q.mean() - z * p.mean()
    return np.array([[z.real, -z.imag, t.real], [z.imag, z.real, t.imag]])


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def _similarity(angle_deg: float, scale: float, tx: float, ty: float) -> np.ndarray:
    a = math.radians(angle_deg)
    c, s = scale * math.cos(a), scale * math.sin(a)
    return np.array([[c, -s, tx], [s, c, ty]])


def test_template_is_insightfaces_points() -> None:
    np.testing.assert_array_equal(ARCFACE_TEMPLATE, np.array(INSIGHTFACE_POINTS))
    np.testing.assert_allclose(template(224), np.array(INSIGHTFACE_POINTS) * 2)
    expected_128 = np.array(INSIGHTFACE_POINTS) * (128 / 128) + [8.0, 0.0]
    np.testing.assert_allclose(template(128), expected_128)
    with pytest.raises(ValueError, match="multiple of 112 or 128"):
        template(100)


def test_exact_landmarks_land_on_the_template() -> None:
    # A face 2.7x larger than the crop, turned by 23 degrees, somewhere in a photo.
    placement = _similarity(23.0, 2.7, 310.5, -40.25)
    landmarks = _apply(placement, ARCFACE_TEMPLATE)
    matrix = estimate_norm(landmarks)
    assert np.abs(_apply(matrix, landmarks) - ARCFACE_TEMPLATE).max() < 1e-3
    # The fit inverts the placement.
    inverse = np.linalg.inv(np.vstack([placement, [0, 0, 1]]))[:2]
    np.testing.assert_allclose(matrix, inverse, atol=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_noisy_landmarks_match_the_closed_form(seed: int) -> None:
    rng = np.random.default_rng(seed)
    placement = _similarity(rng.uniform(-60, 60), rng.uniform(0.5, 4), *rng.uniform(-200, 200, 2))
    landmarks = _apply(placement, ARCFACE_TEMPLATE) + rng.normal(0, 3.0, (5, 2))
    for size in (112, 224, 128):
        got = estimate_norm(landmarks.astype(np.float32), size)
        np.testing.assert_allclose(got, _closed_form(landmarks, template(size)), atol=1e-4)


def test_mirrored_landmarks_still_give_a_rotation() -> None:
    # Landmarks of a mirror image (left and right swapped sides): the best *reflection* would
    # fit exactly, but a similarity must keep det > 0 and be the best proper rotation.
    mirrored = ARCFACE_TEMPLATE * [-1.0, 1.0] + [200.0, 0.0]
    matrix = similarity_transform(mirrored, ARCFACE_TEMPLATE)
    assert np.linalg.det(matrix[:, :2]) > 0
    np.testing.assert_allclose(matrix, _closed_form(mirrored, ARCFACE_TEMPLATE), atol=1e-9)


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"\(5, 2\)"):
        estimate_norm(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="coincide"):
        similarity_transform(np.ones((5, 2)), ARCFACE_TEMPLATE)


def test_warp_samples_bilinearly_with_a_black_border() -> None:
    # Bilinear interpolation of a linear image is exact: out(x, y) = f(M^-1 (x, y)) inside.
    h, w = 60, 80
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    image = np.stack([2.0 * xs + 3.0 * ys + 1.0, xs - ys + 100.0], axis=-1)
    matrix = _similarity(17.0, 0.8, 5.0, -3.0)
    out = warp_affine(image, matrix, (50, 40))
    assert out.shape == (40, 50, 2)
    inverse = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2]
    oy, ox = np.mgrid[0:40, 0:50].astype(np.float64)
    src = _apply(inverse, np.stack([ox.ravel(), oy.ravel()], axis=1))
    inside = (src[:, 0] >= 0) & (src[:, 0] <= w - 1) & (src[:, 1] >= 0) & (src[:, 1] <= h - 1)
    outside = (src[:, 0] < -1) | (src[:, 0] > w) | (src[:, 1] < -1) | (src[:, 1] > h)
    assert inside.sum() > 500 and outside.sum() > 50, "the case covers both regions"
    expected = np.stack([2 * src[:, 0] + 3 * src[:, 1] + 1, src[:, 0] - src[:, 1] + 100], axis=1)
    flat = out.reshape(-1, 2)
    np.testing.assert_allclose(flat[inside], expected[inside], atol=1e-9)
    assert np.all(flat[outside] == 0)


def test_norm_crop_recovers_a_placed_crop() -> None:
    # A 112x112 pattern placed into a photo by a similarity comes back from its landmarks.
    rng = np.random.default_rng(0)
    crop = np.kron(rng.integers(0, 256, (14, 14, 3)), np.ones((8, 8, 1))).astype(np.uint8)
    placement = _similarity(-12.0, 2.0, 40.0, 60.0)
    photo = warp_affine(crop, placement, (320, 320))
    back = norm_crop(photo, _apply(placement, ARCFACE_TEMPLATE))
    assert back.dtype == np.uint8 and back.shape == (112, 112, 3)
    core = (slice(8, 104), slice(8, 104))  # block edges blur by a pixel or so
    diff = np.abs(back[core].astype(int) - crop[core].astype(int))
    assert np.median(diff) <= 2 and diff.mean() < 12
    shifted = norm_crop(photo, _apply(placement, ARCFACE_TEMPLATE) + np.array([8.0, 0.0]))
    assert np.abs(shifted[core].astype(int) - crop[core].astype(int)).mean() > 3 * diff.mean()
