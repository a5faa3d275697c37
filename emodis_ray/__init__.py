"""emodis_ray: disentangled audio-visual emotion recognition (Peri et al., ICASSP 2021) on Ray."""

__version__ = "0.1.0"
