"""Parameter names across checkpoint formats: before format 3, FeedForward's layers were positions.

Formats 1 and 2 wrote `trf_blocks.N.ff.layers.0.weight` where today's model has
`trf_blocks.N.ff.fc.weight` (and `layers.2` for `proj`), in the model's state and in the
optimizer's (keyed by parameter name since format 2). A file checkpoint is renamed as it is
read (by its format); a sharded one is loaded under the names its index holds
(torch.distributed.checkpoint finds each tensor by name), then renamed.
"""

from ..model.gpt import FeedForward

# The names formats 1 and 2 wrote where today's differ, and today's.
OLD_NAMES = {f".ff.{old}": f".ff.{new}" for old, new in FeedForward.POSITIONAL_NAMES.items()}


def renamed(state, names: dict[str, str]):
    """A model or optimizer state with `names`' keys replaced by their values in every parameter name
    (the keys of its dicts, the strings of its lists); tensors and other values as they are."""
    if isinstance(state, str):
        for old, new in names.items():
            state = state.replace(old, new)
        return state
    if isinstance(state, dict):
        return {renamed(key, names): renamed(value, names) for key, value in state.items()}
    if isinstance(state, list):
        return [renamed(item, names) for item in state]
    return state
