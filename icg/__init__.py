"""ICG: image captions (CLIP-prefix and SBG) for the Stable Diffusion WebUI and standalone.

The version is defined once, in ``icg.__version__`` (pyproject reads it there)."""
