import io
import json
import math
import shutil
import subprocess

import pytest

from partialfc.metrics import JsonlSink, MetricSink, MultiSink, PrometheusSink, StdoutSink
from tests.http import http_get


def test_jsonl_sink_writes_one_valid_object_per_step(tmp_path) -> None:
    sink = JsonlSink(tmp_path / "run" / "metrics.jsonl")
    sink.log_dict({"loss": 2.5, "lr": 0.1}, step=1)
    sink.log_dict({"loss": math.nan, "lr": 0.1}, step=2)
    sink.close()
    again = JsonlSink(tmp_path / "run" / "metrics.jsonl")  # a resumed run appends
    again.log("loss", 1.5, step=3)
    again.close()
    lines = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert lines == [
        {"step": 1, "loss": 2.5, "lr": 0.1},
        {"step": 2, "loss": None, "lr": 0.1},
        {"step": 3, "loss": 1.5},
    ]


def test_stdout_and_multi_sinks_satisfy_the_protocol(tmp_path) -> None:
    out = io.StringIO()
    multi = MultiSink([StdoutSink(out), JsonlSink(tmp_path / "m.jsonl")])
    assert all(isinstance(s, MetricSink) for s in (*multi.sinks, multi))
    multi.log_dict({"loss": 0.75}, step=4)
    multi.close()
    assert out.getvalue() == "step 4  loss 0.75\n"
    assert json.loads((tmp_path / "m.jsonl").read_text()) == {"step": 4, "loss": 0.75}


def test_prometheus_sink_serves_metrics_and_health() -> None:
    pytest.importorskip("prometheus_client")
    healthy = {"ok": True}
    sink = PrometheusSink(port=0, host="127.0.0.1", rank=1, healthy=lambda: healthy["ok"])
    try:
        sink.log_dict(
            {
                "loss": 1.25,
                "lr": 0.05,
                "head_lr": 0.5,
                "rank_samples": 64,
                "time/forward": 0.02,
                "nonfinite_steps": 2,
                "custom/x": 3,
            },
            step=9,
        )
        sink.log_dict({"nonfinite_steps": 3, "rank_samples": 64, "checkpoint_time": 1.5e9}, step=10)
        sink.log_dict({"eval/lfw": 0.75, "eval/lfw/xnorm": 21.0, "eval/lfw/best": 0.8}, step=10)
        status, text = http_get(f"http://127.0.0.1:{sink.port}/metrics")
        assert status == 200
        assert 'partialfc_loss{rank="1"} 1.25' in text
        assert 'partialfc_learning_rate{optimizer="backbone",rank="1"} 0.05' in text
        assert 'partialfc_learning_rate{optimizer="head",rank="1"} 0.5' in text
        assert 'partialfc_step{rank="1"} 10.0' in text
        assert 'partialfc_steps_total{rank="1"} 2.0' in text
        assert 'partialfc_samples_total{rank="1"} 128.0' in text
        assert 'partialfc_nonfinite_steps_total{rank="1"} 3.0' in text
        assert 'partialfc_step_duration_seconds_count{phase="forward",rank="1"} 1.0' in text
        assert 'partialfc_custom_x{rank="1"} 3.0' in text
        assert 'partialfc_last_checkpoint_timestamp_seconds{rank="1"} 1.5e+09' in text
        assert 'partialfc_eval_accuracy{rank="1",set="lfw"} 0.75' in text
        assert 'partialfc_eval_xnorm{rank="1",set="lfw"} 21.0' in text
        assert 'partialfc_eval_best_accuracy{rank="1",set="lfw"} 0.8' in text
        assert "partialfc_eval_lfw" not in text, "one metric with a set label, not one per set"
        assert "process_cpu_seconds_total" in text and "python_gc_objects_collected_total" in text
        assert http_get(f"http://127.0.0.1:{sink.port}/healthz") == (200, "ok\n")
        healthy["ok"] = False
        assert http_get(f"http://127.0.0.1:{sink.port}/healthz")[0] == 503
    finally:
        sink.close()


def test_prometheus_sink_output_passes_promtool() -> None:
    """``promtool check metrics`` (Prometheus' own linter) finds nothing, every series present."""
    pytest.importorskip("prometheus_client")
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian's prometheus package; .ci/run installs it)")
    sink = PrometheusSink(port=0, host="127.0.0.1", rank=0, progress_age=lambda: 2.0)
    try:
        sink.log_dict(
            {
                "loss": 1.0,
                "lr": 0.1,
                "head_lr": 0.1,
                "rank_samples": 32,
                "grad_norm": 3.0,
                "loss_scale": 65536.0,
                "sample_rate": 0.5,
                "samples_per_second": 100.0,
                "memory_bytes": 1e9,
                "margin/t": 0.25,
                "nonfinite_steps": 0,
                "checkpoint_time": 1e9,
                **{f"time/{p}": 0.1 for p in ("data", "forward", "backward", "optimizer", "total")},
                **{f"eval/lfw/{w}": 0.5 for w in ("std", "val", "val_std", "far", "xnorm", "best")},
                "eval/lfw": 0.9,
            },
            step=1,
        )
        _, text = http_get(f"http://127.0.0.1:{sink.port}/metrics")
    finally:
        sink.close()
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert checked.returncode == 0 and not (checked.stdout + checked.stderr).strip(), (
        checked.stdout + checked.stderr
    )
