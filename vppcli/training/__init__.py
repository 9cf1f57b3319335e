"""Training: clip sampling, matching, losses and the training loop (`vpp train`).

The model code is shared with inference (`vppcli.model`); training only switches it into its
training mode (soft pruning masks, intermediate predictions)."""
