"""optim.optimizer muon: Muon's update against torch.optim.Muon, the device-side skip, and training under
ddp and fsdp, with accumulation, a kill -9 and a resume."""

import subprocess
from pathlib import Path

import pytest
import torch
from inputs import newest_model, same_weights, train_args
from processes import hooks_env, kill_job, run_main, start, torchrun_command, train, wait_for

from gptdist.checkpoint import sharded, store
from gptdist.config import ModelConfig, OptimConfig
from gptdist.model.gpt import GPTModel
from gptdist.training import optimizer
from gptdist.training.muon import MuonAdamW

MUON = ("optim.optimizer=muon", "optim.muon_lr=0.02", "model.drop_rate=0.0", "checkpoint.interval=2",
        "checkpoint.keep=5", "eval.interval=100")


def test_the_update_of_one_matrix_is_torchs_muon():
    torch.manual_seed(0)
    ours, theirs = torch.nn.Parameter(torch.randn(48, 16)), torch.nn.Parameter(torch.randn(48, 16))
    with torch.no_grad():
        theirs.copy_(ours)
    gains = [{"params": [torch.nn.Parameter(torch.ones(16))]}]  # AdamW's part, not stepped here
    muon = MuonAdamW([ours], gains, muon_lr=0.05, momentum=0.9, muon_weight_decay=0.1, lr=1e-3,
                     betas=(0.9, 0.95))
    muon.ns_dtype = torch.bfloat16  # torch orthogonalises in bf16; on some CPUs gptdist uses fp32 (muon.py)
    reference = torch.optim.Muon([theirs], lr=0.05, momentum=0.9, weight_decay=0.1, nesterov=True)
    for _ in range(3):
        grad = torch.randn(48, 16)
        ours.grad, theirs.grad = grad.clone(), grad.clone()
        muon.step()
        reference.step()
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
    assert not torch.equal(ours, torch.randn(48, 16))


def test_fp32_orthogonalisation_is_close_to_bf16s():
    from gptdist.training.muon import orthogonalise
    matrix = torch.randn(1, 64, 256)
    exact, fast = orthogonalise(matrix, torch.float32)[0], orthogonalise(matrix, torch.bfloat16)[0].float()
    assert (exact - fast).abs().max() < 0.05 and exact.shape == (64, 256)
    singular = torch.linalg.svdvals(exact)
    assert singular.min() > 0.5 and singular.max() < 1.5  # near-orthogonal rows, as Muon's iteration gives


def test_a_stack_of_matrices_is_orthogonalised_as_each_alone():
    from gptdist.training.muon import orthogonalise
    tall = torch.randn(3, 96, 32)  # tall: the iteration runs on the transposes
    together = orthogonalise(tall, torch.float32)
    for matrix, orthogonal in zip(tall, together, strict=True):
        alone = orthogonalise(matrix[None], torch.float32)[0]
        torch.testing.assert_close(orthogonal, alone, atol=1e-5, rtol=0)


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="reads the CPU's flags from /proc/cpuinfo")
def test_bf16_is_chosen_where_the_cpu_has_bf16_instructions():
    from gptdist.training.muon import bf16_is_fast
    flags = set(Path("/proc/cpuinfo").read_text().split())
    assert bf16_is_fast(torch.device("cpu")) == bool(flags & {"avx512_bf16", "amx_tile"})
    assert bf16_is_fast(torch.device("cuda"))


def test_a_non_finite_step_changes_nothing():
    model = GPTModel(ModelConfig(emb_dim=32, n_heads=2, n_layers=1, context_length=8, vocab_size=50))
    muon = optimizer.build(model, OptimConfig(optimizer="muon"))
    model(torch.randint(0, 50, (2, 8))).sum().backward()
    muon.found_inf = torch.zeros(())
    muon.step()  # moments exist now
    before = {name: t.clone() for name, t in model.state_dict().items()}
    moments = [t.clone() for state in muon.state.values() for t in state.values()]
    for param in model.parameters():
        param.grad = torch.full_like(param, float("nan"))
    muon.found_inf = torch.ones(())
    muon.step()
    assert same_weights(model.state_dict(), before)
    assert all(torch.equal(a, b) for a, b in
               zip(moments, [t for state in muon.state.values() for t in state.values()], strict=True))
    kinds = {group["kind"]: len(group["params"]) for group in muon.param_groups}
    assert kinds["muon"] == 4  # qkv, out_proj, fc, proj of the one block; the rest is AdamW's


