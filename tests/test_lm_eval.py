"""lm-evaluation-harness on gptdist's model: tasks defined from local files, each request type equal to
gptdist's own computation, the same results on one process and two, in a training run under fsdp, and
the one-line refusals."""

import contextlib
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from inputs import (
    GENERATION_DOCS,
    ROLLING_DOCS,
    metrics_rows,
    train_args,
    write_hellaswag,
    write_lm_eval_tasks,
)
from processes import PYTHON, REPO, run_main

from gptdist import distributed, tokenizer
from gptdist.checkpoint import pretrained
from gptdist.evaluation import harness
from gptdist.model import sampling
from gptdist.model.gpt import GPTModel
from gptdist.model.loss import IGNORE_INDEX

lm_eval = pytest.importorskip("lm_eval")
from lm_eval.api.instance import Instance  # noqa: E402  (after the skip: an optional extra)

TASKS = "local_hellaswag,local_generation,local_rolling"


@pytest.fixture(scope="module")
def modern_run(tmp_path_factory, verdict_data):
    """A short run of the modern recipe's model options, and the local tasks."""
    root = tmp_path_factory.mktemp("lm-eval")
    out = root / "run"
    result = run_main("gptdist.train", *train_args(
        verdict_data, out, "train.max_steps=4", "eval.at_start=false", "model.positions=rotary",
        "model.norm=rmsnorm", "model.qk_norm=true", "model.activation=relu2", "model.logit_softcap=15",
        "model.context_length=64"))
    assert result.returncode == 0, result.stderr[-2000:]
    hellaswag_file = write_hellaswag(root / "hellaswag.jsonl")
    return out, write_lm_eval_tasks(root / "tasks", hellaswag_file), hellaswag_file


def model_of(run: Path) -> GPTModel:
    cfg, state = pretrained.from_checkpoint(run)
    return pretrained.load_weights(GPTModel(cfg), state, str(run)).eval()


def lm(model):
    return harness.lm_class()(model, distributed.Dist(0, 0, 1, torch.device("cpu")), contextlib.nullcontext(),
                              batch_size=2, sharded=False)


def summed_logprob(model, context: list[int], continuation: list[int]) -> float:
    """Minus the summed next-token loss of `continuation` after `context`, through the model's loss."""
    sequence = context + continuation
    targets = torch.full((1, len(sequence) - 1), IGNORE_INDEX)
    targets[0, len(context) - 1 :] = torch.tensor(continuation)
    with torch.no_grad():
        return -model(torch.tensor([sequence[:-1]]), targets, reduction="sum").item()


def test_each_request_type_equals_gptdists_own_computation(modern_run):
    run, _, _ = modern_run
    model, context = model_of(run), 64
    pairs = [("I had always thought", " Jack Gisburn"), ("Every effort moves you ", "forward"), ("", "The")]
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    answers = lm(model).loglikelihood(requests)
    for (text, continuation), (logprob, _) in zip(pairs, answers, strict=True):
        spaces = len(text) - len(text.rstrip())  # moved to the continuation, as lm-eval's models do
        ids = tokenizer.encode(text.rstrip()) or [tokenizer.EOT_TOKEN]
        expected = summed_logprob(model, ids, tokenizer.encode(text[len(text) - spaces :] + continuation))
        assert logprob == pytest.approx(expected, abs=1e-4)
    prompt = tokenizer.encode("I had always thought Jack")
    (greedy,) = sampling.generate(model, [prompt], 1)
    (answer,) = lm(model).loglikelihood([Instance("loglikelihood", {}, ("I had always thought Jack",
                                                                        tokenizer.decode(greedy)), 0)])
    assert answer[1] is True  # the greedy token is greedy
    # rolling: disjoint windows of a context's tokens, each after the tokens before it that fit (lm-eval's)
    text = ROLLING_DOCS[1]["text"]
    ids = tokenizer.encode(text)
    assert len(ids) > 2 * context and len(ids) % context  # whole windows, and a last one that is not
    full, expected = [tokenizer.EOT_TOKEN] + ids, 0.0
    for start in range(0, len(ids), context):
        window = ids[start : start + context]
        expected += summed_logprob(model, full[max(0, start + len(window) - context) : start + 1], window)
    (rolling,) = lm(model).loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    assert rolling == pytest.approx(expected, abs=1e-3)
    # generation: greedy, each request cut at its first stop; batched with padding as one by one
    requests = [Instance("generate_until", {}, (doc["prompt"], {"until": [".", ","], "max_gen_toks": 12}), i)
                for i, doc in enumerate(GENERATION_DOCS)]
    texts = lm(model).generate_until(requests)
    for doc, got in zip(GENERATION_DOCS, texts, strict=True):
        (tokens,) = sampling.generate(model, [tokenizer.encode(doc["prompt"])], 12)
        full = tokenizer.decode(tokens)
        cut = min([full.index(stop) for stop in ".," if stop in full], default=len(full))
        assert got == full[:cut]


