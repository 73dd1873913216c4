"""The run's outcome for the scripts that launch it: one JSON line in $GPTDIST_OUTCOME_FILE, when it is set.

torchrun's status is not enough to judge a run on several nodes: the agent that hosts the rendezvous
store can leave before another agent has closed the rendezvous, and that one exits 1 after a run that
succeeded. slurm/train.sbatch and launch/*.sh read this file beside torchrun's status: "finished" or
"stopped by SIGNAL" (rank 0, once every rank has finished and the final checkpoint is durable), or
"no progress" (the rank that found the run going nowhere: attempts.py), which they do not run again.
"""

import json
import os


def write(outcome: str, step: int) -> None:
    """Replace the outcome file, whole, with `outcome` at `step` (nothing when the variable is unset)."""
    path = os.environ.get("GPTDIST_OUTCOME_FILE")
    if not path:
        return
    with open(f"{path}.tmp", "w") as f:
        f.write(json.dumps({"outcome": outcome, "step": step}) + "\n")
    os.replace(f"{path}.tmp", path)
