"""The bottom layer: what every layer may use, knowing nothing of the study.

- rules.py: what a setting may be (`Rule`, `setting`, `Checked`, ConfigError): each field checks itself and says
  in one line what is allowed;
- private_api.py: every private Lightning, TensorBoard, torch and Hydra name the study uses, each with why.
"""
