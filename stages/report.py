"""report stage: every model's metrics (heads and fine-tuned networks) -> metrics/summary.md (a table, best first) + metrics/summary.json."""

import json
from pathlib import Path

from covidct import cli, params, report
from covidct.atomic import atomic_write_json, atomic_write_text


def main() -> None:
    p = params.load()
    names = [f"{b}-{h}" for b in p["backbones"] for h in p["heads"]]
    results = {name: json.loads(Path(f"metrics/{name}.json").read_text()) for name in names}
    for run in p["finetune"]["runs"]:
        results[f"finetune-{run}"] = json.loads(Path(f"metrics/finetune/{run}.json").read_text())
    text = report.summary_markdown(results, p["evaluate"]["bootstrap"])
    atomic_write_text("metrics/summary.md", text)
    atomic_write_json("metrics/summary.json", report.summary_metrics(results))
    print(text)


if __name__ == "__main__":
    cli.run(main)
