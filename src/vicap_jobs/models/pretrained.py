"""What the vision-language families share: local pretrained folders, and step-wise search over a HF decoder.

Weights are never downloaded here. :func:`pretrained_dir` checks a local Hugging
Face folder before anything loads it and turns a missing one into one line that
names the folder, what it should hold and which model id to fetch elsewhere;
:func:`from_local` calls a ``from_pretrained`` with ``local_files_only=True`` and
turns the library's multi-line errors into one line.

:class:`PretrainedCaptioner` gives every such family the step-wise contract of
:mod:`vicap_jobs.models.captioner`, so the shared greedy/beam search, the torch
and int8 engines and the trainer treat them like the CNN+LSTM families. A family
implements ``extract_features`` (the image side: grid or prefix embeddings) and
``forward(features, tokens_in) -> logits`` (teacher forcing); ``start``/``step``
here keep the generated ids in the search state and rerun the decoder over them.
Measured choice: no key/value cache yet (each step re-reads the prefix: ~10× the
decoder work of a cached step at 20 tokens, but the state stays a tuple of
batch-first tensors the search reorders like any other); the decoder is a small
share of caption time next to the image encoder at these lengths. Caching is
the performance issue's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from vicap_jobs.errors import InputError, WeightsMissingError
from vicap_jobs.models.captioner import StepCaptioner
from vicap_jobs.models.decoding import DecoderState

log = logging.getLogger(__name__)

T = TypeVar("T")


def pretrained_dir(path: str | Path | None, *, what: str, option: str, model_ids: str) -> Path:
    """The absolute local folder ``path`` after checking it holds a ``config.json``.

    what: e.g. "BLIP base model"; option: the CLI option that sets it; model_ids: the
    Hugging Face ids a user would download elsewhere (named in the error).
    """
    if path is None or str(path) == "":
        raise WeightsMissingError(f"the {what} folder is not set; give {option} DIR (a local copy of {model_ids})")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        problem = "does not exist"
    elif not (folder / "config.json").is_file():
        problem = "has no config.json (not a save_pretrained folder)"
    else:
        return folder.resolve()
    raise WeightsMissingError(
        f"{what} folder {folder} {problem}; download {model_ids} on a machine with network "
        f"(`hf download <id> --local-dir DIR`), copy DIR here and give {option} DIR"
    )


def from_local(loader: Callable[..., T], folder: Path, *, what: str, **kwargs: Any) -> T:
    """``loader(folder, local_files_only=True, **kwargs)`` (a ``from_pretrained``); errors become one line."""
    from transformers.utils import logging as hf_logging  # transformers is imported by the caller already

    hf_logging.disable_progress_bar()
    try:
        return loader(str(folder), local_files_only=True, **kwargs)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot load the {what} from {folder}: {first}") from exc


def reset_embeddings(embedding: nn.Embedding, std: float = 0.02) -> None:
    """Fresh N(0, std) rows: a trained tokenizer's ids mean nothing to the pretrained embedding table."""
    with torch.no_grad():
        embedding.weight.normal_(0.0, std)


class PretrainedCaptioner(StepCaptioner):
    """Step-wise search over a decoder that reads the whole prefix (subclasses: extract_features, forward).

    State: (features (B, ...), ids (B, t)): the image features once, the ids generated so far.
    ``save_pretrained(folder)`` writes the model for the ``hf`` checkpoint layout.
    """

    def start(self, features: torch.Tensor) -> DecoderState:
        """Features → (features, no ids yet)."""
        ids = torch.empty((features.shape[0], 0), dtype=torch.long, device=features.device)  # (B, 0)
        return features, ids

    def step(self, tokens: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, DecoderState]:
        """Append ``tokens`` (B,) and return the next token's logits (B, V) in fp32."""
        features, ids = state
        ids = torch.cat([ids, tokens.to(ids.dtype).unsqueeze(1)], dim=1)  # (B, t+1)
        logits = self(features, ids)[:, -1]  # (B, V)
        return logits.float(), (features, ids)

    def save_pretrained(self, folder: Path) -> None:
        """Write the model's ``save_pretrained`` output into ``folder`` (the checkpoint's ``hf/``)."""
        raise NotImplementedError


def check_vocab_covers(model_vocab: int, codec_size: int, *, what: str) -> None:
    """A codec with more ids than the model's embeddings can never be decoded."""
    if codec_size > model_vocab:
        raise InputError(f"the tokenizer has {codec_size} ids but the {what} only {model_vocab} embeddings")
