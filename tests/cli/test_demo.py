"""The README's first command, shrunk: `vicap-jobs demo --fast` end to end on the embedded default."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_demo_fast_beats_the_blind_baseline_and_fills_the_store(vicap_env: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VICAP_")}
    env["VICAP_HOME"] = str(vicap_env)
    done = subprocess.run(
        [sys.executable, "-m", "vicap_jobs.cli.main", "demo", "--fast"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        stdin=subprocess.DEVNULL,
    )
    print(done.stdout[-3000:])
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    numbers = dict(re.findall(r"(MODEL_BLEU4|BASELINE_BLEU4|MODEL_ROUGE_L|BASELINE_ROUGE_L)=([\d.]+)", done.stdout))
    assert float(numbers["MODEL_BLEU4"]) > float(numbers["BASELINE_BLEU4"])
    assert float(numbers["MODEL_ROUGE_L"]) > float(numbers["BASELINE_ROUGE_L"])
    assert "images/s" in done.stdout and "SELECT" in done.stdout
    assert re.search(r"run `vicap-jobs web`, then open\n +http://127\.0\.0\.1:8000/jobs/\d+ ", done.stdout), done.stdout[-600:]

    store = sqlite3.connect(vicap_env / "vicap.sqlite")
    kinds = dict(store.execute("SELECT kind, count(*) FROM jobs WHERE status = 'succeeded' GROUP BY kind"))
    assert kinds == {"train": 1, "export": 1, "caption": 1, "evaluate": 1}
    caption_job, total = store.execute("SELECT id, total FROM jobs WHERE kind = 'caption'").fetchone()
    assert (
        store.execute("SELECT count(*) FROM captions WHERE job_id = ? AND status = 'ok'", (caption_job,)).fetchone()[0]
        == total
        > 0
    )
    assert store.execute("SELECT onnx_path IS NOT NULL FROM models").fetchone()[0] == 1
    rows = store.execute("SELECT is_baseline, bleu_4 FROM latest_scores ORDER BY is_baseline").fetchall()
    assert [r[0] for r in rows] == [0, 1] and rows[0][1] > rows[1][1]
    # the background worker was stopped cleanly (a clean shutdown removes its heartbeat row)
    assert store.execute("SELECT count(*) FROM workers").fetchone()[0] == 0
