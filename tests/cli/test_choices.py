"""CLI choices come from the registries, are read only when needed, and help never loads torch for them."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from vicap_jobs.cli import choices
from vicap_jobs.cli.main import cli
from vicap_jobs.data.text import TOKENIZATIONS
from vicap_jobs.db.tables import SPLITS
from vicap_jobs.export import QUANTIZATIONS
from vicap_jobs.models.backbones import backbone_names
from vicap_jobs.models.registry import all_engine_names, family_names


def test_choices_are_the_registries() -> None:
    assert choices.FAMILY.choices == tuple(family_names())
    assert choices.ENGINE.choices == tuple(all_engine_names())
    assert choices.BACKBONE.choices == tuple(backbone_names())
    assert choices.QUANTIZATION.choices == QUANTIZATIONS
    assert choices.SPLIT.choices == tuple(SPLITS)
    assert choices.TOKENIZATION.choices == TOKENIZATIONS


def test_registry_names_are_read_on_first_use_only() -> None:
    calls: list[int] = []
    choice = choices.RegistryChoice("thing", lambda: calls.append(1) or ("a", "b"))
    assert calls == []
    assert choice.convert("a", None, None) == "a" and choice.choices == ("a", "b") and calls == [1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["submit", "caption", "--dir", ".", "--engine", "tensorrt"],
            "unknown engine 'tensorrt'; choose one of: int8, onnx",
        ),
        (
            ["submit", "evaluate", "--model", "m", "--dataset", "d", "--split", "dev"],
            "unknown split 'dev'; choose one of: test, train, val",
        ),
        (["export", "onnx", "m", "--quantize", "int4"], "unknown quantization 'int4'; choose one of: int8"),
    ],
)
def test_an_unknown_name_is_one_line_listing_the_valid_ones(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, args, prog_name="vicap-jobs")
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith(f"Error: {message}"), result.output


def test_help_loads_no_torch() -> None:
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from vicap_jobs.cli.main import cli\n"
        "for args in (['--help'], ['submit', 'caption', '--help'], ['submit', 'evaluate', '--help'], "
        "['export', 'onnx', '--help']):\n"
        "    result = CliRunner().invoke(cli, args)\n"
        "    assert result.exit_code == 0, result.output\n"
        "print('torch' in sys.modules, 'onnxruntime' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"], out
