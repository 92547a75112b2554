"""report.html renders in a real headless browser (Debian's Chromium), pictures included."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from egoscale.scaling.fit import FitConfig, run_fit
from egoscale.scaling.report import report
from egoscale.scaling.results import write_table
from tests.test_scaling import TRUE, grid

SCRIPT = Path(__file__).with_name("render_report.sh")


@pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser")),
                    reason="no Chromium here (apt-get install chromium)")
@pytest.mark.slow
def test_the_report_renders_in_headless_chromium(tmp_path):
    write_table(grid("logit_linear", TRUE["logit_linear"]), tmp_path / "r.csv")
    run_fit(FitConfig(table=str(tmp_path / "r.csv"), out=str(tmp_path / "fit.json"), bootstrap=20),
            log=lambda *a: None)
    html = report(str(tmp_path / "fit.json"), str(tmp_path / "rep"), target="0.8")
    # the page is self-contained: it renders from another folder with the PNGs gone
    moved = tmp_path / "elsewhere" / "report.html"
    moved.parent.mkdir()
    shutil.copy(html, moved)
    shot = tmp_path / "shot.png"
    subprocess.run(["bash", str(SCRIPT), str(moved), str(shot), "1000,7000"], check=True, timeout=120)
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert img.shape[:2] == (7000, 1000)
    colour = (img.max(axis=2) - img.min(axis=2)) > 60  # saturated pixels: plot lines, bands, points
    rows = np.flatnonzero(colour.any(axis=1))
    # the plots are drawn (coloured pixels), down the page, not just the text of the tables
    assert colour.mean() > 0.005 and rows.max() - rows.min() > 2000
