"""A run's settings, typed and checked once, at the boundary between Hydra and the study.

- records.py: the frozen records of a run (`Settings`: model, init, data, stats, optim, trainer, run), built once
  from the composed config; the result-neutral keys, the batched group key and the essentials are their methods
  (each init scheme's own record is in deepinit.network.init_schemes, beside the scheme);
- hydra.py: the only place that sees DictConfig: `from_config(cfg)`, the schemas Hydra checks each config file
  against when it composes (so a misspelled key or a wrong type fails before anything runs), and the one line
  for a config that does not compose.
"""
