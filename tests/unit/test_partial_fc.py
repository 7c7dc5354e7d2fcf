"""PartialFC in one plain process (torch.distributed not initialised)."""

import pytest
import torch
from torch.testing import assert_close

import partialfc as pfc
from tests import reference as ref


def _setup(dtype=torch.float64, classes=50, dim=16, batch=8, **kw):
    torch.manual_seed(0)
    head = pfc.PartialFC(
        pfc.ArcFace(s=16.0, m=0.5), embedding_size=dim, num_classes=classes, dtype=dtype, **kw
    )
    x = torch.randn(batch, dim, dtype=dtype, requires_grad=True)
    y = torch.randint(0, classes, (batch,))
    return head, x, y


def test_single_process_matches_reference_without_torch_distributed() -> None:
    assert not torch.distributed.is_initialized()
    head, x, y = _setup()
    loss = head(x, y)
    loss.backward()
    r_loss, r_gx, r_gw, _ = ref.loss_and_grads(
        ref.Spec("combined", s=16.0, m2=0.5), x, head.weight, None, y
    )
    assert_close(loss.detach(), r_loss, rtol=1e-9, atol=1e-12)
    assert_close(x.grad, r_gx, rtol=1e-9, atol=1e-12)
    assert_close(head.weight.grad.to_dense(), r_gw, rtol=1e-9, atol=1e-12)
    assert loss.dtype == torch.float64


def test_float32_is_close_to_float64() -> None:
    head64, x64, y = _setup()
    head32 = pfc.PartialFC(pfc.ArcFace(s=16.0, m=0.5), embedding_size=16, num_classes=50)
    with torch.no_grad():
        head32.weight.copy_(head64.weight)
    x32 = x64.detach().float().requires_grad_()
    l64, l32 = head64(x64, y), head32(x32, y)
    l64.backward()
    l32.backward()
    assert l32.dtype == torch.float32
    assert_close(l32.double(), l64.detach(), rtol=1e-5, atol=1e-6)
    assert_close(x32.grad.double(), x64.grad, rtol=1e-4, atol=1e-6)


def test_bf16_autocast_runs_the_gemm_in_bf16_and_keeps_float32_statistics() -> None:
    head, _, y = _setup(dtype=torch.float32)
    x = torch.randn(8, 16, requires_grad=True)
    exact = head(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = head(x, y)
    assert mixed.dtype == torch.float32
    assert not torch.equal(mixed, exact), "the GEMM really ran in bf16"
    assert_close(mixed, exact, rtol=2e-2, atol=2e-2)
    mixed.backward()
    assert x.grad.dtype == torch.float32 and torch.isfinite(x.grad).all()
    assert head.weight.grad.dtype == torch.float32


def test_initialisation_depends_on_seed_only() -> None:
    a = pfc.PartialFC(pfc.ArcFace(), embedding_size=8, num_classes=10_000, seed=3)
    b = pfc.PartialFC(pfc.ArcFace(), embedding_size=8, num_classes=10_000, seed=3)
    c = pfc.PartialFC(pfc.ArcFace(), embedding_size=8, num_classes=10_000, seed=4)
    assert torch.equal(a.weight, b.weight) and not torch.equal(a.weight, c.weight)
    assert a.weight.std().item() == pytest.approx(0.01, rel=0.05)


def test_gradient_is_sparse_and_names_only_used_rows() -> None:
    head, x, y = _setup(sample_rate=0.2, classes=200)
    head(x, y).backward()
    grad = head.weight.grad
    assert grad.is_sparse and grad.shape == head.weight.shape
    rows = grad.coalesce().indices()[0]
    assert set(rows.tolist()) <= set(head.last_index.tolist())
    assert head.last_index.numel() == max(int(0.2 * 200), len(set(y.tolist())))


def test_gradient_accumulation_sums_two_backwards() -> None:
    head, x, y = _setup()
    head(x[:4], y[:4]).backward()
    head(x[4:], y[4:]).backward()
    accumulated = head.weight.grad.to_dense()
    separate = torch.zeros_like(accumulated)
    for sl in (slice(0, 4), slice(4, 8)):
        head.zero_grad(set_to_none=True)
        head(x[sl], y[sl]).backward()
        separate += head.weight.grad.to_dense()
    assert_close(accumulated, separate, rtol=1e-12, atol=1e-15)


def test_tiny_sample_rate_with_an_empty_sample_still_works() -> None:
    # int(0.01 * 50) = 0 rows and no positive on this (only) shard would leave nothing to score;
    # every label is a positive here, so the sample is exactly the positives.
    head, x, y = _setup(sample_rate=0.01)
    loss = head(x, y)
    assert head.last_index.numel() == len(set(y.tolist()))
    loss.backward()
    assert torch.isfinite(x.grad).all()


def test_retain_graph_is_refused_clearly() -> None:
    head, x, y = _setup()
    loss = head(x, y)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="retain_graph"):
        loss.backward()


