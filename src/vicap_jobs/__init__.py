"""vicap-jobs: a batch job runner for Vietnamese image captioning."""

__version__ = "0.1.0"
