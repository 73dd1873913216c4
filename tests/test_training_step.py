"""The training step: the loss compiled with the model, the non-finite guard on the device, no host sync."""

import functools
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from inputs import train_args
from processes import FRESH, PYTHON, REPO, forked_pid, run_main

from gptdist import config, distributed
from gptdist.config import ModelConfig
from gptdist.model.gpt import GPTModel
from gptdist.observe import metrics
from gptdist.training.guard import NonFiniteGuard

SOLO = distributed.Dist(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


def todays_loss(model, tokens):
    """The loss as gptdist computed it before it was compiled: eager, on an fp32 copy of the logits."""
    return F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1).float(), tokens[:, 1:].flatten())


def small_trainer(data_dir, out_dir, *overrides):
    from gptdist.training.build import build_trainer

    args = train_args(data_dir, out_dir, *overrides)
    return build_trainer(config.load(args[1], args[2:]), SOLO)


def test_evaluation_graph_is_compiled_once_per_run(tmp_path, verdict_data, monkeypatch):
    # how many graphs dynamo makes is the subject, not what inductor makes of them (tests/dist_grad_check.py
    # checks a compiled step's numbers): dynamo's graphs run as AOT autograd's, without inductor's build
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    trainer = small_trainer(verdict_data, tmp_path / "run", "train.compile=true", "eval.batches=4",
                            "train.micro_batch_size=5")
    assert trainer.data[0].val.num_samples == 16  # evaluated in batches of 5, 5, 5 and 1 (padded to 5)
    counters = torch._dynamo.utils.counters["stats"]
    trainer.step()  # compiles the training graph
    graphs = counters["unique_graphs"]
    trainer.evaluator.losses()
    assert counters["unique_graphs"] == graphs + 1  # one graph for evaluation, the short last batch included
    for _ in range(2):
        trainer.model.train()
        trainer.step()
        trainer.evaluator.losses()
    assert counters["unique_graphs"] == graphs + 1  # and none after it


def test_commands_after_a_compile_in_the_test_process_are_still_forked_from_the_preloaded_server():
    """torch.compile (the test above, in this process) must not change a variable that sends every later
    command of this test process to a new interpreter (tests/preloaded.py compares them); with
    GPTDIST_TESTS_FRESH=1, every command is one."""
    command = subprocess.Popen([PYTHON, "-m", "gptdist.train", "--help"], stdout=subprocess.DEVNULL, cwd=REPO)
    assert command.wait(timeout=120) == 0
    assert (forked_pid(command) == command.pid) == FRESH


def test_padded_evaluation_batch_gives_the_exact_loss(tmp_path, verdict_data):
    from gptdist.evaluation import perplexity

    trainer = small_trainer(verdict_data, tmp_path / "run")
    model = trainer.model.eval()
    windows = trainer.data[0].val
    assert windows.num_samples == 16  # in batches of 5, 5, 5 and 1 (padded to 5)
    tokens = windows.batch(perplexity.eval_indices(windows.num_samples, 20))
    with torch.no_grad():
        expected = todays_loss(model, tokens).item()
    loss = perplexity.evaluate_loss(model, windows, 4, 5, SOLO, trainer.precision.autocast)
    assert loss == pytest.approx(expected, rel=1e-6)


def test_guard_skips_bad_steps_on_the_device_and_every_step_after_the_limit():
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([param], lr=0.1, fused=True)
    guard = NonFiniteGuard(max_bad_steps=3, device=torch.device("cpu"))
    nan = float("nan")
    # applied: 1.0, 1.0; skipped: a bad run of 2; applied: 1.0; a bad run of 3 (the limit); after it:
    # skipped though finite
    norms = [1.0, 1.0, nan, nan, 1.0, nan, nan, nan, 1.0, 1.0]
    applied = []
    for step, norm in enumerate(norms):
        before = param.detach().clone()
        param.grad = torch.full((3,), 0.5)
        optimizer.found_inf = guard.update(torch.tensor(norm), torch.tensor(2.0), loss_scaling=False)
        optimizer.step()
        applied.append(not torch.equal(before, param.detach()))
        if step == 6:
            assert not guard.diverged(step + 1)
    assert applied == [True, True, False, False, True, False, False, False, False, False]
    assert optimizer.state[param]["step"].item() == 3  # the skipped steps are not counted by AdamW either
    assert guard.diverged(len(norms))


def test_an_unfused_optimizer_state_loads_into_the_fused_adamw_and_skips_on_the_device():
    from gptdist.training.optimizer import adamw, decay_groups

    torch.manual_seed(0)
    model = GPTModel(ModelConfig(emb_dim=32, n_heads=2, n_layers=1, context_length=8))
    # as gptdist saved on CPU before
    older = torch.optim.AdamW(decay_groups(model, 0.1), lr=1e-3, foreach=True)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    older.step()
    optimizer = adamw(model, config.OptimConfig())
    optimizer.load_state_dict(older.state_dict())
    assert all(group["fused"] for group in optimizer.param_groups)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.found_inf = torch.ones(())
    optimizer.step()  # skipped, not refused
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))