def full_weights(out):
    """The newest checkpoint's weights, from a file or a sharded folder."""
    path = store.checkpoint_paths(out / "checkpoints")[-1]
    if not sharded.is_sharded(path):
        return store.read(path)["model"]
    model = GPTModel(ModelConfig(**store.read(path)["config"]["model"]))
    sharded.load_model(path, model)
    return model.state_dict()


@pytest.mark.slow
def test_two_processes_are_one_with_accumulation_and_fsdp_is_ddp(tmp_path, verdict_data):
    run = (*MUON, "train.max_steps=3", "train.micro_batch_size=4")
    train(1, *train_args(verdict_data, tmp_path / "one", *run, "train.grad_accum_steps=2"))
    train(2, *train_args(verdict_data, tmp_path / "ddp", *run))
    train(2, *train_args(verdict_data, tmp_path / "fsdp", *run, "train.parallel=fsdp",
                         "checkpoint.sharded=true"))
    one, ddp, fsdp = (full_weights(tmp_path / name) for name in ("one", "ddp", "fsdp"))
    for name in one:
        torch.testing.assert_close(ddp[name], one[name], atol=1e-5, rtol=0)
        torch.testing.assert_close(fsdp[name], ddp[name], atol=1e-5, rtol=0)


@pytest.mark.slow
def test_a_killed_muon_run_resumes_bit_for_bit(tmp_path, verdict_data):
    run = (*MUON, "train.max_steps=6")
    train(2, *train_args(verdict_data, tmp_path / "whole", *run))
    killed, gate = tmp_path / "killed", tmp_path / "gate"
    held = hooks_env(gate=gate)
    # step 2's write goes through, step 4's is held before its rename: the kill lands between them
    (gate / "step_00000002.pt").touch()
    proc = start(torchrun_command(2, *train_args(verdict_data, killed, *run)), env=held,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_for((gate / "step_00000004.pt.held").exists, proc)
    kill_job(proc, killed)
    assert (killed / "checkpoints" / "step_00000002.pt").exists()
    assert not (killed / "checkpoints" / "step_00000006.pt").exists(), "the run ended before the kill"
    train(2, *train_args(verdict_data, killed, *run))
    assert same_weights(newest_model(killed), newest_model(tmp_path / "whole"))
    state = store.read(store.checkpoint_paths(killed / "checkpoints")[-1])["optimizer"]["state"]
    assert any("momentum_buffer" in values for values in state.values())  # Muon's momentum was saved


@pytest.mark.slow
def test_a_muon_run_continues_on_another_world_size_with_its_momentum(tmp_path, verdict_data):
    """2 processes to step 2, then 1 process (accumulating to the same global batch) to step 4: the weights
    of the uninterrupted 2-process run, within float tolerance; without the saved momentum they differ."""
    run = (*MUON, "train.max_steps=4", "train.micro_batch_size=4")
    train(2, *train_args(verdict_data, tmp_path / "whole", *run))
    moved = tmp_path / "moved"
    train(2, *train_args(verdict_data, moved, *MUON, "train.max_steps=2", "train.micro_batch_size=4"))
    train(1, *train_args(verdict_data, moved, *run))
    whole, continued = newest_model(tmp_path / "whole"), newest_model(moved)
    for name in whole:
        torch.testing.assert_close(continued[name], whole[name], atol=1e-5, rtol=0)
    forgotten = tmp_path / "forgotten"  # the same, but the momentum dropped from the step-2 checkpoint
    train(2, *train_args(verdict_data, forgotten, *MUON, "train.max_steps=2", "train.micro_batch_size=4"))
    path = store.checkpoint_paths(forgotten / "checkpoints")[-1]
    payload = torch.load(path, weights_only=True)
    for values in payload["optimizer"]["state"].values():
        if "momentum_buffer" in values:
            values["momentum_buffer"].zero_()
    payload.pop("checksum")
    torch.save({**payload, "checksum": store.content_digest(payload)}, path)  # still a valid checkpoint
    train(1, *train_args(verdict_data, forgotten, *run))
    difference = max((newest_model(forgotten)[n] - whole[n]).abs().max().item() for n in whole)
    assert difference > 1e-4


def test_a_checkpoint_of_another_optimizer_stops_with_one_line(tmp_path, verdict_data):
    out = tmp_path / "run"
    assert run_main("gptdist.train", *train_args(verdict_data, out, "train.max_steps=1")).returncode == 0
    result = run_main("gptdist.train", *train_args(verdict_data, out, "train.max_steps=2",
                                                   "optim.optimizer=muon"))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1
    assert "holds the state of optim.optimizer adamw, this run trains with muon" in lines[0]
