"""Distributed training with Ray Train: the per-worker loop, the ``fit`` driver and the run folder."""
