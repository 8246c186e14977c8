"""Evaluation: caption a dataset's test images and score them against the reference captions.

``metrics`` wraps pycocoevalcap (BLEU-1..4, METEOR, ROUGE-L, CIDEr; never SPICE) and says clearly what
it could not compute when Java is missing; ``evaluate`` runs a captioner over a test split and writes
the JSON report and the seed-style table. Nothing on the inference path imports this package.
"""
