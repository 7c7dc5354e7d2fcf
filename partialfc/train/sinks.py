"""The trainer's metric sinks, chosen by ``[metrics]``: Prometheus on every rank (its own port),
and on rank 0 the JSON lines, TensorBoard and Weights & Biases."""

from __future__ import annotations

from partialfc.errors import UserError
from partialfc.metrics import (
    JsonlSink,
    MetricSink,
    MetricsPortError,
    MultiSink,
    PrometheusSink,
    StallWatch,
)
from partialfc.train.config import Config
from partialfc.train.runtime import Runtime


def build_sinks(cfg: Config, rt: Runtime, health: StallWatch) -> MetricSink:
    """The run's sinks; the Prometheus server (if any) answers ``/healthz`` from ``health``.

    Raises:
        UserError: the metrics port or host cannot be used (naming ``metrics.port`` or
            ``metrics.host``, the rank and the port), or wandb is missing for
            ``metrics.wandb_project``.
    """
    m = cfg.metrics
    out = cfg.train.output_dir
    sinks: list[MetricSink] = []
    if m.port:  # before the files: a busy port must leave no file behind
        sinks.append(_prometheus(cfg, rt, health))
    if rt.is_main:
        if m.jsonl:
            sinks.append(JsonlSink(f"{out}/metrics.jsonl"))
        if m.tensorboard_enabled():
            from partialfc.metrics.tensorboard import TensorBoardSink

            sinks.append(TensorBoardSink(f"{out}/tensorboard"))
        if m.wandb_project:
            from partialfc.metrics.weights_and_biases import WandbSink

            sinks.append(WandbSink(m.wandb_project, out, cfg.to_dict()))
    return MultiSink(sinks)


def _prometheus(cfg: Config, rt: Runtime, health: StallWatch) -> PrometheusSink:
    m = cfg.metrics
    port = m.port + rt.local_rank
    try:
        # The server thread reads the watch's clock only: it answers while the training thread is
        # stuck in a collective.
        return PrometheusSink(
            port,
            host=m.host,
            rank=rt.rank,
            healthy=health.healthy,
            progress_age=health.seconds_since_progress,
        )
    except MetricsPortError as err:
        key = f"metrics.host = {m.host!r}" if err.about_host else f"metrics.port = {m.port}"
        raise UserError(
            f"{key}: rank {rt.rank} (local rank {rt.local_rank}) serves /metrics and "
            f"/healthz on port {port} (metrics.port + local rank), but {err.problem}"
        ) from None
