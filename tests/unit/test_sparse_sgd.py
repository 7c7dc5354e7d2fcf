import copy

import pytest
import torch
from torch.testing import assert_close

import partialfc as pfc

SETTINGS = [
    dict(lr=0.1, momentum=0.9, weight_decay=5e-4),
    dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=1e-3),
    dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4),
    dict(lr=0.2),
]


def _sparse(rows: list[int], values: torch.Tensor, shape) -> torch.Tensor:
    return torch.sparse_coo_tensor(torch.tensor([rows]), values, shape, check_invariants=True)


@pytest.mark.parametrize("settings", SETTINGS)
def test_used_rows_follow_dense_sgd_and_others_stay_untouched(settings: dict) -> None:
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(20, 4, dtype=torch.float64))
    used = [2, 3, 11, 19]
    dense = torch.nn.Parameter(weight.detach()[used].clone())
    sparse_opt = pfc.SparseSGD([weight], **settings)
    dense_opt = torch.optim.SGD([dense], **settings)
    before = weight.detach().clone()
    for _ in range(4):
        grads = torch.randn(len(used), 4, dtype=torch.float64)
        weight.grad = _sparse(used, grads, weight.shape)
        dense.grad = grads.clone()
        sparse_opt.step()
        dense_opt.step()
    assert_close(weight.detach()[used], dense.detach(), rtol=1e-12, atol=1e-14)
    others = [i for i in range(20) if i not in used]
    assert torch.equal(weight.detach()[others], before[others])
    if settings.get("momentum"):
        buf = sparse_opt.state[weight]["momentum_buffer"]
        assert_close(buf[used], dense_opt.state[dense]["momentum_buffer"], rtol=1e-12, atol=1e-14)
        assert torch.count_nonzero(buf[others]) == 0


def test_rows_join_late_and_lazily() -> None:
    """A row first used at step 3 starts its momentum then, as a fresh dense SGD would."""
    settings = dict(lr=0.1, momentum=0.9, dampening=0.5, weight_decay=1e-2)
    weight = torch.nn.Parameter(torch.ones(6, 2, dtype=torch.float64))
    opt = pfc.SparseSGD([weight], **settings)
    for step in range(3):
        weight.grad = _sparse(
            [0], torch.full((1, 2), 1.0 + step, dtype=torch.float64), weight.shape
        )
        opt.step()
    late = torch.nn.Parameter(torch.ones(1, 2, dtype=torch.float64))
    ref = torch.optim.SGD([late], **settings)
    for step in range(2):
        weight.grad = _sparse(
            [4], torch.full((1, 2), 3.0 - step, dtype=torch.float64), weight.shape
        )
        late.grad = torch.full((1, 2), 3.0 - step, dtype=torch.float64)
        opt.step()
        ref.step()
    assert_close(weight.detach()[4:5], late.detach(), rtol=1e-12, atol=1e-14)


def test_full_row_set_and_dense_gradients_match_torch_sgd() -> None:
    settings = dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=5e-4)
    torch.manual_seed(1)
    a = torch.nn.Parameter(torch.randn(7, 3, dtype=torch.float64))
    b = torch.nn.Parameter(a.detach().clone())
    c = torch.nn.Parameter(a.detach().clone())
    opts = (
        pfc.SparseSGD([a], **settings),
        pfc.SparseSGD([b], **settings),
        torch.optim.SGD([c], **settings),
    )
    for _ in range(3):
        g = torch.randn(7, 3, dtype=torch.float64)
        a.grad = _sparse(list(range(7)), g.clone(), a.shape)  # every row present
        b.grad = g.clone()  # dense
        c.grad = g.clone()
        for opt in opts:
            opt.step()
    assert_close(a.detach(), c.detach(), rtol=1e-12, atol=1e-14)
    assert_close(b.detach(), c.detach(), rtol=1e-12, atol=1e-14)


def test_uncoalesced_accumulated_gradient_is_summed() -> None:
    weight = torch.nn.Parameter(torch.zeros(5, 2, dtype=torch.float64))
    opt = pfc.SparseSGD([weight], lr=1.0)
    weight.grad = _sparse([1, 3], torch.ones(2, 2, dtype=torch.float64), weight.shape) + _sparse(
        [3, 4], torch.ones(2, 2, dtype=torch.float64), weight.shape
    )
    opt.step()
    assert weight[3].tolist() == [-2.0, -2.0] and weight[1].tolist() == [-1.0, -1.0]
    assert weight[0].tolist() == [0.0, 0.0]


def test_state_dict_round_trip() -> None:
    weight = torch.nn.Parameter(torch.randn(8, 3, dtype=torch.float64))
    twin = torch.nn.Parameter(weight.detach().clone())
    opt = pfc.SparseSGD([weight], lr=0.1, momentum=0.9, weight_decay=1e-3)
    weight.grad = _sparse([1, 5], torch.randn(2, 3, dtype=torch.float64), weight.shape)
    opt.step()
    with torch.no_grad():
        twin.copy_(weight)
    resumed = pfc.SparseSGD([twin], lr=0.1, momentum=0.9, weight_decay=1e-3)
    resumed.load_state_dict(copy.deepcopy(opt.state_dict()))  # as a checkpoint would
    g = _sparse([1, 2], torch.randn(2, 3, dtype=torch.float64), weight.shape)
    weight.grad, twin.grad = g, g.clone()
    opt.step()
    resumed.step()
    assert torch.equal(weight, twin)


def test_head_step_changes_only_the_sampled_rows() -> None:
    torch.manual_seed(0)
    head = pfc.PartialFC(pfc.CosFace(), embedding_size=8, num_classes=400, sample_rate=0.1)
    opt = pfc.SparseSGD([head.weight], lr=0.5, momentum=0.9, weight_decay=5e-4)
    before = head.weight.detach().clone()
    head(torch.randn(6, 8), torch.randint(0, 400, (6,))).backward()
    opt.step()
    changed = (head.weight.detach() != before).any(1).nonzero().flatten()
    assert set(changed.tolist()) <= set(head.last_index.tolist())
    assert changed.numel() > 0.9 * head.last_index.numel()


@pytest.mark.parametrize(
    "kwargs", [dict(lr=-1), dict(momentum=-0.1), dict(weight_decay=-1), dict(nesterov=True)]
)
def test_bad_hyper_parameters(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        pfc.SparseSGD([torch.nn.Parameter(torch.zeros(2))], **kwargs)
