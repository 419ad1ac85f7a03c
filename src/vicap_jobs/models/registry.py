"""One registry: model family name → builder, trainer and inference engines.

Families live one per module and register a :class:`FamilySpec` at import.
``FAMILY_MODULES`` maps each name to its module so heavy imports (torch,
transformers) happen only when that family is used. Adding a family is adding
its module and one line here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vicap_jobs.errors import UnknownNameError

FAMILY_MODULES: dict[str, str] = {
    "cnn-lstm": "vicap_jobs.models.cnn_lstm",
    "cnn-lstm-attn": "vicap_jobs.models.cnn_lstm_attn",
}


@dataclass(frozen=True)
class FamilySpec:
    """What the rest of the system needs to know about one model family.

    build(config, vocab_size) -> nn.Module; train(**kwargs) -> TrainResult;
    engines: names accepted by ``vicap_jobs.engines.load_engine``, the first
    being the default for bulk captioning.
    """

    name: str
    description: str
    config_cls: type
    build: Callable[..., Any]
    train: Callable[..., Any]
    engines: tuple[str, ...]
    exportable: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def default_engine(self) -> str:
        return self.engines[0]


_REGISTERED: dict[str, FamilySpec] = {}


def register_family(spec: FamilySpec) -> FamilySpec:
    """Called by a family module at import time."""
    _REGISTERED[spec.name] = spec
    return spec


def family_names() -> list[str]:
    """All family names, without importing their modules."""
    return sorted(FAMILY_MODULES)


def get_family(name: str) -> FamilySpec:
    """The spec of family ``name``; an unknown name lists the valid ones."""
    if name not in FAMILY_MODULES:
        raise UnknownNameError("model family", name, family_names())
    if name not in _REGISTERED:
        importlib.import_module(FAMILY_MODULES[name])
    return _REGISTERED[name]
