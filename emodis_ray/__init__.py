"""emodis_ray: disentangled audio-visual emotion recognition (Peri et al., ICASSP 2021) on Ray."""

import os

__version__ = "0.1.0"

# The trunks run on the real segments of a batch only, so every batch brings a new input shape, and oneDNN (torch's
# CPU convolutions) keeps compiled kernels per shape in a cache of 1024 entries by default: 0.5-1 GB per process at
# the tiny preset, filled over a few thousand clips, so a worker's memory grew with the data it had seen. With 64
# entries it stays near flat (docs/design.md §9). Set here, on import, because oneDNN reads
# it once, at its first kernel: every process that runs the model (Ray workers included) imports this package
# first. A value in the environment is kept.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")
