import itertools

import numpy as np
import pytest
import torch

from partialfc.eval import embed, fold_accuracy, verify
from partialfc.eval.verification import embed_with_norms, val_at_far
from partialfc.train.evaluation import EvalMetrics
from partialfc.train.schedule import learning_rate


def _pairs(distances: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors whose squared distances are exactly ``distances`` (2 - 2 cos)."""
    cos = 1 - np.asarray(distances) / 2
    e1 = np.tile([1.0, 0.0], (len(distances), 1))
    e2 = np.stack([cos, np.sqrt(1 - cos**2)], axis=1)
    return e1, e2


def test_hand_computed_case() -> None:
    # 10 folds of 2 pairs: same pairs at distance 0.5, different at 1.5, except fold 0's different
    # pair sits at 0.3 (an outlier). The other folds' training data always contain that outlier and
    # pick threshold 0.51 (the lowest with the best training accuracy, 17/18), so fold 0 gets 1/2
    # right and every other fold 2/2: mean 0.95, std 0.15.
    dist = [0.5, 0.3] + [0.5, 1.5] * 9
    same = np.array([True, False] * 10)
    result = fold_accuracy(*_pairs(dist), same, folds=10)
    assert result.accuracy == pytest.approx(0.95)
    assert result.std == pytest.approx(0.15)
    assert result.thresholds[1:] == (0.51,) * 9
    # Fold 0's own training data hold no outlier: it picks the lowest perfect threshold, 0.51 too.
    assert result.thresholds[0] == pytest.approx(0.51)


def test_perfectly_separable_set_scores_one() -> None:
    dist = [0.2, 2.0] * 10
    result = fold_accuracy(*_pairs(dist), np.array([True, False] * 10))
    assert result.accuracy == 1.0 and result.std == 0.0


def test_bad_shapes_are_rejected() -> None:
    e1, e2 = _pairs([0.1] * 12)
    with pytest.raises(ValueError, match="shapes differ"):
        fold_accuracy(e1, e2[:5], np.ones(12, bool))
    with pytest.raises(ValueError, match="at least 10 pairs"):
        fold_accuracy(e1[:4], e2[:4], np.ones(4, bool))


class _LeftHalf(torch.nn.Module):
    """An 'embedding' that sees only the left half of the image: flipping changes it."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (
            torch.stack([x[..., :2].mean((1, 2, 3)), x[..., 2:].mean((1, 2, 3)) * 0 + 1], 1)
            * self.w
        )


def test_embed_adds_the_flipped_view_and_normalises() -> None:
    images = torch.zeros(3, 3, 2, 4)
    images[..., :2] = 1.0  # left half bright: plain view (1, 1), flipped view (0, 1)
    model = _LeftHalf().train()
    plain, flipped = embed(model, images, flip=False), embed(model, images, flip=True)
    assert model.training, "the model's mode is restored"
    torch.testing.assert_close(plain[0], torch.tensor([1.0, 1.0]) / 2**0.5)
    torch.testing.assert_close(flipped[0], torch.tensor([1.0, 2.0]) / 5**0.5)


def test_verify_pairs_consecutive_images() -> None:
    images = torch.rand(40, 3, 2, 4)
    images[1::2] = images[0::2]  # every pair identical ...
    issame = torch.ones(20, dtype=torch.bool)
    issame[10:] = False
    images[21::2] = torch.rand(10, 3, 2, 4) + 5  # ... except the second half, made different
    result = verify(_LeftHalf(), images, issame)
    assert result.accuracy >= 0.9
    with pytest.raises(ValueError, match="two per pair"):
        verify(_LeftHalf(), images[:39], issame)


def test_val_uses_the_interpolated_far_threshold() -> None:
    # 10 folds of (same, different). Every different pair sits at 2.0005, so on 9 training folds
    # FAR jumps from 0 (threshold 2.000) to 1 (2.001): FAR 1e-3 interpolates to 2.000001. Same
    # pairs at 2.0000005 (folds 0-4) fall below it, those at 2.0000015 (folds 5-9) above: VAL is
    # 0.5 +- 0.5 at FAR 0. Without interpolation (2.000) VAL would be 0; with 2.001 it'd be 1, FAR 1.
    dist = np.array([[2.0000005 if k < 5 else 2.0000015, 2.0005] for k in range(10)]).ravel()
    same = np.array([True, False] * 10)
    assert val_at_far(dist, same) == pytest.approx((0.5, 0.5, 0.0))
    result = fold_accuracy(*_pairs(dist.tolist()), same)
    assert (result.val, result.val_std, result.far) == pytest.approx((0.5, 0.5, 0.0), abs=1e-6)


def test_val_is_zero_when_no_threshold_reaches_the_far() -> None:
    # insightface's rule: no threshold in [0, 4) accepts a different pair, so the threshold is 0.
    dist = np.array([0.1, 4.5] * 10)
    assert val_at_far(dist, np.array([True, False] * 10)) == (0.0, 0.0, 0.0)


def test_xnorm_is_the_mean_raw_norm_of_both_views() -> None:
    images = torch.zeros(40, 3, 2, 4)
    images[..., :2] = 1.0  # plain view (1, 1): norm sqrt 2; flipped view (0, 1): norm 1
    _, norms = embed_with_norms(_LeftHalf(), images)
    torch.testing.assert_close(norms[0], torch.tensor([2**0.5, 1.0]))
    result = verify(_LeftHalf(), images, torch.tensor([True, False] * 10))
    assert result.xnorm == pytest.approx((2**0.5 + 1) / 2)
    assert verify(_LeftHalf(), images, torch.ones(20, dtype=torch.bool), flip=False).xnorm == (
        pytest.approx(2**0.5)
    )


def test_eval_metrics_keep_the_best_accuracy() -> None:
    metrics = EvalMetrics()
    first = fold_accuracy(*_pairs([0.2, 2.0] * 10), np.array([True, False] * 10))
    worse = fold_accuracy(*_pairs([0.5, 0.3] + [0.5, 1.5] * 9), np.array([True, False] * 10))
    assert metrics({"lfw": first})["eval/lfw/best"] == 1.0
    logged = metrics({"lfw": worse})
    assert logged["eval/lfw"] == pytest.approx(0.95) and logged["eval/lfw/best"] == 1.0
    assert set(logged) == {
        f"eval/lfw{k}" for k in ("", "/std", "/val", "/val_std", "/far", "/xnorm", "/best")
    }


def test_schedule_warms_up_then_decays_to_zero() -> None:
    lrs = [learning_rate(s, 0.1, total_steps=10, warmup_steps=2, power=2.0) for s in range(10)]
    assert lrs[0] == pytest.approx(0.05) and lrs[1] == pytest.approx(0.1)
    assert lrs[2] == pytest.approx(0.1) and lrs[6] == pytest.approx(0.1 * 0.5**2)
    assert all(a >= b for a, b in itertools.pairwise(lrs[1:]))
    assert learning_rate(10, 0.1, 10, 2) == 0.0
    with pytest.raises(ValueError, match="warmup_steps"):
        learning_rate(0, 0.1, 10, 10)
