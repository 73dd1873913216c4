"""MFU, ETA and time to the first step: the arithmetic, and the figures the benchmark reports."""

import json
import os

import pytest
import torch
from inputs import TINY
from processes import REPO, run_main

from gptdist.observe import flops, throughput
from gptdist.observe.throughput import Throughput


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_tokens_per_second_mfu_and_eta(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(throughput.time, "perf_counter", clock)
    meter = Throughput(tokens_per_step=1000, flops_per_token=2e6, peak=(1e10, "given"), world_size=2,
                       total_steps=110)
    meter.start(step=0)
    clock.now += 30.0  # the first step compiles
    assert meter.first_step_done(torch.device("cpu")) == 30.0
    clock.now += 9 * 0.5
    first = meter.measure(10)  # steps 1-10 in 34.5 s; after the first step: 0.5 s each
    assert first["tokens_per_sec"] == pytest.approx(10 * 1000 / 34.5)
    assert first["eta_s"] == pytest.approx(100 * 0.5, abs=0.05)  # eta_s is kept to 0.1 s
    clock.now += 10 * 0.25
    second = meter.measure(20)
    assert second["tokens_per_sec"] == pytest.approx(4000)
    assert second["mfu"] == pytest.approx(4000 / 2 * 2e6 / 1e10)  # per process, against one device's peak
    assert second["eta_s"] == pytest.approx(90 * (4.5 + 2.5) / 19, abs=0.05)  # mean step time after the first


def test_durations_read_as_time():
    assert [throughput.duration(s) for s in (42.4, 725, 3725)] == ["42s", "12m05s", "1h02m"]


def test_cpu_peak_is_measured_without_touching_the_training_rng():
    torch.manual_seed(3)
    state = torch.get_rng_state()
    assert flops.measured_cpu_peak(torch.float32, seconds=0.05, repeats=2) > 0
    assert torch.equal(torch.get_rng_state(), state)


def test_bench_train_reports_speed_mfu_and_startup(verdict_data):
    result = run_main("gptdist.bench", "train", "--config", REPO / "configs" / "verdict-tiny.yaml", "--steps",
                      "3", "--warmup", "1", "--eval", f"data.dir={verdict_data}", *TINY)
    assert result.returncode == 0, result.stderr[-2000:]
    row = json.loads(result.stdout.strip().splitlines()[-1])
    assert row["tokens_per_sec"] > 0 and 0 < row["mfu"] < 1 and row["torch"] == torch.__version__
    assert row["first_step_s"] > 0 and row["setup_s"] >= row["data_verify_s"] >= 0
    assert row["stop_check_ms_per_step"] >= 0 and len(row["eval_s"]) == 2


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="a Linux /proc")
def test_the_host_peak_starts_again_from_now_when_reset():
    from gptdist.observe.memory import peak_host_bytes, reset_peak_host, resident_host_bytes
    from gptdist.training.heap import release_freed_memory
    block = torch.ones(2**26)  # 256 MiB, written: resident
    del block
    release_freed_memory()
    held = peak_host_bytes()
    assert reset_peak_host()
    assert peak_host_bytes() < held - 200 * 2**20 and peak_host_bytes() >= resident_host_bytes() - 2**20