def evaluate(*args, nproc=1) -> tuple[dict, str]:
    if nproc == 1:
        result = run_main("gptdist.evaluate", "--task", "lm-eval", *args)
    else:
        command = [PYTHON, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                   "-m", "gptdist.evaluate", "--task", "lm-eval", *map(str, args)]
        result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300,
                                env={**os.environ, "HF_DATASETS_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1]), result.stdout


def test_a_checkpoint_scores_the_same_on_one_process_and_two_and_hellaswag_as_gptdist_scores_it(modern_run):
    run, tasks, hellaswag_file = modern_run
    one, stdout = evaluate("--tasks", TASKS, "--include-path", tasks, "--checkpoint", run)
    two, _ = evaluate("--tasks", TASKS, "--include-path", tasks, "--checkpoint", run, nproc=2)
    assert one["results"] == two["results"]
    results = one["results"]
    assert set(results) == {"local_hellaswag", "local_generation", "local_rolling"}
    assert results["local_rolling"]["word_perplexity,none"] > 1
    own = run_main("gptdist.evaluate", "--task", "hellaswag", "--hellaswag-file", hellaswag_file,
                   "--checkpoint", run)
    assert results["local_hellaswag"]["acc,none"] == json.loads(own.stdout.splitlines()[-1])["acc"]
    beside = run / "checkpoints" / "step_00000004.lm-eval.json"
    assert f"written to {beside}" in stdout
    assert json.loads(beside.read_text())["results"] == json.loads(json.dumps(results))
    evaluate("--tasks", "local_generation", "--include-path", tasks, "--checkpoint", run, "--limit", "1")
    kept = json.loads(beside.read_text())["results"]  # a later task set adds to the file
    assert set(kept) == set(results) and kept["local_generation"]["sample_len"] == 1


def test_a_training_run_scores_its_tasks_at_every_evaluation_under_fsdp(tmp_path, modern_run, verdict_data):
    run, tasks, _ = modern_run
    out = tmp_path / "run"
    overrides = ["train.max_steps=4", "eval.interval=2", "train.parallel=fsdp", "model.context_length=64",
                 f"eval.lm_eval_tasks=[{TASKS}]", f"eval.lm_eval_include_path={tasks}"]
    command = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
               "gptdist.train", *train_args(verdict_data, out, *overrides)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600,
                            env={**os.environ, "HF_DATASETS_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [row for row in metrics_rows(out) if "lm_eval_s" in row]
    assert [row["step"] for row in rows] == [0, 2, 4]
    final, _ = evaluate("--tasks", TASKS, "--include-path", tasks, "--checkpoint", out)
    for task, metrics in final["results"].items():
        for key, value in metrics.items():
            if isinstance(value, float) and not key.startswith(("sample_len", "alias")):
                metric, _, kind = key.partition(",")
                assert rows[-1][f"lm_eval/{task}/{metric}"] == pytest.approx(value, rel=1e-6), key
    assert "lm-eval step 4: local_hellaswag/acc" in result.stdout


@pytest.mark.parametrize("arguments, message", [
    (["--tasks", "no_such_task"], "lm-eval has no task no_such_task (nor has --include-path"),
    ([], "--task lm-eval needs --tasks NAME[,NAME...]"),
    (["--tasks", "local_generation", "--data", "x"], "--data is for --task loss, not --task lm-eval"),
])
def test_lm_eval_mistakes_are_one_line_before_the_model_is_read(modern_run, tmp_path, arguments, message):
    _, tasks, _ = modern_run
    result = run_main("gptdist.evaluate", "--task", "lm-eval", "--include-path", tasks, "--checkpoint",
                      tmp_path / "no-model-here", *arguments)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert message in result.stderr


def test_without_lm_eval_one_line_says_what_to_install(modern_run, tmp_path):
    run, tasks, _ = modern_run
    blocker = tmp_path / "blocker" / "lm_eval"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('no lm_eval here')\n")
    env = {**os.environ, "PYTHONPATH": f"{blocker.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    command = [PYTHON, "-m", "gptdist.evaluate", "--task", "lm-eval", "--tasks", "local_generation",
               "--include-path", str(tasks), "--checkpoint", str(run)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip() == ("gptdist.evaluate: error: lm-eval tasks need lm-evaluation-harness: "
                                     "pip install 'gptdist[eval]'")


def test_a_training_run_with_a_task_lm_eval_lacks_stops_before_any_work(tmp_path, modern_run, verdict_data):
    _, tasks, _ = modern_run
    out = tmp_path / "run"
    overrides = ["eval.lm_eval_tasks=[local_hellaswag, no_such_task]", f"eval.lm_eval_include_path={tasks}"]
    result = run_main("gptdist.train", *train_args(verdict_data, out, *overrides))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "lm-eval has no task no_such_task" in result.stderr
    assert not (out / "metrics.jsonl").exists()
