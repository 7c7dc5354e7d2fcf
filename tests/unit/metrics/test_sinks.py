import io
import json
import math

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
            {"loss": 1.25, "lr": 0.05, "time/forward": 0.02, "nonfinite_steps": 2, "custom/x": 3},
            step=9,
        )
        sink.log_dict({"nonfinite_steps": 3}, step=10)
        status, text = http_get(f"http://127.0.0.1:{sink.port}/metrics")
        assert status == 200
        assert 'partialfc_loss{rank="1"} 1.25' in text
        assert 'partialfc_learning_rate{rank="1"} 0.05' in text
        assert 'partialfc_step{rank="1"} 10.0' in text
        assert 'partialfc_nonfinite_steps_total{rank="1"} 3.0' in text
        assert 'partialfc_step_seconds_count{phase="forward",rank="1"} 1.0' in text
        assert 'partialfc_custom_x{rank="1"} 3.0' in text
        assert 'partialfc_checkpoint_age_seconds{rank="1"} NaN' in text
        assert http_get(f"http://127.0.0.1:{sink.port}/healthz") == (200, "ok\n")
        healthy["ok"] = False
        assert http_get(f"http://127.0.0.1:{sink.port}/healthz")[0] == 503
    finally:
        sink.close()
