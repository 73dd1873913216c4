"""The plan as people read it: a few aligned sections of `name  value` lines."""


def _gib(value: float | None) -> str:
    return "?" if value is None else f"{value:,.2f} GiB"


def _count(value) -> str:
    return "?" if value is None else f"{value:,}"


def _duration(hours: float | None) -> str:
    if hours is None:
        return "?"
    return f"{hours * 60:,.1f} min" if hours < 1 else f"{hours:,.1f} h"


def table(plan: dict) -> str:
    gpu, memory, data = plan["gpu"], plan["memory_gib"], plan["data"]
    lines = [
        f"plan: {plan['config']} on {plan['nodes']} x {plan['gpus_per_node']} {gpu['name']} "
        f"({gpu['memory_gib']:g} GiB, {gpu['bf16_tflops']:g} bf16 TFLOP/s, {gpu['tbps']:g} TB/s): "
        f"world size {plan['world_size']}"
    ]

    def section(title: str, rows: list[tuple[str, str]]) -> None:
        lines.append(f"\n{title}")
        width = max(len(name) for name, _ in rows)
        lines.extend(f"  {name:<{width}}  {value}" for name, value in rows)

    section(
        "batch",
        [
            (
                "parallel",
                f"{plan['parallel']}, {plan['precision']}, activation checkpointing "
                f"{plan['activation_checkpointing']}",
            ),
            (
                "global batch",
                f"{plan['global_batch']:,} sequences = {plan['micro_batch_size']} x "
                f"{plan['grad_accum_steps']} accumulation x {plan['world_size']} GPUs, "
                f"{plan['tokens_per_step']:,} tokens",
            ),
        ],
    )
    verdict = "fits" if plan["fits"] else "DOES NOT FIT"
    if plan["compile"]:  # measured uncompiled (planning/step_memory.py): a compiled step holds less
        verdict += " uncompiled"
    largest = (
        f"{plan['max_micro_batch']} (accumulation {plan['max_micro_batch_grad_accum']}, the same "
        "global batch)"
        if plan["max_micro_batch"]
        else "none: not even 1 fits"
    )
    chosen = "auto: the largest that fits" if plan["micro_batch_auto"] else "the config's"
    section(
        f"memory per GPU (micro-batch {plan['micro_batch_size']}, {chosen})",
        [
            *(
                (name, _gib(memory[name]))
                for name in ("parameters", "gradients", "optimizer", "activations", "temporaries")
            ),
            ("peak", f"{_gib(memory['peak'])} of {_gib(plan['usable_gib'])} usable: {verdict}"),
            ("largest micro-batch", largest),
        ],
    )
    section(
        "time",
        [
            ("FLOPs per token", f"{plan['flops_per_token'] / 1e9:,.2f} G"),
            ("MFU", f"{plan['mfu']:.1%} ({plan['mfu_source']})"),
            ("step", f"{plan['step_s']:.3f} s, {plan['tokens_per_s']:,.0f} tokens/s"),
            ("steps", _count(plan["steps"])),
            (
                "run",
                f"{_duration(plan['hours'])}, "
                f"{'?' if plan['gpu_hours'] is None else format(plan['gpu_hours'], ',.1f')} GPU-hours",
            ),
        ],
    )
    section(
        "checkpoints",
        [
            (
                "size",
                f"{_gib(plan['checkpoint_gib'])} ({plan['checkpoint_layout']}), "
                f"{_gib(plan['checkpoint_rank_gib'])} written by the busiest rank",
            ),
            ("write", f"{plan['checkpoint_write_s']:,.1f} s at {plan['write_gbps']:g} GB/s"),
        ],
    )
    section(
        "data",
        [
            ("from", data["source"]),
            ("train tokens", _count(data["tokens"])),
            ("windows", _count(data["windows"])),
            ("windows per GPU an epoch", _count(data["windows_per_rank"])),
            ("steps per epoch", _count(data["steps_per_epoch"])),
            ("epochs", "?" if data["epochs"] is None else f"{data['epochs']:,.2f}"),
        ],
    )
    if plan["not_checked"]:
        section("not checked (not on this machine)", [(entry, "") for entry in plan["not_checked"]])
    if plan["notes"]:
        section("notes", [(note, "") for note in plan["notes"]])
    return "\n".join(line.rstrip() for line in lines)
