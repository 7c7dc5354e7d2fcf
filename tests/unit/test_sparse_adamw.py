"""SparseAdamW against torch.optim.AdamW, torch.optim.SparseAdam and a row-by-row re-derivation."""

import copy
import math

import pytest
import torch
from torch.testing import assert_close

import partialfc as pfc
from partialfc.optim import _rows

SETTINGS = [
    dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2),
    dict(lr=3e-2, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1),
    dict(lr=1e-2, weight_decay=0.0),
]
TIGHT = dict(rtol=1e-12, atol=1e-14)


def _sparse(rows: list[int], values: torch.Tensor, shape) -> torch.Tensor:
    return torch.sparse_coo_tensor(torch.tensor([rows]), values, shape, check_invariants=True)


def _reference(start: torch.Tensor, steps: list[tuple[list[int], torch.Tensor]], s: dict):
    """Lazy AdamW re-derived one row at a time in Python floats: (weights, exp_avg, exp_avg_sq)."""
    lr, wd, eps = s["lr"], s.get("weight_decay", 1e-2), s.get("eps", 1e-8)
    b1, b2 = s.get("betas", (0.9, 0.999))
    w = start.tolist()
    m = [[0.0] * len(r) for r in w]
    v = [[0.0] * len(r) for r in w]
    for t, (rows, grads) in enumerate(steps, start=1):
        for row, g_row in zip(rows, grads.tolist(), strict=True):
            for j, g in enumerate(g_row):
                w[row][j] *= 1 - lr * wd
                m[row][j] = b1 * m[row][j] + (1 - b1) * g
                v[row][j] = b2 * v[row][j] + (1 - b2) * g * g
                m_hat, v_hat = m[row][j] / (1 - b1**t), v[row][j] / (1 - b2**t)
                w[row][j] -= lr * m_hat / (math.sqrt(v_hat) + eps)
    return tuple(torch.tensor(x, dtype=torch.float64) for x in (w, m, v))


@pytest.mark.parametrize("settings", SETTINGS)
@pytest.mark.parametrize("kind", ["sparse_all_rows", "dense", "sparse_chunked"])
def test_every_row_every_step_equals_torch_adamw(settings: dict, kind: str, monkeypatch) -> None:
    if kind == "sparse_chunked":  # the gather path, three rows per chunk
        monkeypatch.setattr(_rows, "MAX_CHUNK_ELEMENTS", 3 * 5)
    torch.manual_seed(0)
    rows = 8 if kind != "sparse_chunked" else 9  # 9: one extra row, never used, keeps it sparse
    a = torch.nn.Parameter(torch.randn(rows, 5, dtype=torch.float64))
    ref = torch.nn.Parameter(a.detach()[:8].clone())
    opt, ref_opt = pfc.SparseAdamW([a], **settings), torch.optim.AdamW([ref], **settings)
    for _ in range(5):
        g = torch.randn(8, 5, dtype=torch.float64)
        a.grad = g.clone() if kind == "dense" else _sparse(list(range(8)), g.clone(), a.shape)
        ref.grad = g
        opt.step()
        ref_opt.step()
    assert_close(a.detach()[:8], ref.detach(), **TIGHT)
    for key in ("exp_avg", "exp_avg_sq"):
        assert_close(opt.state[a][key][:8], ref_opt.state[ref][key], **TIGHT)
    assert float(opt.state[a]["step"]) == 5.0


@pytest.mark.parametrize("settings", SETTINGS)
def test_only_used_rows_and_their_moments_change_lazily(settings: dict) -> None:
    """Random row sets: a row's decay and moments move at its own steps; t is the parameter's."""
    g = torch.Generator().manual_seed(3)
    start = torch.randn(12, 3, dtype=torch.float64, generator=g)
    weight = torch.nn.Parameter(start.clone())
    opt = pfc.SparseAdamW([weight], **settings)
    steps = []
    for _ in range(6):
        rows = sorted(torch.randperm(12, generator=g)[:4].tolist())
        grads = torch.randn(4, 3, dtype=torch.float64, generator=g)
        steps.append((rows, grads))
        weight.grad = _sparse(rows, grads.clone(), weight.shape)
        opt.step()
    w, m, v = _reference(start, steps, settings)
    assert_close(weight.detach(), w, **TIGHT)
    assert_close(opt.state[weight]["exp_avg"], m, **TIGHT)
    assert_close(opt.state[weight]["exp_avg_sq"], v, **TIGHT)
    never = sorted(set(range(12)) - {r for rows, _ in steps for r in rows})
    assert torch.equal(weight.detach()[never], start[never])


