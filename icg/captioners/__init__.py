"""Captioners: CLIP features in, ``CaptionResult`` out. They never see an image."""
