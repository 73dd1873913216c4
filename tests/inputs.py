"""What the tests train on and read: corpora written from The Verdict, a small model's arguments, HellaSwag
and lm-evaluation-harness tasks in their formats, and a run's metrics and checkpoints read back."""

import json
from pathlib import Path

import torch
from environment import REPO, VERDICT


def write_paragraphs(folder: Path) -> Path:
    """The Verdict's paragraphs, one file (one document) each: a corpus of 83 documents of 5 to 200 tokens."""
    folder.mkdir(parents=True, exist_ok=True)
    text = (REPO / "tests" / "data" / "the-verdict.txt").read_text()
    for number, paragraph in enumerate(p for p in text.split("\n\n") if p.strip()):
        (folder / f"paragraph-{number:03d}.txt").write_text(paragraph)
    return folder


TINY = ["model.emb_dim=32", "model.n_heads=2", "model.n_layers=1", "model.context_length=32",
        "train.micro_batch_size=4", "eval.batches=2", "sample.max_new_tokens=5"]


def train_args(data_dir: Path, out_dir: Path, *overrides: str) -> list[str]:
    """Arguments of gptdist.train for a small, fast model on `data_dir`."""
    return ["--config", str(REPO / "configs" / "verdict-tiny.yaml"), f"data.dir={data_dir}",
            f"run.out_dir={out_dir}", *TINY, *overrides]


# A two-process run with dropout and checkpoints: run once, uninterrupted, it gives the weights that
# every interrupted run of the same arguments (a killed job, a restarted worker, two agents) must end
# on, bit for bit.
UNINTERRUPTED = ("train.max_steps=24", "checkpoint.interval=4", "checkpoint.keep=10", "eval.interval=12",
                 "model.drop_rate=0.1", "model.emb_dim=64", "model.context_length=64")


def metrics_rows(out_dir: Path) -> list[dict]:
    """The rows of a run's metrics.jsonl."""
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def newest_model(out_dir: Path) -> dict:
    from gptdist.checkpoint import store

    return store.read(store.checkpoint_paths(out_dir / "checkpoints")[-1])["model"]


HELLASWAG_ITEMS = [  # made-up items in HellaSwag's official JSONL format (ctx, endings, label)
    ("A man is sitting on a roof. He", ["starts pulling up roofing on a roof.", "is holding a cube.",
                                        "drinks a glass of water.", "rides a bike down the road."], 0),
    ("The painter looks at the canvas. She", ["picks up a brush and paints.", "swims across a lake.",
                                              "eats a sandwich.", "reads the newspaper."], 0),
    ("Every effort moves you closer to the goal, said Gisburn, looking at the picture that had been his "
     "wife's favourite for many years before the last summer at the villa on the Riviera. Then he",
     ["laughed.", "turned away from the picture and sighed for a long while.", "sat down.",
      "left the room."], 3),
    ("A woman is kneading dough on a table. She", ["cuts the dough.", "flies away.", "sings.", "sleeps."], 0),
    ("Two boys play football in the park. One of them", ["kicks the ball into the goal.", "bakes bread.",
                                                         "writes a letter.", "paints the fence."], 0),
    ("The dog runs after a stick. It", ["brings the stick back.", "opens a book.", "drives a car.",
                                        "cooks dinner."], 0),
    ("A chef chops onions in the kitchen. He", ["adds them to the pan.", "climbs a tree.", "plays the piano.",
                                                "goes to sleep."], 2),
    ("People are skiing down a snowy hill. A skier", ["falls in the snow.", "buys a ticket.", "swims.",
                                                      "reads a map."], 1),
    ("A girl is brushing her hair. She", ["ties it in a ponytail.", "eats soup.", "jumps off a roof.",
                                          "drives a truck."], 0),
    ("The gardener waters the plants. Then he", ["cuts the grass.", "writes code.", "flies a plane.",
                                                 "paints a picture of the sea at sunset with friends."], 3),
    ("A crowd watches the band play. The singer", ["waves to the crowd.", "leaves.", "sits.", "falls."], 1),
]


def write_hellaswag(path: Path, items=HELLASWAG_ITEMS) -> Path:
    """A HellaSwag file in the official format (one JSON object per line, with the fields it has)."""
    rows = [{"ind": i, "activity_label": "test", "ctx_a": ctx, "ctx_b": "", "ctx": ctx, "split": "val",
             "split_type": "indomain", "label": label, "endings": endings, "source_id": f"test~{i}"}
            for i, (ctx, endings, label) in enumerate(items)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


GENERATION_DOCS = [{"prompt": "I had always thought Jack Gisburn", "answer": "x"},
                   {"prompt": "Every effort moves you", "answer": "y"},
                   {"prompt": "The", "answer": "z"}]
ROLLING_DOCS = [{"text": "I had always thought Jack Gisburn rather a cheap genius."},
                {"text": VERDICT.read_text()[:1500]}]  # > one window


def write_lm_eval_tasks(folder: Path, hellaswag_file: Path) -> Path:
    """Three tasks in lm-eval's YAML format over local JSONL files: multiple choice (HellaSwag's items),
    generation until a stop, and rolling log-likelihood (perplexity)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, docs in (("generation", GENERATION_DOCS), ("rolling", ROLLING_DOCS)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(doc) + "\n" for doc in docs))

    def task(name: str, data: Path, body: str) -> None:
        (folder / f"{name}.yaml").write_text(
            f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
            f"test_split: test\n{body}")

    task("local_hellaswag", hellaswag_file,
         "output_type: multiple_choice\ndoc_to_text: '{{ctx}}'\ndoc_to_choice: '{{endings}}'\n"
         "doc_to_target: '{{label}}'\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    task("local_generation", folder / "generation.jsonl",
         "output_type: generate_until\ndoc_to_text: '{{prompt}}'\ndoc_to_target: '{{answer}}'\n"
         "generation_kwargs:\n  until: ['.', ',']\n  max_gen_toks: 12\n  do_sample: false\n"
         "metric_list:\n  - metric: exact_match\n")
    task("local_rolling", folder / "rolling.jsonl",
         "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
         "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n"
         "  - metric: bits_per_byte\n")
    return folder
