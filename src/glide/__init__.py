"""glide: GLIDE text-guided diffusion (Nichol et al. 2021), exact with the official checkpoints."""

__version__ = "0.1.0"
