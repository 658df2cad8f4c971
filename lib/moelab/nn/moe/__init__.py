"""The sparse Mixture-of-Experts feed-forward: the router, the experts, the layer, its losses and metrics."""
