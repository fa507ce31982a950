"""The per-site data report, computed at the site: only aggregates, never an image or a value
that names a patient.

Per site: images read and labelled, label prevalence, intensity statistics (of the [0, 1] model
input), native image sizes and pixel spacing, and the files that could not be used with the reason
(the list stays at the site; a run carries only how many). Identifying DICOM tags are counted by
keyword. `medfed data check` prints it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from medfed.config import DataConfig
from medfed.console import name_column, print_table
from medfed.data.chestxray14 import scan_chestxray14
from medfed.data.dicom import scan_dicom
from medfed.data.images import scan_images
from medfed.data.labels import LabelMap, case_variants, load_label_map
from medfed.data.nifti import scan_nifti
from medfed.data.scan import Scan, Skipped, site_of
from medfed.errors import ConfigError

# The sources whose files a site holds, and how each is read into a Scan.
SCANNERS: dict[str, Callable[[DataConfig], Scan]] = {
    "dicom": lambda c: scan_dicom(c.data_dir, c.labels, c.image_size, c.series_volumes,
                                  c.site_name),
    "nifti": lambda c: scan_nifti(c.data_dir, c.labels, c.image_size, c.site_name),
    "chestxray14": lambda c: scan_chestxray14(c.data_dir, c.site_by, c.image_size),
    "images": lambda c: scan_images(c.data_dir, c.labels, c.image_size, c.site_name),
}


@dataclass(frozen=True)
class SiteReport:
    site: str
    n_images: int  # readable images
    n_labelled: int
    labels: dict[str, int]  # label name -> images (per finding for multi-label)
    intensity: dict[str, float]  # mean, std, p01, p99 of the model input in [0, 1]
    sizes: dict[str, int]  # native size ("512x512") -> images
    spacing: dict[str, float]  # min, median, max of the in-plane pixel spacing (mm); empty if none
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def prevalence(self) -> dict[str, float]:
        return {k: v / self.n_labelled for k, v in self.labels.items()} if self.n_labelled else {}


def site_reports(scan: Scan) -> list[SiteReport]:
    skipped_by_site: dict[str, list[Skipped]] = {}
    for s in scan.skipped:
        skipped_by_site.setdefault(site_of(Path(s.path), scan.data_dir, scan.site_name), []).append(s)
    names = sorted(set(scan.sites) | set(skipped_by_site))
    return [_site_report(scan, name, skipped_by_site.get(name, [])) for name in names]


def _site_report(scan: Scan, site: str, skipped: list[Skipped]) -> SiteReport:
    records = [r for r in scan.records if r.site == site]
    labels: Counter[str] = Counter()
    for r in records:
        if isinstance(r.label, tuple):
            labels.update(r.label or ("no finding",))
        elif r.label is not None:
            labels[str(r.label)] += 1
    pixels = np.concatenate([r.image.ravel() for r in records]) if records else np.zeros(0)
    intensity = ({"mean": float(pixels.mean()), "std": float(pixels.std()),
                  "p01": float(np.quantile(pixels, 0.01)), "p99": float(np.quantile(pixels, 0.99))}
                 if pixels.size else {})
    spacings = [r.spacing[-1] for r in records if r.spacing]
    spacing = ({"min": float(min(spacings)), "median": float(np.median(spacings)),
                "max": float(max(spacings))} if spacings else {})
    sizes = Counter("x".join(map(str, r.native_shape)) for r in records)
    return SiteReport(site, len(records), sum(r.label is not None for r in records),
                      dict(sorted(labels.items())), intensity, dict(sizes.most_common()), spacing,
                      skipped)


def scan_for(config: DataConfig) -> Scan:
    if config.dataset not in SCANNERS:
        raise ConfigError(f"medfed data check reads the files a site holds: --dataset "
                          f"{', '.join(SCANNERS)} (got '{config.dataset}')")
    return SCANNERS[config.dataset](config)


def report_table(scan: Scan, reports: list[SiteReport]) -> Table:
    table = Table(title=f"{scan.kind} data in {scan.data_dir}")
    name_column(table, "site")
    for column in ("images", "labelled", "skipped", "label prevalence",
                   "intensity mean (sd) [p1, p99]", "sizes", "spacing mm"):
        table.add_column(column)
    for r in reports:
        i, sp = r.intensity, r.spacing
        table.add_row(
            r.site, str(r.n_images), str(r.n_labelled), str(len(r.skipped)),
            ", ".join(f"{k} {v:.0%}" for k, v in r.prevalence.items()) or "-",
            f"{i['mean']:.3f} ({i['std']:.3f}) [{i['p01']:.2f}, {i['p99']:.2f}]" if i else "-",
            ", ".join(f"{k} ({n})" for k, n in list(r.sizes.items())[:3]) or "-",
            f"{sp['min']:.3g}-{sp['max']:.3g}" if sp else "-")
    return table


def shareable(reports: list[SiteReport], scan: Scan) -> dict:
    """What may leave the site: the aggregates, with skipped files counted by reason, not listed."""
    sites = {}
    for r in reports:
        entry = asdict(r)
        entry["skipped"] = dict(Counter(s.reason for s in r.skipped))
        entry["prevalence"] = r.prevalence
        sites[entry.pop("site")] = entry
    return {"dataset": scan.kind, "sites": sites, "identifying_tags": scan.phi}


def map_labels(scan: Scan, label_map: LabelMap) -> None:
    """Labels as the federation will see them; an unmapped label is the same error as in a run."""
    scan.records = [replace(r, label=label_map.apply(r.site, str(r.label)))
                    if isinstance(r.label, str) else r for r in scan.records]


def check_command(config: DataConfig, console: Console | None = None,
                  json_path: Path | None = None) -> list[SiteReport]:
    """`medfed data check`: the report, printed; skipped files listed; identifying tags by keyword.
    json_path: also write the shareable aggregates there."""
    console = console or Console()
    scan = scan_for(config)
    if config.label_map:
        map_labels(scan, load_label_map(config.label_map))
    pair = case_variants({r.label for r in scan.records if isinstance(r.label, str)})
    reports = site_reports(scan)
    if json_path is not None:
        json_path.write_text(json.dumps(shareable(reports, scan), indent=2) + "\n", encoding="utf-8")
    print_table(console, report_table(scan, reports))
    for r in reports:
        for s in r.skipped:
            console.print(f"skipped {s.path}: {s.reason}")
    if pair is not None:
        console.print(f"[bold red]WARNING: labels '{pair[0]}' and '{pair[1]}' differ only in case; "
                      "a run refuses them: write them alike, or map both with --label-map[/]")
    if scan.phi:
        tags = ", ".join(f"{k} ({n})" for k, n in scan.phi.items())
        console.print(f"identifying tags found (files): {tags}; a run needs --allow-phi to use them")
    elif scan.kind == "dicom":
        console.print("no identifying tags of the DICOM basic profile found")
    return reports
