"""The sweeps pages show the table of ``sweeps show``: a row per grid point beside the baseline, then every run."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi.testclient import TestClient

from vicap_jobs.db.store import open_engine
from vicap_jobs.services.datasets import create_synth_dataset
from vicap_jobs.services.runs import run_job
from vicap_jobs.services.sweeps import create_sweep
from vicap_jobs.settings import get_settings
from vicap_jobs.web.app import create_app

TINY = {
    "epochs": 1,
    "image_size": 32,
    "embed_dim": 16,
    "hidden_dim": 32,
    "attention_dim": 16,
    "batch_size": 16,
    "backbone": "tiny",
    "backbone_weights": "random",
    "finetune_backbone": True,
    "progress_bar": False,
}


def test_sweep_pages_list_the_sweep_and_tabulate_its_points(vicap_env: Path) -> None:
    """Two learning rates, one repeat each: two grid-point rows with CIDEr-D, the baseline row, two runs."""
    db = open_engine(get_settings())
    create_synth_dataset(db=db, name="s", n_images=60, seed=1, size=32, out_dir=vicap_env / "synth", nightly=False)
    plan = create_sweep(db=db, name="lr<study>", family="cnn-lstm", dataset="s", options=TINY, grid={"lr": [1e-2, 1e-3]})
    for child_id in plan.child_ids:
        assert run_job(db=db, job_id=child_id).ok
    with TestClient(create_app(db=db)) as client:
        listing = client.get("/sweeps").text
        assert 'href="/sweeps/lr%3Cstudy%3E"' in listing and "lr&lt;study&gt;" in listing and "2/2" in listing
        page = client.get("/sweeps/lr%3Cstudy%3E")
    assert page.status_code == 200
    rows = re.findall(r"<tr class=\"(?:below-baseline)?\"><td>(lr=[^<]+)</td><td>1/1</td>(.*?)</tr>", page.text, re.S)
    assert [label for label, _ in rows] == ["lr=1e-2", "lr=1e-3"]
    for _, cells in rows:
        numbers = re.findall(r'<td class="num">([^<]*)</td>', cells)
        assert re.fullmatch(r"\d+\.\d", numbers[0]) and re.fullmatch(r"\d+\.\d\d", numbers[5]), numbers  # BLEU-1, CIDEr-D
    assert "blind baseline" in page.text and page.text.count('class="badge succeeded"') >= 2


def test_an_unknown_sweep_is_a_readable_404(vicap_env: Path) -> None:
    with TestClient(create_app()) as client:
        response = client.get("/sweeps/nope")
    assert response.status_code == 404 and "no sweep named" in response.text
