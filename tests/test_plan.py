"""gptdist.plan against what real runs do: the state's bytes exactly and the activations within 10% of a
real two-process run's (gptdist.bench memory), the largest micro-batch at the edge of what fits, the data
and steps a run makes, the run's own start-up errors, and every shipped config at 1, 8 and 64 GPUs."""

import json
import subprocess
import sys

import pytest
from environment import REPO
from inputs import train_args
from processes import run_main, torchrun_command, train

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
# a small shape of each recipe: a real two-process run of it takes seconds on a CPU
SMALL = [
    "model.preset=null",
    "model.emb_dim=64",
    "model.n_heads=2",
    "model.n_layers=2",
    "model.context_length=64",
    "train.grad_accum_steps=1",
]
RECIPES = {"gpt2": "configs/bench-cpu-small.yaml", "modern": "configs/bench-cpu-small-modern.yaml"}


def last_json_row(command: list[str]) -> dict:
    """The last line of what `command` prints, a JSON row; it must succeed."""
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


def plan(*args) -> dict:
    result = run_main("gptdist.plan", *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
@pytest.mark.parametrize("micro_batch", [2, 4])
@pytest.mark.parametrize("recipe", RECIPES)
def test_the_plan_holds_what_a_real_run_holds(verdict_data, recipe, micro_batch, parallel):
    """Parameters, gradients and optimizer state to the byte, the activations one forward keeps and the step's
    peak within 10%, against `gptdist.bench memory` on two real processes (the largest rank's figures)."""
    overrides = [
        f"data.dir={verdict_data}",
        *SMALL,
        f"train.micro_batch_size={micro_batch}",
        f"train.parallel={parallel}",
    ]
    measured = last_json_row(torchrun_command(2, "memory", "--config", RECIPES[recipe], "--steps", "1",
                                              *overrides, module="gptdist.bench"))
    planned = plan("--config", RECIPES[recipe], "--gpus-per-node", "2", *overrides)["memory_bytes"]
    for kind in ("parameters", "gradients", "optimizer"):
        assert planned[kind] == round(measured[f"{kind}_mb"] * 2**20), (kind, planned, measured)
    real_activations = measured["activations_mb"] * 2**20
    assert abs(planned["activations"] - real_activations) <= 0.1 * real_activations, (planned, measured)
    real_peak = measured["tracked_peak_mb"] * 2**20
    assert abs(planned["peak"] - real_peak) <= 0.1 * real_peak, (planned, measured)


def between_the_peaks_at_4_and_8(common: list[str]) -> list[str]:
    """A GPU whose memory lies halfway between the plan's peaks at micro-batch 4 (accumulation 4) and 8
    (accumulation 2) of a rank's 16 sequences: 4 fits, 8 does not, by a wide margin."""
    roomy = ["--gpu", "100:100:1"]
    four, eight = (plan(*common, *roomy, f"train.micro_batch_size={size}",
                        f"train.grad_accum_steps={16 // size}")["memory_bytes"]["peak"] for size in (4, 8))
    assert four < eight
    return ["--gpu", f"{(four + eight) / 2 / 2**30}:100:1"]


def test_the_largest_micro_batch_fits_and_the_next_one_does_not(verdict_data):
    """On a GPU too small for the config's micro-batch of 16, the plan names the largest that fits with the
    accumulation that keeps the global batch: 4, where 4 fits and 8 does not."""
    common = ["--config", RECIPES["gpt2"], "--gpus-per-node", "2", f"data.dir={verdict_data}", *SMALL,
              "--headroom", "0"]
    gpu = between_the_peaks_at_4_and_8(common)
    tight = plan(*common, *gpu, "train.micro_batch_size=16", "train.grad_accum_steps=1")
    assert not tight["fits"]
    assert (tight["max_micro_batch"], tight["max_micro_batch_grad_accum"]) == (4, 4)
    at_largest = plan(*common, *gpu, "train.micro_batch_size=4", "train.grad_accum_steps=4")
    assert at_largest["fits"] and at_largest["global_batch"] == tight["global_batch"] == 32


def test_an_automatic_micro_batch_is_the_largest_that_fits_the_global_batch(verdict_data):
    """train.micro_batch_size: auto plans the largest divisor of each rank's share of
    train.global_batch_size that fits."""
    common = ["--config", RECIPES["gpt2"], "--gpus-per-node", "2", f"data.dir={verdict_data}", *SMALL,
              "--headroom", "0"]
    auto = plan(*common, *between_the_peaks_at_4_and_8(common), "train.micro_batch_size=auto",
                "train.global_batch_size=32")
    assert auto["micro_batch_auto"] and auto["fits"] and auto["global_batch"] == 32
    assert (auto["micro_batch_size"], auto["grad_accum_steps"]) == (4, 4)


def test_fsdp_divides_the_state_among_the_gpus(verdict_data):
    common = ["--config", RECIPES["gpt2"], f"data.dir={verdict_data}", *SMALL, "train.parallel=fsdp"]
    two, eight = (plan(*common, "--gpus-per-node", str(n))["memory_bytes"] for n in (2, 8))
    for kind in ("parameters", "gradients", "optimizer"):
        assert 3.8 <= two[kind] / eight[kind] <= 4.0, (kind, two, eight)
    assert two["activations"] == eight["activations"]


def test_the_data_and_steps_are_those_the_run_makes(tmp_path, verdict_data):
    """Two epochs of The Verdict at two ranks: the plan's steps are the run's, and --data-tokens of the same
    size gives the same windows where the data is elsewhere."""
    args = train_args(verdict_data, tmp_path / "run", "train.epochs=2", "eval.interval=100")
    result = train(2, *args)
    planned = plan(*args[:2], "--gpus-per-node", "2", *args[2:])
    assert f"{planned['steps']} steps" in result.stdout, (planned, result.stdout[:500])
    assert planned["data"]["epochs"] == 2
    assert planned["data"]["source"] == "the prepared data folders"
    tokens = planned["data"]["tokens"]
    elsewhere = plan(
        *args[:2],
        "--gpus-per-node",
        "2",
        *args[2:],
        f"data.dir={tmp_path}/on-the-cluster",
        "--data-tokens",
        str(tokens),
    )
    assert elsewhere["data"]["windows"] == planned["data"]["windows"]
    assert elsewhere["steps"] == planned["steps"]
    assert elsewhere["not_checked"] == [f"data.dir {tmp_path}/on-the-cluster"]


def test_a_run_that_would_stop_at_start_up_stops_the_plan_with_its_line(tmp_path, verdict_data):
    args = train_args(verdict_data, tmp_path / "run", "train.micro_batch_size=80")
    run = train(2, *args, check=False)
    planned = run_main("gptdist.plan", *args[:2], "--gpus-per-node", "2", *args[2:])
    line = "a global batch of 160 sequences is larger than the train split"
    assert run.returncode != 0 and line in run.stderr
    assert planned.returncode == 2 and planned.stderr.startswith(f"gptdist.plan: error: {line}")
    assert planned.stderr.count("\n") == 1


@pytest.mark.parametrize("config", CONFIGS, ids=[path.stem for path in CONFIGS])
def test_every_config_plans_at_one_eight_and_sixty_four_gpus(tmp_path, config):
    """Each shipped config, one block deep (the time of a full-depth measure is the benchmark's), its data on
    the cluster, on one GPU, a node of eight and eight nodes: the table prints, and the JSON says what
    scripts read."""
    elsewhere = ["model.n_layers=1", f"data.dir={tmp_path}/on-the-cluster", "--data-tokens", "10000000000"]
    table = run_main("gptdist.plan", "--config", config, *elsewhere)
    assert table.returncode == 0, table.stderr
    assert "memory per GPU" in table.stdout and "peak" in table.stdout and table.stderr == ""
    for nodes, per_node in ((1, 1), (1, 8), (8, 8)):
        planned = plan(
            "--config", config, "--nodes", str(nodes), "--gpus-per-node", str(per_node), *elsewhere
        )
        assert planned["world_size"] == nodes * per_node
        memory = planned["memory_gib"]
        assert 0 < memory["parameters"] <= memory["peak"] and memory["activations"] > 0
        assert isinstance(planned["fits"], bool) and planned["max_micro_batch"] >= 0
        assert planned["step_s"] > 0 and planned["tokens_per_s"] > 0 and 0 < planned["mfu"] <= 1
        assert planned["hours"] > 0 and planned["gpu_hours"] == pytest.approx(
            planned["hours"] * nodes * per_node
        )
        assert planned["checkpoint_gib"] > 0 and planned["mfu_source"]


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_the_gpu_benchmarks_plan_part_sets_the_plan_beside_the_run(verdict_data, parallel):
    """benchmarks/plan_vs_run.py (gpu.sh's `plan` part) on a CPU with a tiny shape: one row of planned and
    measured figures, the state equal."""
    row = last_json_row([sys.executable, "benchmarks/plan_vs_run.py", "--config", RECIPES["gpt2"],
                         "--steps", "1", f"data.dir={verdict_data}", *SMALL, f"train.parallel={parallel}"])
    assert row["benchmark"] == "plan" and row["parallel"] == parallel
    assert row["plan_state_mb"] == row["measured_state_mb"]
    assert row["plan_peak_mb"] > 0 and row["measured_peak_mb"] > 0 and row["plan_ms_per_step"] > 0
