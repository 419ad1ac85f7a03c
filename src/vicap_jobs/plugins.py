"""Plugins: modules named in ``VICAP_PLUGINS`` are imported once per process, before a registry is read.

A plugin module registers what it brings at import time: a model family
(``vicap_jobs.models.registry.register_family``) or a job kind
(``vicap_jobs.jobs.kinds.register_job_kind``). Every vicap-jobs process (CLI, worker, scheduler)
imports the same modules, so a worker can run a family or a kind that lives outside this package
(the tests register throw-away ones this way).
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from vicap_jobs.errors import ConfigError, InputError
from vicap_jobs.settings import get_settings

log = logging.getLogger(__name__)

_loaded: set[str] = set()


def plugin_modules() -> list[str]:
    """The module names in ``VICAP_PLUGINS`` (comma-separated), in order."""
    return [name.strip() for name in (get_settings().plugins or "").split(",") if name.strip()]


def load_plugins() -> list[str]:
    """Import every configured plugin module not imported yet; returns the names imported now."""
    imported: list[str] = []
    for name in plugin_modules():
        if name in _loaded:
            continue
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(f"VICAP_PLUGINS names {name!r}, which cannot be imported: {exc}") from None
        _loaded.add(name)
        imported.append(name)
        log.info("plugin %s loaded", name)
    return imported


def resolve(ref: str) -> Any:
    """The object named by ``"package.module:attribute"``, importing the module now.

    Registries hold such references (a family's engines, a job kind's run function) so that
    listing names imports nothing heavy, and a low layer never imports the layer that does the work.
    """
    module, sep, attribute = ref.partition(":")
    if not sep or not module or not attribute:
        raise InputError(f"a reference must look like 'package.module:attribute', got {ref!r}")
    return getattr(importlib.import_module(module), attribute)
