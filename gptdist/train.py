r"""python -m gptdist.train / torchrun -m gptdist.train: pretrain a GPT-2 model on prepared shards.

    python -m gptdist.train --config configs/verdict-tiny.yaml
    torchrun --nproc_per_node=4 -m gptdist.train --config configs/gutenberg-gpt2-124m.yaml \
        train.max_steps=5000

Overrides are `section.key=value` (YAML values). A run whose out_dir has checkpoints
resumes from the newest loadable one; a run owns its out_dir while it trains (a second run
into it stops at once). On SIGTERM or SIGUSR1 the run checkpoints at the
next step boundary and exits with status 0; the same command then resumes it.
"""

import sys
from pathlib import Path

from . import config, distributed
from .arguments import ArgumentParser, input_path
from .errors import cli
from .training import attempts, micro_batch, runlock, timeouts
from .training import outcome as run_outcome
from .training.build import build_trainer
from .training.checks import check_before_work
from .training.phases import Phases
from .training.watchdog import Watchdog


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="gptdist.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=input_path, help="a YAML config file (see configs/)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    return parser


def parse_args(argv=None):
    return build_parser().parse_args(argv)


@cli("gptdist.train")
def main(argv=None) -> None:
    args = parse_args(argv)
    cfg = config.load(args.config, args.overrides)
    runlock.check_apart_from_inputs(cfg)
    run_dir = Path(cfg.run.out_dir)
    refused = attempts.refused_restart(run_dir)
    if refused:  # a restart of a run that goes nowhere: stop before any work
        print(refused, flush=True)
        sys.exit(attempts.NO_PROGRESS_EXIT)
    ctx = distributed.setup(cfg.train.device, timeout_s=cfg.dist.init_timeout_s)
    phases = Phases(cfg.train.hang_timeout_s, cfg.dist.init_timeout_s)
    watchdog = Watchdog(phases, ctx, run_dir, enabled=cfg.train.watchdog)
    try:
        micro_batch.resolve(cfg, ctx, args.config, args.overrides)  # auto: the largest that fits the GPU
        check_before_work(cfg, ctx)
        with runlock.owning(cfg.run.out_dir, ctx):  # before anything is written into it
            watchdog.start()  # from here on, a phase that lasts too long is a named hang
            trainer = build_trainer(cfg, ctx, phases)
            try:
                outcome = trainer.fit()
                # Finish together: a rank that ends while another still uses the process group breaks
                # the other's collective (seen after elastic restarts). Not on the error path, where the
                # other ranks may be waiting in another collective.
                phases.enter("finish", trainer.progress.step)
                distributed.barrier()
                if ctx.is_main:  # every rank has finished, the final checkpoint is durable
                    run_outcome.write("finished" if outcome == "done" else f"stopped by {outcome}",
                                      trainer.progress.step)
            except Exception as err:
                if ctx.is_main:  # the same failure at the same step, restart after restart, stops the run
                    code, verdict = attempts.record_failure(run_dir, trainer.progress.step + 1, "error", 1)
                    if verdict:
                        print(verdict, flush=True)
                if timeouts.timed_out(err):
                    raise timeouts.timeout_error(cfg.dist, phases) from None
                raise
            finally:
                trainer.close()
    finally:
        watchdog.stop()


if __name__ == "__main__":
    main()
