"""Selective blind guessing (SBG): CLIP picks keywords from a fixed vocabulary and category hierarchy,
then a GPT-2 fine-tuned on ``"kw1, kw2 ### caption."`` writes the caption.

``vocab`` loads and validates the vocabulary (JSON, converted once from the published pickles),
``bank`` encodes every prompt set once per CLIP model and caches the features on disk, and
``keywords`` runs the per-image selection over those cached features.
"""
