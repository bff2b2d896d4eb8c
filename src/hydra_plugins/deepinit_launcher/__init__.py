"""Hydra finds launchers only under the hydra_plugins namespace; the batched launcher lives here."""