def test_state_dict_round_trip_keeps_the_sampling_step() -> None:
    head, x, y = _setup(sample_rate=0.3)
    head(x, y)
    head(x, y)
    state = head.state_dict()
    fresh = pfc.PartialFC(
        pfc.ArcFace(s=16.0, m=0.5),
        embedding_size=16,
        num_classes=50,
        sample_rate=0.3,
        dtype=torch.float64,
    )
    fresh.load_state_dict(state)
    assert fresh.step == 2
    head(x, y)
    fresh(x, y)
    assert torch.equal(head.last_index, fresh.last_index), "resumed sampling continues identically"


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(sample_rate=0.0), "sample_rate"),
        (dict(sample_rate=1.5), "sample_rate"),
        (dict(embedding_size=0), "embedding_size"),
        (dict(interclass_filtering_threshold=-0.1), "interclass_filtering_threshold"),
        (dict(num_classes=0), "num_classes"),
    ],
)
def test_bad_constructor_arguments(kwargs: dict, match: str) -> None:
    args = dict(embedding_size=8, num_classes=10) | kwargs
    with pytest.raises(ValueError, match=match):
        pfc.PartialFC(pfc.ArcFace(), **args)


def test_filter_needs_a_cosine_margin() -> None:
    with pytest.raises(ValueError, match="normalised margin"):
        pfc.PartialFC(
            pfc.Softmax(), embedding_size=8, num_classes=10, interclass_filtering_threshold=0.3
        )


@pytest.mark.parametrize("rate", [1.0, 0.5])
def test_rows_streamed_in_small_blocks_give_the_same_result(monkeypatch, rate: float) -> None:
    import partialfc.heads._core as core

    monkeypatch.setattr(core, "BLOCK_ELEMENTS", 16 * 7)  # 7 rows per block, uneven tail
    head, x, y = _setup(sample_rate=rate)
    loss = head(x, y)
    loss.backward()
    spec = ref.Spec("combined", s=16.0, m2=0.5)
    r_loss, r_gx, r_gw, _ = ref.loss_and_grads(
        spec, x, head.weight, None, y, columns=head.last_index
    )
    assert_close(loss.detach(), r_loss, rtol=1e-9, atol=1e-12)
    assert_close(x.grad, r_gx, rtol=1e-9, atol=1e-12)
    assert_close(head.weight.grad.to_dense(), r_gw, rtol=1e-9, atol=1e-12)


def test_single_backward_gradient_is_flagged_coalesced_so_the_optimizer_copies_nothing() -> None:
    head, x, y = _setup(sample_rate=0.5)
    head(x, y).backward()
    assert head.weight.grad.is_coalesced()
    values = head.weight.grad._values()
    assert head.weight.grad.coalesce()._values().data_ptr() == values.data_ptr()


def test_accumulated_sampled_gradients_update_the_union_of_rows_correctly() -> None:
    head, x, y = _setup(sample_rate=0.3, classes=60)
    start = head.weight.detach().clone()
    expected = torch.zeros_like(start)
    for sl in (slice(0, 4), slice(4, 8)):  # two backwards, two different samples
        probe = pfc.PartialFC(
            pfc.ArcFace(s=16.0, m=0.5),
            embedding_size=16,
            num_classes=60,
            sample_rate=0.3,
            dtype=torch.float64,
        )
        probe.load_state_dict(head.state_dict())
        probe(x[sl], y[sl]).backward()
        expected += probe.weight.grad.to_dense()
        head(x[sl], y[sl]).backward()
    pfc.SparseSGD([head.weight], lr=0.5).step()
    assert_close(head.weight.detach(), start - 0.5 * expected, rtol=1e-12, atol=1e-14)
