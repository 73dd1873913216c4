"""python -m gptdist.export: a gptdist model as a Hugging Face transformers folder.

    python -m gptdist.export --checkpoint runs/gutenberg-gpt2-124m --out exports/gutenberg-124m

The folder holds config.json, model.safetensors, GPT-2's tokenizer files (vocab.json,
merges.txt, tokenizer_config.json) and a model card (README.md): AutoModelForCausalLM and
AutoTokenizer load it with no network, and its logits are gptdist's. A GPT-2-recipe model is
transformers' own GPT2LMHeadModel, a rotary one otherwise GPT-2's its GPTNeoXForCausalLM; a model
with the modern recipe's other options carries gptdist's modelling code (configuration_gptdist.py,
modeling_gptdist.py; load it with trust_remote_code=True). `huggingface-cli upload` is all that
remains.
It is written as a temporary folder beside DIR and renamed when complete: DIR is never
half-written. An existing DIR is replaced only with --overwrite, only when it holds nothing but
an earlier export's files, and never when it is, holds or lies inside the weights it exports
(gptdist/replace.py), once the new one is whole.
"""

from pathlib import Path

from .arguments import ArgumentParser, output_path
from .checkpoint import pretrained
from .errors import cli
from .evaluation import model_card
from .files.replace import Kind, check_apart, check_replaceable, clean_stale_temporaries, replace_folder
from .model import hf
from .training import precision

EXPORT = Kind("an export folder", "export", hf.files_not_exported)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="gptdist.export", description=__doc__.split("\n\n")[0])
    pretrained.add_model_arguments(parser)
    parser.add_argument("--out", required=True, type=output_path,
                        help="the folder to write (must not exist, unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--dtype", default="fp32", choices=tuple(precision.DTYPES),
                        help="the weights' type in model.safetensors (default fp32, as trained)")
    return parser


def parse_args(argv=None):
    return build_parser().parse_args(argv)


@cli("gptdist.export")
def main(argv=None) -> None:
    args = parse_args(argv)
    hf.safetensors_torch()  # without it: one line saying what to install, before any work
    out = Path(args.out)
    check_apart(out, [("--checkpoint", args.checkpoint), ("--gpt2-dir", args.gpt2_dir)], "--out")
    clean_stale_temporaries(out)
    check_replaceable(out, EXPORT, args.overwrite)  # before the weights are read
    weights = pretrained.weights_from_arguments(args)
    cfg, state = weights.cfg, weights.state
    hf.check_exportable(cfg)
    dtype = precision.DTYPES[args.dtype]
    tokenizer = hf.tokenizer_files(cfg.context_length)
    params = sum(t.numel() for t in state.values())
    card = model_card.card(cfg, params, weights.source, weights.record, out.name)
    replace_folder(out, EXPORT, args.overwrite,
                   lambda folder: hf.write(folder, cfg, state, dtype, tokenizer, card))
    print(f"exported {weights.source} ({params / 1e6:.1f}M parameters, {args.dtype}, model_type "
          f"{hf.architecture(cfg)}) to {out}")


if __name__ == "__main__":
    main()
