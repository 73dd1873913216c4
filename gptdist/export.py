"""python -m gptdist.export: a gptdist model as a Hugging Face transformers GPT-2 folder.

    python -m gptdist.export --checkpoint runs/gutenberg-gpt2-124m --out exports/gutenberg-124m

The folder holds config.json, model.safetensors and GPT-2's tokenizer files (vocab.json,
merges.txt, tokenizer_config.json): AutoModelForCausalLM.from_pretrained(DIR) and
AutoTokenizer.from_pretrained(DIR) load it with no network, and its logits are gptdist's.
It is written as a temporary folder beside DIR and renamed when complete: DIR is never
half-written, and an existing DIR is replaced only with --overwrite, once the new one is whole.
"""

import json
import os
import shutil
import tempfile
from pathlib import Path

from . import hf, loading, precision
from .arguments import ArgumentParser
from .errors import UserError, cli
from .tokenizer import GPT2_VOCAB_SIZE, bpe_files

EOT_TEXT = "<|endoftext|>"


def parse_args(argv=None):
    parser = ArgumentParser(prog="gptdist.export", description=__doc__.split("\n\n")[0])
    loading.add_model_arguments(parser)
    parser.add_argument("--out", required=True, help="the folder to write (must not exist, unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--dtype", default="fp32", choices=tuple(precision.DTYPES),
                        help="the weights' type in model.safetensors (default fp32, as trained)")
    return parser.parse_args(argv)


def tokenizer_files(context_length: int) -> dict[str, bytes]:
    """GPT-2's tokenizer as transformers reads it: the BPE files and a config naming the special token."""
    settings = {"tokenizer_class": "GPT2Tokenizer", "model_max_length": context_length, "bos_token": EOT_TEXT,
                "eos_token": EOT_TEXT, "unk_token": EOT_TEXT, "add_prefix_space": False, "add_bos_token": False}
    return {**bpe_files(), "tokenizer_config.json": json.dumps(settings, indent=2).encode() + b"\n"}


def check_exportable(cfg) -> None:
    """Refuse, in one line, what a transformers GPT-2 with GPT-2's tokenizer cannot be faithfully."""
    if cfg.vocab_size < GPT2_VOCAB_SIZE:
        raise UserError(f"model.vocab_size {cfg.vocab_size} is smaller than the GPT-2 tokenizer's {GPT2_VOCAB_SIZE} "
                        "tokens: the exported tokenizer would produce ids the model lacks")


def replace_folder(out: Path, overwrite: bool, fill) -> None:
    """Write a folder through `fill(temporary_folder)`, then move it to `out` whole."""
    if out.exists() and not (overwrite and out.is_dir()):
        raise UserError(f"{out} already exists" + ("; pass --overwrite to replace it" if out.is_dir() else
                                                  " and is not a folder"))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        temporary = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as err:
        raise UserError(f"cannot write {out} ({err.strerror})") from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        temporary.chmod(0o777 & ~umask)  # mkdtemp's folder is private; the export is an ordinary one
        fill(temporary)
        for file in temporary.iterdir():  # some writers make their files private too
            file.chmod(0o666 & ~umask)
        if out.exists():  # the old folder goes only once the new one is complete
            old = temporary.with_suffix(".old")
            os.replace(out, old)
            try:
                os.replace(temporary, out)
            except OSError:
                os.replace(old, out)
                raise
            shutil.rmtree(old)
        else:
            os.replace(temporary, out)
    except OSError as err:
        raise UserError(f"cannot write {out} ({err.strerror}); it was left as it was") from None
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


@cli("gptdist.export")
def main(argv=None) -> None:
    args = parse_args(argv)
    hf.safetensors_torch()  # without it: one line saying what to install, before any work
    cfg, state, source = loading.weights_from_arguments(args)
    check_exportable(cfg)
    dtype = precision.DTYPES[args.dtype]
    files = tokenizer_files(cfg.context_length)

    def fill(folder: Path) -> None:
        hf.write(folder, cfg, state, dtype)
        for name, content in files.items():
            (folder / name).write_bytes(content)

    out = Path(args.out)
    replace_folder(out, args.overwrite, fill)
    params = sum(t.numel() for t in state.values()) / 1e6
    print(f"exported {source} ({params:.1f}M parameters, {args.dtype}) to {out}")


if __name__ == "__main__":
    main()
