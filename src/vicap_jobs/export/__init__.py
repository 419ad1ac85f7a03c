"""Exporters: model checkpoint → files an engine runs (ONNX), parity-checked, optionally quantized.

This package sits above ``engines``: an export folder's format lives with the engine
that reads it (``engines/onnx_format.py``), the exporters here write it and verify
it through the engines. Names only here, so the CLI and services list them without
importing torch: :data:`EXPORTERS` maps each export format a family may list in its
``FamilySpec.exports`` to its exporter ("module:function"), :data:`QUANTIZATIONS`
names what ``--quantize`` accepts.
"""

from __future__ import annotations

EXPORTERS: dict[str, str] = {
    "onnx": "vicap_jobs.export.onnx:export_onnx",  # export_onnx(checkpoint_dir, out_dir) -> OnnxExport
}
QUANTIZATIONS: tuple[str, ...] = ("int8",)  # static QDQ int8 encoder (export/quantize.py)
