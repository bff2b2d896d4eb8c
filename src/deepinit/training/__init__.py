"""How the network is trained under Lightning: the LightningModule and its training steps.

- module.py: the LightningModule (Classifier): loss, accuracy, optimizer, divergence; the fast or the eager step;
- steps.py: which training step can run here: one rule for the fast step and the batched group step;
- fast_step.py: the fast training step (fused optimizer, no host sync) and Graphed, the one CUDA-graph replay
  helper both the lone and the batched step use.
"""
