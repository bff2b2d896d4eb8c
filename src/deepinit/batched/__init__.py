"""Batched training: K runs of the same shape trained together as one stacked model, each still its own run.

A study grid is mostly runs that differ only in init scheme and seed. On a GPU one such run uses a sliver of
the device; K of them stacked as [K, out, in] weights and trained with batched matmuls fill it. Each member
keeps everything of its own: its init (built exactly as a lone run builds it), its shuffled batches, its run
folder with TensorBoard events, layer statistics, figures, checkpoint and summary.json, written in the same
form as a lone run's, through the same RunRecord (deepinit.run.lifecycle).

What a member shares with a lone run: Lightning runs both. The group is a LightningModule (GroupModule) over
the stacked model, fitted and tested by a Trainer made from the runs' `trainer.*` settings, so epochs, step
limits, validation and logging follow Lightning's rules as a lone run's do; whatever Lightning logs for the
group, MembersLogger writes into each member's own logger with the member's own values.

Why the members stay independent: the loss is the sum of the members' losses, so each member's gradient is
its own; the optimizers (Adam, SGD) are elementwise, so one optimizer over stacked tensors is K optimizers. A
member whose loss stops being finite is frozen (its weights restored after every step; its optimizer state,
elementwise too, then no longer matters) and recorded as diverged at that step, as a lone run would record
it; the others go on. On a step some member records, the one stacked pass keeps every layer's tensors, and
that member's LayerRecorder gets its slice: what its hooks would have captured alone. On CUDA the step's two
halves (forward and backward, then the update) are replayed from CUDA graphs (GroupStep).

- plan.py: which runs can share a group (Settings.group_key), which cannot join one (`why_alone`), how many
  fit in memory (`memory_estimate`, from the model's own shapes);
- stacked.py: the stacked model (StackedMLP) and the members' stacked batches (StackedBatches);
- group.py: the group under Lightning: its members, their logger, the group step and the group module;
- run.py: `train_group(settings, run_dirs)`, one group from its members' records to their summaries.
"""

from deepinit.batched.plan import memory_estimate, why_alone
from deepinit.batched.run import train_group
from deepinit.batched.stacked import StackedMLP

__all__ = ["StackedMLP", "memory_estimate", "train_group", "why_alone"]
