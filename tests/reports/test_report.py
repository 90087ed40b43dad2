from __future__ import annotations

import base64
import re
import shutil
import subprocess

import numpy as np
import pytest

from medseg import __version__
from medseg.reports import Report, bland_altman_figure


def _report() -> Report:
    import matplotlib.pyplot as plt

    rep = Report(
        "QA test report", inputs=["/data/scan1", "/data/scan2"], notice="synthetic <b>not</b> clinical"
    )
    rep.add_text("Method", "A sentence about the method.")
    rep.add_table("Numbers", [{"exam": "e1", "rmse": 12.3456}, {"exam": "e2", "rmse": float("nan")}])
    fig, ax = plt.subplots()
    ax.imshow(np.random.default_rng(0).random((32, 32)))
    rep.add_figure("A picture", fig, caption="random")
    rep.add_figure(
        "Bland-Altman",
        bland_altman_figure([("a vs b", [1, 2, 3, 4], [1.5, 2.2, 2.9, 4.4])], quantity="LAA", unit="%"),
    )
    return rep


def test_html_is_self_contained_and_escaped(tmp_path):
    path = _report().write_html(tmp_path / "r.html")
    html = path.read_text()
    assert f"medseg {__version__}" in html and "/data/scan2" in html
    assert "12.35" in html and "n/a" in html
    assert "&lt;b&gt;not&lt;/b&gt;" in html  # metadata is escaped, not injected
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == 2
    assert all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    assert "http://" not in html and "https://" not in html  # opens offline


def test_pdf_has_text_and_figure_pages(tmp_path):
    path = _report().write_pdf(tmp_path / "r.pdf")
    data = path.read_bytes()
    assert data.startswith(b"%PDF")
    assert len(re.findall(rb"/Type\s*/Page[^s]", data)) == 3  # text page + 2 figure pages


def _browser() -> str | None:
    return next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


@pytest.mark.skipif(_browser() is None, reason="no headless Chromium installed")
def test_html_renders_in_headless_chromium(tmp_path):
    from PIL import Image

    html = _report().write_html(tmp_path / "r.html")
    shot = tmp_path / "shot.png"
    cmd = [
        _browser(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1200,1600",
        f"--screenshot={shot}",
        html.as_uri(),
    ]
    subprocess.run(cmd, check=True, timeout=120, capture_output=True)
    img = np.asarray(Image.open(shot).convert("L"), float)
    assert img.shape[0] > 500
    assert img.std() > 10  # not a blank page
    assert (img < 128).mean() > 0.01  # some dark pixels: text and figures were drawn