def test_without_weight_decay_and_eps_it_is_torch_sparse_adam() -> None:
    """torch's own lazy Adam, with its step count per parameter (its eps sits elsewhere, and must
    be > 0: a negligible one)."""
    g = torch.Generator().manual_seed(4)
    a = torch.nn.Parameter(torch.randn(10, 4, dtype=torch.float64, generator=g))
    b = torch.nn.Parameter(a.detach().clone())
    ours = pfc.SparseAdamW([a], lr=0.05, eps=1e-300, weight_decay=0.0)
    theirs = torch.optim.SparseAdam([b], lr=0.05, eps=1e-300)
    for _ in range(5):
        rows = sorted(torch.randperm(10, generator=g)[:3].tolist())
        grads = torch.randn(3, 4, dtype=torch.float64, generator=g)
        a.grad, b.grad = _sparse(rows, grads, a.shape), _sparse(rows, grads.clone(), b.shape)
        ours.step()
        theirs.step()
    assert_close(a.detach(), b.detach(), **TIGHT)


def test_accumulated_gradients_are_summed_before_the_update() -> None:
    """Two backward calls before one step (grad accumulation): one step with their sum."""
    torch.manual_seed(5)
    head = pfc.PartialFC(pfc.CosFace(), 6, 30, sample_rate=0.5, dtype=torch.float64, seed=2)
    twin = copy.deepcopy(head)
    opt = pfc.SparseAdamW([head.weight], lr=0.1, weight_decay=0.05)
    x, y = torch.randn(8, 6, dtype=torch.float64), torch.randint(0, 30, (8,))
    for half in (slice(0, 4), slice(4, 8)):
        head(x[half], y[half]).backward()
    grad = head.weight.grad.coalesce()
    rows, values = grad.indices()[0].tolist(), grad.values()
    assert len(rows) < 30, "sampling leaves rows out"
    opt.step()
    # the twin's reference: its own forward/backward on each half, the sum taken densely
    dense = torch.zeros(30, 6, dtype=torch.float64)
    for half in (slice(0, 4), slice(4, 8)):
        twin.weight.grad = None
        twin(x[half], y[half]).backward()
        dense += twin.weight.grad.to_dense()
    assert_close(dense[rows], values, **TIGHT)
    w, _, _ = _reference(
        twin.weight.detach(), [(rows, dense[rows])], dict(lr=0.1, weight_decay=0.05)
    )
    assert_close(head.weight.detach(), w, **TIGHT)


def test_update_rows_counts_one_step_per_backward() -> None:
    """The fused head's per-chunk calls: the chunks of one backward are one step."""
    torch.manual_seed(6)
    a = torch.nn.Parameter(torch.randn(9, 3, dtype=torch.float64))
    b = torch.nn.Parameter(a.detach().clone())
    chunked, whole = pfc.SparseAdamW([a], lr=0.1), pfc.SparseAdamW([b], lr=0.1)
    for _ in range(3):
        g = torch.randn(7, 3, dtype=torch.float64)
        rows = torch.tensor([0, 1, 3, 4, 5, 7, 8])
        chunked.update_rows(a, rows[:3], g[:3])
        chunked.update_rows(a, slice(4, 6), g[3:5])  # rows 5 and 7 -> as a slice: rows 4, 5
        chunked.update_rows(a, rows[5:], g[5:])
        chunked.step()  # closes the step; a has no grad
        full = torch.zeros(9, 3, dtype=torch.float64)
        full[rows[:3]], full[4:6], full[rows[5:]] = g[:3], g[3:5], g[5:]
        b.grad = _sparse([0, 1, 3, 4, 5, 7, 8], full[[0, 1, 3, 4, 5, 7, 8]], b.shape)
        whole.step()
    assert float(chunked.state[a]["step"]) == 3.0
    assert_close(a.detach(), b.detach(), **TIGHT)
    chunked.update_rows(a, slice(0, 1), torch.ones(1, 3, dtype=torch.float64))
    chunked.zero_grad()  # the trainer skipped that step's step(): the next backward is a new step
    chunked.update_rows(a, slice(0, 1), torch.ones(1, 3, dtype=torch.float64))
    assert float(chunked.state[a]["step"]) == 5.0


def test_state_dict_round_trip() -> None:
    weight = torch.nn.Parameter(torch.randn(8, 3, dtype=torch.float64))
    twin = torch.nn.Parameter(weight.detach().clone())
    opt = pfc.SparseAdamW([weight], lr=0.1)
    weight.grad = _sparse([1, 5], torch.randn(2, 3, dtype=torch.float64), weight.shape)
    opt.step()
    with torch.no_grad():
        twin.copy_(weight)
    resumed = pfc.SparseAdamW([twin], lr=0.1)
    resumed.load_state_dict(copy.deepcopy(opt.state_dict()))  # as a checkpoint would
    g = _sparse([1, 2], torch.randn(2, 3, dtype=torch.float64), weight.shape)
    weight.grad, twin.grad = g, g.clone()
    opt.step()
    resumed.step()
    assert torch.equal(weight, twin)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(lr=-1),
        dict(betas=(1.0, 0.9)),
        dict(betas=(0.9, -0.1)),
        dict(eps=-1),
        dict(weight_decay=-1),
    ],
)
def test_bad_hyper_parameters(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        pfc.SparseAdamW([torch.nn.Parameter(torch.zeros(2))], **kwargs)
