"""End to end on 127.0.0.1 with mutual TLS: three hospitals, each with its own DICOM folder given
only to its own client; the server's federation file names no data and its state folder holds none.

- The run completes, metrics come from the sites (their own test splits, combined at the server),
  each site trains its local-only baseline and keeps its own report.html with the paired result.
- The same sites in simulation (`--partition natural` over the three folders) train the same global
  model, and the pooled test metrics agree (threshold metrics exactly, AUC up to histogram bins).
- A site whose data does not fit the task (3-channel images; other class names) is refused at
  connect time with one line on both sides, and the refusal is audited.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from medfed.cli import main
from medfed.experiment import prepare, train
from tests.deploy.processes import (
    Processes,
    events,
    free_port,
    make_certs,
    simulation_config,
    wait_until,
    write_federation,
    write_site_config,
)
from tests.dicom_files import write_dicom
from tests.test_report import CHROMIUM, console_errors

SITES = ("site-a", "site-b", "site-c")
TASK = """
[task]
kind = "binary"
classes = ["normal", "opacity"]
spatial_dims = 2
channels = 1
image_size = 24
"""
# Each hospital's scanner stores intensities its own way; site-c sees far more disease.
SCANNERS = {"site-a": (1.0, 0.0, 0.3), "site-b": (2.0, -1024.0, 0.4), "site-c": (0.5, 100.0, 0.7)}


def write_hospital(folder: Path, site: str, n: int, rng: np.random.Generator) -> None:
    """n DICOM images of 24x24 (a bright blob on the right means opacity) and labels.csv."""
    slope, intercept, prevalence = SCANNERS[site]
    rows = ["file,label"]
    for i in range(n):
        sick = rng.random() < prevalence
        image = rng.normal(0.3, 0.08, (24, 24))
        if sick:
            image[8:16, 12:20] += rng.uniform(0.3, 0.6)
        stored = (np.clip(image, 0, 1) * 1000 - intercept) / slope
        write_dicom(folder / f"img{i:03d}.dcm", stored.astype(np.uint16), slope=slope,
                    intercept=intercept)
        rows.append(f"img{i:03d}.dcm,{'opacity' if sick else 'normal'}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")


def dicom_site(root: Path, site: str) -> dict:
    return {"dataset": "dicom", "data_dir": str(root / site), "labels": str(root / site / "labels.csv"),
            "image_size": 24}


@pytest.fixture(scope="module")
def hospitals(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hospitals")
    rng = np.random.default_rng(7)
    for site in SITES:
        write_hospital(root / site, site, 60, rng)
    # One CSV over the three folders, for the same sites in one simulation.
    lines = ["file,label"] + [f"{site}/{line}" for site in SITES
                              for line in (root / site / "labels.csv").read_text().split()[1:]]
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


def start(procs: Processes, tmp_path: Path, federation: Path, certs: Path, sites: dict[str, Path]
          ) -> Path:
    state = tmp_path / "server-state"
    procs.start("server", "server", "--config", str(federation), "--certs", str(certs),
                "--state", str(state))
    port = int(federation.read_text().split("127.0.0.1:")[1].split('"')[0])
    for site, config in sites.items():
        procs.client(site, port, certs, "--site-config", str(config))
    return state


def test_three_hospitals_with_their_own_dicom_folders_and_a_server_that_holds_no_data(
        tmp_path: Path, procs: Processes, hospitals: Path):
    port = free_port()
    certs = make_certs(tmp_path / "certs")
    federation = write_federation(tmp_path / "federation.toml", port, rounds=2, epochs=1, batch=8,
                                  task=TASK)
    federation.write_text(federation.read_text().replace("baselines = false", "baselines = true"))
    assert "data_dir" not in federation.read_text() and "dicom" not in federation.read_text()
    configs = {s: write_site_config(tmp_path / "sites" / f"{s}.toml", s, dicom_site(hospitals, s))
               for s in SITES}
    state = start(procs, tmp_path, federation, certs, configs)
    assert procs.wait("server", 240) == 0, procs.log_text()
    for site in SITES:
        assert procs.wait(site, 30) == 0, procs.log_text()

    # The server's folder holds no image, label or path of any site.
    held = [p.name for p in state.rglob("*") if p.is_file()]
    assert not [n for n in held if n.endswith((".dcm", ".csv", ".npz"))]
    assert str(hospitals) not in (state / "summary.json").read_text()
    summary = json.loads((state / "summary.json").read_text())
    assert summary["mode"] == "deployment" and set(summary["sites"]) == set(SITES)
    assert summary["evaluation"]["failed"] == {} and summary["n_test"] == sum(
        s["test"]["n"] for s in summary["sites"].values())
    low, high = summary["test"]["auc_ci"]
    assert low <= summary["test"]["auc"] <= high
    assert {"threshold", "sensitivity", "specificity"} <= summary["operating_point"].keys()
    assert summary["operating_point"]["chosen_on"] == "the sites' pooled validation scores"
    assert set(summary["baselines"]["local"]) == set(SITES)
    # The verdict: from each hospital's own paired test; best site and pooled said unmeasurable.
    verdict = summary["verdict"]
    assert set(verdict["vs_each_site"]) <= set(SITES) and verdict["vs_pooled"] is None
    assert verdict["text"].startswith("FedAvg vs each hospital's own model") or \
        verdict["text"].startswith("FedAvg: not compared with each hospital's own model")
    assert "not measurable in a deployment" in verdict["text"]
    assert f"verdict: {verdict['text']}" in procs.log_text()

    # Each hospital keeps its own page and record: federated vs its local-only model.
    for site in SITES:
        site_state = tmp_path / "sites" / f"state-{site}"
        own = json.loads((site_state / "site-summary.json").read_text())
        assert own["local"]["paired"] == summary["baselines"]["local"][site]["paired"]
        page = (site_state / "report.html").read_text()
        assert "Did joining the federation help this hospital?" in page

    # The coordinator's page: per-hospital table and paired results, nothing that needs images.
    assert main(["report", str(state)]) == 0
    html = (state / "report.html").read_text()
    assert "medfed deployment report" in html and "Did joining help each hospital?" in html
    assert html.split("<h2>")[1].startswith('Overview</h2><p class="verdict">')
    assert "tabular" not in html and "beside its baselines" not in html
    for site in SITES:
        assert f"<td>{site}</td>" in html
    if CHROMIUM is not None:  # rendered headless, without a console error
        assert not console_errors(state / "report.html", tmp_path / "report.png")
        assert (tmp_path / "report.png").stat().st_size > 10_000

    # The same three folders as natural sites of one simulation: the same global model.
    data = {"dataset": "dicom", "data_dir": str(hospitals), "labels": str(hospitals / "labels.csv"),
            "image_size": 24, "partition": "natural"}
    setup = prepare(simulation_config(federation, data))
    assert setup.federation.site_ids == list(SITES)
    simulated = train(setup, "fedavg", setup.federation.sites, "fedavg")
    deployed = load_file(state / "model.safetensors")
    for key, value in simulated.strategy.global_state.items():
        torch.testing.assert_close(deployed[key], value, rtol=1e-4, atol=1e-5)
    assert summary["n_test"] == len(setup.federation.source.test)
    assert summary["test"]["accuracy"] == pytest.approx(simulated.test["accuracy"])
    # The AUC from the sites' histograms: the raw pooled AUC up to ties within a bin, the bound
    # the summary states (a model this briefly trained scores many cases alike).
    bound = summary["evaluation"]["auc_error_bound"]
    assert abs(summary["test"]["auc"] - simulated.test["auc"]) <= bound + 1e-12


def test_a_site_whose_data_does_not_fit_the_task_is_refused_at_connect_time(
        tmp_path: Path, procs: Processes, hospitals: Path):
    port = free_port()
    sites = ("site-a", "site-rgb", "site-names")
    certs = make_certs(tmp_path / "certs", sites=sites)
    federation = write_federation(tmp_path / "federation.toml", port, task=TASK, sites=sites,
                                  min_sites_to_start=3)
    rgb = tmp_path / "rgb"
    rgb.mkdir()
    rows = ["file,label"]
    for i in range(12):
        Image.fromarray(np.full((24, 24, 3), 40 * (i % 5), np.uint8)).save(rgb / f"p{i}.png")
        rows.append(f"p{i}.png,{'opacity' if i % 2 else 'normal'}")
    (rgb / "labels.csv").write_text("\n".join(rows) + "\n")
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    for f in (hospitals / "site-b").glob("*.dcm"):
        (renamed / f.name).write_bytes(f.read_bytes())
    (renamed / "labels.csv").write_text((hospitals / "site-b" / "labels.csv").read_text()
                                        .replace("opacity", "pneumonia"))
    configs = {
        "site-rgb": write_site_config(tmp_path / "sites" / "rgb.toml", "site-rgb", {
            "dataset": "images", "data_dir": str(rgb), "labels": str(rgb / "labels.csv")}),
        "site-names": write_site_config(tmp_path / "sites" / "names.toml", "site-names", {
            "dataset": "dicom", "data_dir": str(renamed), "labels": str(renamed / "labels.csv")}),
    }
    state = start(procs, tmp_path, federation, certs, configs)
    assert procs.wait("site-rgb", 60) == 2, procs.log_text()
    assert procs.wait("site-names", 60) == 2, procs.log_text()
    logs = {s: (procs.logs / f"{s}.log").read_text() for s in configs}
    assert "channels 3, expected 1" in logs["site-rgb"] and "Traceback" not in logs["site-rgb"]
    assert "classes normal, pneumonia, expected normal, opacity" in logs["site-names"]
    audit = state / "audit.jsonl"
    wait_until(lambda: len(events(audit, "site_refused")) >= 2, 10, "refusals audited", procs)
    reasons = {e["site"]: e["reason"] for e in events(audit, "site_refused")}
    assert "channels 3, expected 1" in reasons["site-rgb"]
    assert "classes" in reasons["site-names"]


def test_histogram_harmonization_takes_its_reference_through_the_federation(
        tmp_path: Path, procs: Processes, hospitals: Path):
    """Each site sends its intensity quantiles (an aggregate), the server combines them into the
    reference and sends it back with the model: the same global model as the simulation, whose
    harmonization reads every site's pool in one process."""
    port = free_port()
    certs = make_certs(tmp_path / "certs")
    task = TASK.replace("image_size = 24", 'image_size = 24\nharmonize = "histogram"')
    federation = write_federation(tmp_path / "federation.toml", port, rounds=1, batch=8, task=task)
    configs = {s: write_site_config(tmp_path / "sites" / f"{s}.toml", s, dicom_site(hospitals, s))
               for s in SITES}
    state = start(procs, tmp_path, federation, certs, configs)
    assert procs.wait("server", 180) == 0, procs.log_text()
    assert len(events(state / "audit.jsonl", "harmonization_reference")) == 1
    data = {"dataset": "dicom", "data_dir": str(hospitals), "labels": str(hospitals / "labels.csv"),
            "image_size": 24, "partition": "natural", "harmonize": "histogram"}
    setup = prepare(simulation_config(federation, data))
    simulated = train(setup, "fedavg", setup.federation.sites, "fedavg")
    deployed = load_file(state / "model.safetensors")
    for key, value in simulated.strategy.global_state.items():
        torch.testing.assert_close(deployed[key], value, rtol=1e-4, atol=1e-5)
    meta = json.loads(safe_open_metadata(state / "model.safetensors")["medfed"])
    assert len(meta["harmonize_reference"]) == 101  # the reference travels with the model
    assert meta["task"]["harmonize"] == "histogram"


def safe_open_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.metadata()
