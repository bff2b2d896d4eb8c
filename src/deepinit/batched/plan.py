"""Which runs of a sweep can be trained as one stacked model, and how many fit in memory at once."""

from __future__ import annotations

from deepinit.data.provision import DATASETS
from deepinit.network.model import MLP
from deepinit.settings.records import Settings
from deepinit.training.steps import GROUP, why_not


def why_alone(settings: Settings) -> str | None:
    """Why this job cannot join a batched group, or None when it can: what the group step cannot do
    (deepinit.training.steps), read off the Trainer the job's own settings make (every other Trainer setting the group's
    Trainer follows as a lone one). Runs that can join share a group with the runs of an equal Settings.group_key()."""
    from deepinit.run.parts import job_scope

    if (architecture := settings.model.architecture) != "plain":
        return f"{architecture} (the stacked model is a plain MLP)"
    with job_scope():  # a Trainer sets process-wide flags (trainer.deterministic): not the launcher's to keep
        trainer = settings.trainer.make(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    return why_not(GROUP, trainer, settings.optim.factory())


def memory_estimate(settings: Settings) -> int:
    """Bytes one member needs on the device: weights, gradients, two Adam moments, and the activations of a
    batch kept for backward (float32), from the model's own layer sizes."""
    data, model = DATASETS[settings.data.dataset], settings.model
    sizes = MLP.sizes(model.depth, model.width, data.features, data.classes)
    params = sum((a + int(model.bias)) * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
    activations = settings.data.batch_size * sum(sizes) * 3  # pre-activation, activation, gradient
    return 4 * (4 * params + activations)