def test_guard_counts_only_non_finite_losses_when_the_loss_is_scaled():
    # fp16: the scaler's overflows (inf gradients) are skipped but are no sign of divergence
    guard = NonFiniteGuard(max_bad_steps=2, device=torch.device("cpu"))
    for _ in range(5):
        assert guard.update(torch.tensor(float("inf")), torch.tensor(3.0), loss_scaling=True).item() == 1.0
    assert not guard.diverged(5)
    for _ in range(2):
        guard.update(torch.tensor(float("inf")), torch.tensor(float("nan")), loss_scaling=True)
    assert guard.diverged(7)


def test_divergence_is_stopped_at_the_next_log_without_applying_a_step(tmp_path, verdict_data):
    out = tmp_path / "run"
    result = run_main("gptdist.train", *train_args(
        verdict_data, out, "optim.lr=1e30", "train.grad_clip=null", "train.max_steps=50",
        "train.max_bad_steps=2",
        "logging.interval=6", "checkpoint.interval=1000", "eval.interval=1000", "schedule.warmup_steps=0"))
    assert result.returncode == 2, result.stderr[-2000:]
    # step 1 is applied and blows the weights up; steps 2 and 3 are the bad run; 4-6 are skipped unread
    assert ("training diverged: 2 steps in a row with a non-finite loss or gradient norm (seen at step 6"
            in result.stderr)
    assert "5 update(s) skipped up to step 6" in result.stdout
    assert not (out / "checkpoints").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a host sync can only be caught on a CUDA device")
@pytest.mark.parametrize("compile_", [False, True])
def test_cuda_step_makes_no_host_sync(tmp_path, verdict_data, compile_):
    trainer = small_trainer(verdict_data, tmp_path / "run", "train.device=cuda", f"train.compile={compile_}",
                            "model.drop_rate=0.0")
    for _ in range(2):  # compilation and the allocator's first steps may sync
        trainer.step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            trainer.step()
    finally:
        torch.cuda.set_sync_debug_mode(0)


@pytest.mark.slow
def test_float8_follows_the_bf16_loss_curve_and_keeps_the_checkpoint_format(tmp_path, verdict_data):
    pytest.importorskip("torchao")
    from gptdist.checkpoint import pretrained, store
    from gptdist.model import hf

    # The smallest model whose linear layers FP8 takes (dimensions divisible by 16): on a CPU without bf16
    # matmuls every step is slow, and the shape of the curve is what is compared.
    small = ("model.emb_dim=16", "model.n_heads=2", "model.context_length=16", "train.micro_batch_size=8",
             "optim.lr=2e-2", "eval.batches=1", "sample.max_new_tokens=1")
    runs = {}
    for recipe in ("null", "tensorwise", "rowwise"):
        out = tmp_path / recipe
        result = run_main("gptdist.train", "--config", REPO / "configs" / "verdict-tiny.yaml",
                          f"data.dir={verdict_data}", f"run.out_dir={out}", "train.precision=bf16",
                          f"train.float8={recipe}", "train.max_steps=30", "logging.interval=10",
                          "eval.interval=1000", "model.drop_rate=0.0", *small)
        assert result.returncode == 0, result.stderr[-2000:]
        assert ("emulating FP8 matmuls" in result.stdout) == (recipe != "null")
        runs[recipe] = [row["loss"] for row in metrics.read_rows(out / "metrics.jsonl") if "loss" in row]
    bf16 = runs["null"]
    assert len(bf16) == 3 and bf16[0] - bf16[-1] > 2.5  # it learns (10.3 -> 7.4 on the shipped order)
    for recipe in ("tensorwise", "rowwise"):
        assert runs[recipe] != bf16  # FP8 did compute something else
        assert runs[recipe] == pytest.approx(bf16, rel=0.01), recipe
    # weights stay plain tensors under the usual names: a plain model loads the FP8 run's checkpoint, and
    # every tensor has its Hugging Face name for an export
    cfg, state = pretrained.from_checkpoint(tmp_path / "tensorwise")
    model = pretrained.load_weights(GPTModel(cfg), state, "the FP8 run")
    saved = store.read(store.checkpoint_paths(tmp_path / "tensorwise" / "checkpoints")[-1])["model"]
    assert set(model.state_dict()) == set(saved)
    assert len(hf.hf_tensors(cfg, state, torch.float32)) == 4 + 12 * cfg.n_layers + (not cfg.tie_embeddings)


def test_float8_needs_torchao_and_says_so(tmp_path, verdict_data):
    program = "import sys; sys.modules['torchao'] = None; from gptdist.train import main; main(sys.argv[1:])"
    args = train_args(verdict_data, tmp_path / "run", "train.float8=tensorwise", "train.max_steps=1")
    result = subprocess.run([sys.executable, "-c", program, *map(str, args)], capture_output=True, text=True,
                            cwd=REPO, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip() == ("gptdist.train: error: train.float8 needs torchao: pip install "
                                     "'gptdist[fp8]' (or set train.float8: null)")
