"""`dvc plots show` / `diff` need no network: .dvc/config points DVC at a page with Vega inlined.
(tests/test_pipeline.py renders it in a headless browser with the network off.)"""

import configparser
from pathlib import Path

from covidct import offline_plots

ROOT = Path(__file__).resolve().parents[1]


def test_dvc_uses_the_offline_template_and_it_is_current():
    config = configparser.ConfigParser()
    config.read(ROOT / ".dvc/config")
    template = ROOT / ".dvc" / config["plots"]["html_template"]
    assert template == ROOT / ".dvc/plots/offline.html"
    text = template.read_text()
    assert text == offline_plots.template(), "regenerate: python -m covidct.offline_plots .dvc/plots/offline.html"
    assert "{plot_divs}" in text and "{scripts}" not in text, "DVC's {scripts} would bring back the CDN tags"
    assert "https://" not in text.split("<script>", 1)[0]
