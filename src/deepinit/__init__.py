"""deepinit: how weight initialization shapes deep MLPs, measured against the variance theory.

Its layers, bottom to top (a module imports only from its own and those below it; tests/test_layers.py checks):
base (setting rules, Lightning's private names), data, network (activations, the MLP, init schemes),
theory, propagate (the notebook's experiments), results (summary.json), observe (layer statistics,
recorder, learning speed, figures), settings (a run's checked settings), training (the LightningModule
and its steps), run (one run: parts, life, stopping, checkpoints, logger, progress, folder), batched
(same-shape runs as one stacked model), sweep (a sweep's jobs and its report).
"""

import warnings

# Deprecation notices from inside Lightning 2.6 and torch 2.14 that no user of this study can act on. Set here,
# before anything imports Lightning, so that every process sees them (joblib and submitit workers too).
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated", category=FutureWarning)
