"""Model registry, files, downloads and the model manager."""
