"""Option choices read from the registries (never typed again in a command), each read when first needed.

``RegistryChoice`` is a click Choice whose names come from a function called on
first use (parsing the option, or printing that command's help). The registries
read here import no torch; the backbone names do (they live beside the
backbones), so only `train` help and parsing pay for it: ``vicap-jobs --help``
and ``vicap-jobs submit caption --help`` never load torch. A name outside the
registry is the registry's one-line error (``unknown engine 'x'; choose one
of: ...``), exit code 1, like every other unknown name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import click

from vicap_jobs.data.text import TOKENIZATIONS
from vicap_jobs.db.tables import SPLITS
from vicap_jobs.errors import UnknownNameError
from vicap_jobs.export import QUANTIZATIONS
from vicap_jobs.models.registry import all_engine_names, family_names
from vicap_jobs.training.options import EARLY_STOP_ON as EARLY_STOP_METRICS


class RegistryChoice(click.Choice[str]):
    """click.Choice over ``names()``, evaluated lazily and once."""

    def __init__(self, kind: str, names: Callable[[], Sequence[str]]) -> None:
        self.kind = kind
        self._names = names
        self._choices: tuple[str, ...] | None = None
        self.case_sensitive = True

    @property
    def choices(self) -> tuple[str, ...]:
        if self._choices is None:
            self._choices = tuple(self._names())
        return self._choices

    @choices.setter
    def choices(self, names: tuple[str, ...]) -> None:
        self._choices = tuple(names)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        if value not in self.choices:
            raise UnknownNameError(self.kind, str(value), self.choices)
        return str(value)

    def __repr__(self) -> str:
        return f"RegistryChoice({self.kind!r})"


def _backbones() -> list[str]:
    from vicap_jobs.models.backbones import backbone_names  # imports torch: only for `train` help and parsing

    return backbone_names()


FAMILY = RegistryChoice("model family", family_names)
ENGINE = RegistryChoice("engine", all_engine_names)  # the union over families; each family then accepts its own
BACKBONE = RegistryChoice("backbone", _backbones)
QUANTIZATION = RegistryChoice("quantization", lambda: QUANTIZATIONS)
SPLIT = RegistryChoice("split", lambda: SPLITS)
TOKENIZATION = RegistryChoice("tokenization", lambda: TOKENIZATIONS)
EARLY_STOP_ON = RegistryChoice("early-stopping metric", lambda: EARLY_STOP_METRICS)
