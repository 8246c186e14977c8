"""Training: caption datasets, CLIP feature extraction, and the CLIP-prefix and SBG training runs.

Nothing on the inference path imports this package. The modules:

- ``datasets``: readers for Flickr8k, Flickr30k and folders of images with sidecar captions, and the
  seed's split (the last images of the file are the test set);
- ``features``: CLIP image features computed once per image into safetensors shards + ``captions.jsonl``;
- ``config``: the optimisation settings and the paper's runs (the defaults of ``icg train``), torch-free;
- ``loop``: the shared training loop (AdamW, linear warm-up, clipping, autocast on CUDA, checkpoints,
  resume) with its optimiser state stored as safetensors + JSON, never pickled;
- ``prefix`` and ``sbg``: the two captioners' training data, models and checkpoints.
"""
