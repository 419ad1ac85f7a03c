"""The one device parser: training options, torch engines and onnxruntime provider selection all use it."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from vicap_jobs.devices import Device, parse_device, torch_device
from vicap_jobs.errors import InputError
from vicap_jobs.training.options import TrainOptions


@pytest.mark.parametrize(
    ("text", "device"),
    [("cpu", Device("cpu")), ("cuda", Device("cuda")), ("cuda:0", Device("cuda", 0)), ("cuda:12", Device("cuda", 12))],
)
def test_valid_devices(text: str, device: Device) -> None:
    assert parse_device(text) == device and str(device) == text


@pytest.mark.parametrize("text", ["tpu", "gpu1", "cuda:", "cuda:x", "cpu:0", "CUDA", "mps", "", "cuda:-1"])
def test_anything_else_is_one_line(text: str) -> None:
    with pytest.raises(InputError, match=r"^unknown device .*; use cpu, cuda or cuda:N$"):
        parse_device(text)


def test_parsing_needs_no_torch() -> None:
    code = (
        "import sys; from vicap_jobs.devices import parse_device; parse_device('cuda:1'); print('torch' in sys.modules)"
    )
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
        == "False"
    )


def test_torch_device_checks_that_torch_sees_a_gpu() -> None:
    assert torch_device("cpu") == torch.device("cpu")
    if torch.cuda.is_available():
        assert torch_device("cuda:0") == torch.device("cuda", 0)
    else:
        with pytest.raises(InputError, match="torch sees no CUDA GPU here; use --device cpu"):
            torch_device("cuda")


def test_training_options_use_it() -> None:
    with pytest.raises(InputError, match="unknown device 'gpu'"):
        TrainOptions(device="gpu").validate()
    TrainOptions(device="cuda:1").validate()  # parsing only: whether this machine has it is checked when training


def test_onnxruntime_providers_use_it() -> None:
    from vicap_jobs.engines.onnx_engine import select_providers

    assert select_providers("cpu") == ["CPUExecutionProvider"]
    with pytest.raises(InputError, match="unknown device 'cuda:x'"):
        select_providers("cuda:x")
