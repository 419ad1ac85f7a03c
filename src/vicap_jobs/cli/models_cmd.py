"""``vicap-jobs models``: registered models and the families that can be trained."""

from __future__ import annotations

import json

import click

from vicap_jobs.cli.common import console, open_store, print_table
from vicap_jobs.errors import VicapError
from vicap_jobs.models.registry import FamilySpec, family_names, get_family
from vicap_jobs.services.models import (
    calibration_sample,
    default_engine,
    list_models,
    promote_model,
    resolve_model,
)


@click.group()
def models() -> None:
    """List registered models, show one, or list the model families.

    Example:

    \b
        vicap-jobs models list
        vicap-jobs models show demo-attn
    """


@models.command("list")
def list_cmd() -> None:
    """List registered models (name, family, backbone, ONNX export).

    Example:

    \b
        vicap-jobs models list
    """

    _, db = open_store()
    rows = list_models(db=db)
    if not rows:
        console.print("no models yet; train one with `vicap-jobs train` or run `vicap-jobs demo`")
        return
    print_table(
        "models",
        ["name", "family", "backbone", "image size", "onnx", "published", "created"],
        [
            [
                m.name,
                m.family,
                m.backbone,
                m.image_size,
                "int8" if m.onnx_quantized else ("yes" if m.onnx_path else "no"),
                "yes" if m.artifacts_url else "no",
                m.created_at.strftime("%Y-%m-%d %H:%M"),
            ]
            for m in rows
        ],
    )


@models.command()
@click.argument("name")
def show(name: str) -> None:
    """Show one model's artifacts, hyper-parameters and default engine here (and why).

    A vision-language model's default engine is measured once per machine (int8 when
    at least as fast as torch with the same tokens); the first show may take a while.

    Example:

    \b
        vicap-jobs models show demo-attn
    """

    _, db = open_store()
    m = resolve_model(db=db, name=name)
    try:
        choice = default_engine(m, images=calibration_sample(db=db, model=m))
    except VicapError as exc:  # e.g. the checkpoint folder is gone: still show the row
        engine_rows = [["default engine", f"unknown: {exc}"]]
    else:
        engine_rows = [["default engine", choice.engine], ["why", choice.reason]]
        if "int8" in get_family(m.family).engines:
            engine_rows.append(["int8 path", choice.int8_path or "not measured"])
    print_table(
        f"model {m.name}",
        ["field", "value"],
        [
            ["family", m.family],
            ["backbone", m.backbone],
            ["image size", m.image_size],
            ["tokenization", m.tokenization],
            ["artifacts", m.artifact_dir],
            ["onnx", m.onnx_path],
            ["onnx int8", m.onnx_quantized],
            ["published", m.artifacts_url or "no: the files are only on the host that wrote them"],
            ["files", len(m.artifact_digests) if m.artifact_digests else None],
            ["created", m.created_at.isoformat(timespec="seconds")],
            *engine_rows,
        ],
    )
    console.print(json.dumps(m.hyperparameters, indent=2, ensure_ascii=False, default=str))


@models.command()
@click.argument("source")
@click.argument("name")
def promote(source: str, name: str) -> None:
    """Register a copy of model SOURCE (e.g. a sweep's best run) under the plain name NAME.

    Example:

    \b
        vicap-jobs sweeps show lr-study
        vicap-jobs models promote lr-study-lr5e-4-r2 synth-attn-best
    """

    _, db = open_store()
    promote_model(db=db, source=source, name=name)
    console.print(f"model {name} registered: a copy of {source}'s artifacts")


@models.command()
def families() -> None:
    """List the model families the registry knows and their inference engines.

    Example:

    \b
        vicap-jobs models families
    """

    print_table(
        "model families",
        ["family", "engines", "description"],
        [[n, engine_summary(get_family(n)), get_family(n).description] for n in family_names()],
    )


def engine_summary(spec: FamilySpec) -> str:
    """A family's engines with the default marked and the ones it prefers when measured faster."""
    tags = {spec.default_engine: "default"}
    tags.update({name: "preferred when faster here" for name in spec.prefer})
    return ", ".join(f"{name} ({tags[name]})" if name in tags else name for name in spec.engine_names)
