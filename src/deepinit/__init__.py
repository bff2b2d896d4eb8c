"""deepinit: how weight initialization shapes deep MLPs, measured against the variance theory."""

import warnings

# Deprecation notices from inside Lightning 2.6 and torch 2.14 that no user of this study can act on. Set here,
# before anything imports Lightning, so that every process sees them (joblib and submitit workers too).
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated", category=FutureWarning)
