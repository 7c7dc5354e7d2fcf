"""A real Prometheus server (Debian's package) scrapes a PrometheusSink and answers queries."""

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from partialfc.metrics import PrometheusSink

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="Debian's prometheus is not installed (.ci/run installs it)"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_prometheus(tmp_path, job: str, target_port: int, web_port: int) -> subprocess.Popen:
    """A Prometheus server on 127.0.0.1:web_port scraping 127.0.0.1:target_port every second."""
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n"
        f"scrape_configs:\n  - job_name: {job}\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
    )
    return subprocess.Popen(
        [PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{web_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _query(port: int, promql: str) -> list:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as resp:
        body = json.load(resp)
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_prometheus_scrapes_the_trainer_metrics(tmp_path) -> None:
    sink = PrometheusSink(port=0, host="127.0.0.1", rank=0)
    sink.log_dict(
        {
            "loss": 1.25,
            "lr": 0.1,
            "samples_per_second": 512.0,
            "rank_samples": 64.0,
            "time/total": 0.3,
            "eval/lfw": 0.875,
            "nonfinite_steps": 2,
        },
        step=7,
    )
    web = _free_port()
    server = _start_prometheus(tmp_path, "partialfc", sink.port, web)
    try:
        deadline, result = time.monotonic() + 60, []
        while time.monotonic() < deadline and not result:
            time.sleep(1)
            try:
                result = _query(web, 'partialfc_loss{job="partialfc"}')
            except OSError:
                continue  # the server is still starting
        assert result, "Prometheus never scraped the endpoint"
        assert float(result[0]["value"][1]) == 1.25
        assert result[0]["metric"]["rank"] == "0"
        assert float(_query(web, "partialfc_step")[0]["value"][1]) == 7
        assert float(_query(web, "partialfc_learning_rate")[0]["value"][1]) == 0.1
        assert float(_query(web, "partialfc_nonfinite_steps_total")[0]["value"][1]) == 2
        assert float(_query(web, "partialfc_samples_total")[0]["value"][1]) == 64
        assert float(_query(web, 'partialfc_eval_accuracy{set="lfw"}')[0]["value"][1]) == 0.875
        duration = 'partialfc_step_duration_seconds_count{phase="total"}'
        assert float(_query(web, duration)[0]["value"][1]) == 1
        assert float(_query(web, 'process_start_time_seconds{job="partialfc"}')[0]["value"][1]) > 0
        assert float(_query(web, 'up{job="partialfc"}')[0]["value"][1]) == 1
    finally:
        server.terminate()
        server.wait(timeout=30)
        sink.close()


def test_prometheus_scrapes_a_running_trainer(small_run_config, tmp_path) -> None:
    import signal
    import sys

    port, web = _free_port(), _free_port()
    trainer = subprocess.Popen(
        [sys.executable, "-m", "partialfc.train", str(small_run_config), f"--train.output_dir={tmp_path / 'run'}",
         "--train.max_steps=100000", "--train.checkpoint_every=100000", f"--metrics.port={port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    server = _start_prometheus(tmp_path, "trainer", port, web)
    try:
        deadline, steps = time.monotonic() + 120, []
        while time.monotonic() < deadline:
            time.sleep(1)
            assert trainer.poll() is None, "the trainer exited early"
            try:
                steps = _query(web, 'partialfc_step{job="trainer"}')
            except OSError:
                continue
            if steps and float(steps[0]["value"][1]) >= 3:
                break
        assert steps and float(steps[0]["value"][1]) >= 3, "Prometheus saw no training progress"
        assert float(_query(web, "partialfc_loss")[0]["value"][1]) > 0
        assert float(_query(web, "partialfc_samples_per_second")[0]["value"][1]) > 0
        lrs = {r["metric"]["optimizer"] for r in _query(web, "partialfc_learning_rate > 0")}
        assert lrs == {"backbone", "head"}
        assert float(_query(web, "partialfc_steps_total")[0]["value"][1]) >= 3
        assert float(_query(web, "partialfc_memory_bytes")[0]["value"][1]) > 1e6
        assert float(_query(web, "partialfc_grad_norm")[0]["value"][1]) > 0
        phases = {
            r["metric"]["phase"] for r in _query(web, "partialfc_step_duration_seconds_count")
        }
        assert phases >= {"data", "forward", "backward", "optimizer", "total"}
        assert float(_query(web, "partialfc_nonfinite_steps_total")[0]["value"][1]) == 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            assert resp.status == 200
    finally:
        trainer.send_signal(signal.SIGTERM)
        trainer.wait(timeout=60)
        server.terminate()
        server.wait(timeout=30)
