"""The ``--out`` option of every command that writes an export: a local file or an object storage URL.

A plain ``str`` option, not ``click.Path`` (which would reject ``s3://bucket/key``); the checks a
local path needs (its folder exists, it is not a folder) are made when writing, by
``services.outputs.write_output``, as one-line errors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import click

F = TypeVar("F", bound=Callable[..., object])


def out_option(what: str = "Output file") -> Callable[[F], F]:
    """``--out FILE|URL``: where to write; stdout when not given."""
    return click.option(
        "--out",
        type=str,
        default=None,
        metavar="FILE|URL",
        help=f"{what}: a local path or an object storage URL such as s3://bucket/key (default: stdout).",
    )
