"""The model card an export writes as README.md (the Hub's convention: YAML metadata, then text): the
architecture, its options, and for a gptdist checkpoint what it was trained on and how far, with the
run's last validation loss and HellaSwag score up to the checkpoint's step (from metrics.jsonl)."""

from pathlib import Path

import yaml

from ..config import ModelConfig
from ..data import shards
from ..errors import UserError
from ..model import hf, hf_remote
from ..observe.metrics import read_rows

OPTIONS = ("positions", "rotary_base", "norm", "qk_norm", "activation", "logit_softcap", "tie_embeddings",
           "qkv_bias", "bias", "document_mask")


def run_folder(checkpoint: Path) -> Path:
    """The run a checkpoint file or sharded folder belongs to (checkpoints/ sits in the run folder)."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent


def last_rows(metrics: Path, step: int | None, keys: tuple[str, ...]) -> dict[str, dict]:
    """Of each key, the last row of `metrics` that holds it, at or before `step`."""
    found: dict[str, dict] = {}
    if not metrics.is_file():
        return found
    for row in read_rows(metrics):
        if step is None or row.get("step", 0) <= step:
            found.update({key: row for key in keys if key in row})
    return found


def data_lines(data: dict) -> list[str]:
    """One line per data folder the run read (data.dir, or each of a mixture's sources with its weight)."""
    mixture = data.get("sources") or []
    lines = []
    for source in mixture or [{"dir": data.get("dir", "")}]:
        folder = Path(source["dir"])
        name = f"`{folder.name}`" + (f" ({source['name']}, weight {source['weight']})" if mixture else "")
        try:
            manifest = shards.read_manifest(folder)
        except UserError:
            lines.append(f"- data: {name}: its manifest was not readable at export")
            continue
        inputs = [str(path) for path in manifest.raw.get("source", {}).get("inputs") or []]
        origin = ", ".join(inputs[:3]) + (f" and {len(inputs) - 3} more" if len(inputs) > 3 else "")
        lines.append(f"- data: {name}: prepared by gptdist.prepare from {origin or 'unknown'}: "
                     f"{manifest.splits['train']['tokens']:,} training tokens, "
                     f"{manifest.splits['val']['tokens']:,} validation tokens, tokenizer "
                     f"{manifest.raw.get('tokenizer')}")
    return lines


def training(record: dict) -> list[str]:
    """The card's lines on a checkpoint's training: data, steps, tokens, last scores."""
    lines = data_lines(record["config"].get("data", {}))
    counts = (("steps", "step"), ("tokens seen", "tokens_seen"))
    lines += [f"- {what}: {record[key]:,}" for what, key in counts if record.get(key) is not None]
    if record["config"].get("model", {}).get("document_mask"):
        lines.append("- trained with `document_mask`: attention stayed inside each document of a window; "
                     "this model attends across `<|endoftext|>`, so give it one document at a time")
    rows = last_rows(run_folder(record["file"]) / "metrics.jsonl", record["step"],
                     ("val_loss", "hellaswag_acc"))
    if "val_loss" in rows:
        row = rows["val_loss"]
        lines.append(f"- validation loss: {row['val_loss']:.4f} at step {row['step']:,}")
    if "hellaswag_acc" in rows:
        row = rows["hellaswag_acc"]
        lines.append(f"- HellaSwag: acc {row['hellaswag_acc']:.4f}, acc_norm {row['hellaswag_acc_norm']:.4f} "
                     f"on {row['hellaswag_items']:,} items at step {row['step']:,}")
    return lines


def card(cfg: ModelConfig, params: int, source: str, record: dict | None, name: str) -> str:
    """README.md of an export named `name` of `cfg`'s weights (`params` of them) from `source`."""
    kind = hf.architecture(cfg)
    metadata = {"library_name": "transformers", "pipeline_tag": "text-generation",
                "tags": ["gptdist", "text-generation", kind]}
    options = "\n".join(f"| `{key}` | `{getattr(cfg, key)}` |" for key in OPTIONS)
    code = ", trust_remote_code=True" if kind == hf_remote.MODEL_TYPE else ""
    trained = training(record) if record else [f"- weights from `{source}`"]
    return "\n".join([
        "---", yaml.safe_dump(metadata, sort_keys=False).strip(), "---", "",
        f"# {name}", "",
        f"A GPT of {params / 1e6:.1f}M parameters exported by gptdist from `{source}`, as "
        f"{hf.ARCHITECTURES[kind]}.", "",
        "## Architecture", "",
        f"{cfg.n_layers} layers, {cfg.n_heads} heads, width {cfg.emb_dim}, context {cfg.context_length} "
        f"tokens, vocabulary {cfg.vocab_size} (GPT-2's BPE tokenizer, in this folder).", "",
        "| option | value |", "| --- | --- |", options, "",
        "## Training", "", *trained, "",
        "## Use", "", "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
        f'model = AutoModelForCausalLM.from_pretrained("{name}"{code})',
        f'tokenizer = AutoTokenizer.from_pretrained("{name}")',
        'ids = tokenizer("Every effort moves you", return_tensors="pt").input_ids',
        "print(tokenizer.decode(model.generate(ids, max_new_tokens=40)[0]))", "```", "",
    ])
