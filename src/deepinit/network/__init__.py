"""The network and its init: plain PyTorch, no Lightning.

- activations.py: the activations, one record each (module, phi and phi', gain, dead or saturated rule,
  homogeneity, closed-form moments);
- model.py: the MLP (plain nn.Module): plain or residual blocks, with or without batchnorm or layernorm;
- init_schemes.py: the init schemes, one record each (fill, variance, its settings record, assumptions), LSUV.
"""
