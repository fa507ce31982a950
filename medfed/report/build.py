"""`medfed report DIR`: report.html of a `medfed run` or `medfed compare` folder, from disk alone.

A deployment's state folder (`medfed server --state`) holds summary.json with mode "deployment"
and rounds.jsonl: deployment_sections.py lays it out. A run folder holds summary.json, rounds.jsonl, predictions.npz and gradcam.npz; a compare folder
holds compare.json, rounds/<algorithm>-seed<k>.jsonl, predictions/seed<k>.npz and gradcam.npz.
Every section is always there: a panel that does not apply (binary-only panels of a multi-class
task, the cross-site matrix of a single run) says why in one sentence.

This module only tells the two folders apart and writes the page; run_sections.py and
compare_sections.py lay out each kind of report, from the pieces they share in sections.py.
"""

from __future__ import annotations

from pathlib import Path

from medfed.errors import MedfedError
from medfed.report.compare_sections import compare_sections
from medfed.report.deployment_sections import deployment_sections
from medfed.report.html import page
from medfed.report.inputs import read_json
from medfed.report.run_sections import run_sections

SECTIONS = (
    "Overview", "How to read this report", "Data at each site", "Learning curves", "ROC curves",
    "Results with confidence intervals", "Paired tests", "Cross-site performance", "Calibration",
    "Operating point", "Grad-CAM: where the model looks", "Communication and wall time",
)


def _sections(folder: Path):
    if (folder / "compare.json").is_file():
        return compare_sections(folder)
    if (folder / "summary.json").is_file():
        summary = read_json(folder / "summary.json")
        if not isinstance(summary, dict):
            raise MedfedError(f"{folder / 'summary.json'} holds no summary (a JSON object)")
        return (deployment_sections if summary.get("mode") == "deployment" else run_sections)(folder)
    raise MedfedError(f"{folder} is neither a `medfed run` nor a `medfed compare` output "
                      "(no summary.json or compare.json)")


def build_report(folder: str | Path) -> Path:
    """Write folder/report.html; raises MedfedError for a folder that is neither output."""
    folder = Path(folder)
    try:
        title, sections = _sections(folder)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        # valid JSON without what a report reads: a file edited by hand, or of another version
        raise MedfedError(f"the results in {folder} lack what a report reads ({type(exc).__name__}: "
                          f"{str(exc)[:120]}); were they written by this medfed version?") from None
    path = folder / "report.html"
    path.write_text(page(title, sections), encoding="utf-8")
    return path
