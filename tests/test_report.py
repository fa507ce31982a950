"""report.html: built by `medfed run` and `medfed compare` on tiny synthetic data, rebuilt from disk by
`medfed report DIR`, self-contained, every section present; Grad-CAM maps; a headless browser
renders it (skipped when Chromium is absent)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import Counter

import numpy as np
import pytest

from medfed.cli import main
from medfed.report.build import SECTIONS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def tiny(tiny_config) -> list[str]:
    return tiny_config(rounds=2)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny):
    out = tmp_path_factory.mktemp("run")
    assert main(["run", *tiny, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def compare_dir(tmp_path_factory, tiny):
    out = tmp_path_factory.mktemp("compare")
    assert main(["compare", "--algorithms", "fedavg", "--seeds", "2", "--bootstrap", "100", *tiny,
                 "--out", str(out)]) == 0
    return out


def headings(html: str) -> list[str]:
    return re.findall(r"<h2>(.*?)</h2>", html)


def structure(html: str) -> str:
    """The page without its figures' pixels: what must not change when rebuilt from disk."""
    return re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "data:", html)


def assert_self_contained(html: str) -> None:
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html, re.I)
    assert "<script" not in html.lower()
    sources = re.findall(r"""src="([^"]*)\"""", html)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)


@pytest.mark.parametrize("which", ["run_dir", "compare_dir"])
def test_report_is_self_contained_with_every_section(which, request):
    html = (request.getfixturevalue(which) / "report.html").read_text()
    assert headings(html) == list(SECTIONS)
    assert_self_contained(html)


def test_run_saves_what_the_report_needs(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    with np.load(run_dir / "predictions.npz") as f:
        assert list(f["names"]) == ["federated", "pooled", "local:site-a", "local:site-b",
                                    "local:site-c"]
        assert f["probs"].shape == (5, 120, 2) and f["labels"].shape == (120,)
    for site, entry in summary["data_summary"].items():
        assert len(entry["intensity_histogram"]) == 32
        assert sum(entry["intensity_histogram"]) > 0 and entry["n_train"] > 0, site
    assert {"predictions.npz", "gradcam.npz", "report.html"} <= set(summary["files"])
    assert len((run_dir / "rounds.jsonl").read_text().splitlines()) == 2


def test_compare_saves_rounds_predictions_per_seed_and_data_summary(compare_dir):
    result = json.loads((compare_dir / "compare.json").read_text())
    for seed in (0, 1):
        rounds = (compare_dir / "rounds" / f"fedavg-seed{seed}.jsonl").read_text().splitlines()
        assert len(rounds) == 2 and all("val" in json.loads(r) for r in rounds)
        with np.load(compare_dir / "predictions" / f"seed{seed}.npz") as f:
            assert list(f["names"]) == list(result["configurations"])
    assert result["dataset"] == "synthetic" and result["task"] == "binary"
    assert set(result["data_summary"]) == set(result["sites"])
    html = (compare_dir / "report.html").read_text()
    assert "Cross-site AUC matrix" in html and "t-test p" in html


@pytest.mark.parametrize("which", ["run_dir", "compare_dir"])
def test_medfed_report_rebuilds_the_same_page_from_disk(which, request, capsys):
    folder = request.getfixturevalue(which)
    before = (folder / "report.html").read_text()
    (folder / "report.html").unlink()
    assert main(["report", str(folder)]) == 0
    after = (folder / "report.html").read_text()
    assert structure(after) == structure(before)
    assert str(folder / "report.html") in capsys.readouterr().out


def test_a_folder_that_is_no_output_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "neither a `medfed run` nor a `medfed compare`" in err


def test_gradcam_maps_have_the_image_shape_and_are_finite(run_dir):
    with np.load(run_dir / "gradcam.npz") as f:
        images, maps = f["images"], f["maps"]
        assert images.shape == maps.shape and images.ndim == 3 and len(images) == 12  # 3 sites x 4
        assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1 + 1e-6
        assert list(f["groups"]) == ["site-a", "site-b", "site-c"]
        # two positives then two negatives per site
        assert list(f["labels"][:4]) == [1, 1, 0, 0]


def console_errors(page, shot) -> list[str]:
    """Chromium renders page into the PNG shot; the console messages it logged (errors)."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={shot.parent / 'profile'}", "--enable-logging=stderr", "--v=0",
             f"--screenshot={shot}", "--window-size=1400,4000"]
    done = subprocess.run([CHROMIUM, *flags, page.as_uri()], capture_output=True, text=True,
                          timeout=120)
    return [line for line in done.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (make browser installs "
                                             "Debian's chromium when run as root with apt-get)")
def test_a_headless_browser_renders_the_report(compare_dir, tmp_path):
    from PIL import Image

    shot = tmp_path / "report.png"
    assert not console_errors(compare_dir / "report.html", shot)
    broken = tmp_path / "broken.html"  # the check itself sees a console error when there is one
    broken.write_text("<html><body><p>x</p><script>undefined_function();</script></body></html>")
    assert console_errors(broken, tmp_path / "broken.png")
    pixels = Image.open(shot).convert("RGB")
    counts = Counter(pixels.getdata())
    top = counts.most_common(1)[0][1] / (pixels.width * pixels.height)
    assert top < 0.97 and len(counts) > 100, f"a (near-)blank page: {top:.1%} one colour"


@pytest.mark.parametrize("kind", ["rgb", "3d"])
def test_multiclass_and_3d_runs_get_a_report_too(kind, medmnist_npz, tmp_path):
    """Binary-only panels say why they are absent (RetinaMNIST's 5 grades); 3D Grad-CAM keeps the
    middle slice, with the image's shape."""
    path, _ = medmnist_npz(kind, side=12, sizes=(40, 12, 20))
    out = tmp_path / "out"
    assert main(["run", "--dataset", "medmnist", "--data-file", str(path), "--sites", "2",
                 "--partition", "iid", "--rounds", "1", "--device", "cpu", "--no-augment",
                 "--out", str(out)]) == 0
    html = (out / "report.html").read_text()
    assert headings(html) == list(SECTIONS)
    assert_self_contained(html)
    if kind == "rgb":
        assert "needs a binary (disease / no disease) task" in html
    with np.load(out / "gradcam.npz") as f:
        assert f["images"].shape == f["maps"].shape == (4, 12, 12)  # iid: one group, 4 images
        assert np.isfinite(f["maps"]).all()


def test_tensorboard_event_files_hold_the_round_metrics(tiny, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "out"
    assert main(["run", *tiny, "--rounds", "1", "--no-baselines", "--tensorboard",
                 "--out", str(out)]) == 0
    events = EventAccumulator(str(out / "tensorboard" / "fedavg"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"val_auc/site-a", "train_loss/site-c", "traffic/bytes_up"} <= set(tags)
    assert [e.step for e in events.Scalars("val_auc/site-b")] == [1]  # rounds count from 1


def test_tensorboard_without_the_package_is_one_line_before_training(tiny, tmp_path, monkeypatch,
                                                                      capsys):
    monkeypatch.setitem(__import__("sys").modules, "tensorboard", None)  # import fails
    out = tmp_path / "out"
    assert main(["compare", "--algorithms", "fedavg", *tiny, "--tensorboard", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install tensorboard" in err and not out.exists()


def test_compare_explains_the_first_algorithm_with_a_single_model(tiny, tmp_path):
    """The ensemble has no single model: Grad-CAM falls to the next algorithm, and says which."""
    out = tmp_path / "out"
    assert main(["compare", "--algorithms", "ensemble,fedavg", "--seeds", "1", "--bootstrap", "100",
                 *tiny, "--rounds", "1", "--out", str(out)]) == 0
    with np.load(out / "gradcam.npz") as f:
        assert str(f["algorithm"]) == "fedavg"
    assert "Computed with the final fedavg model of seed 0." in (out / "report.html").read_text()


def test_the_compare_results_show_the_site_mean_accuracy_flamby_publishes(compare_dir):
    result = json.loads((compare_dir / "compare.json").read_text())
    html = (compare_dir / "report.html").read_text()
    header = re.search(r"<h2>Results with confidence intervals</h2>.*?</table>", html, re.S).group(0)
    assert "site mean accuracy" in header
    summary = result["configurations"]["fedavg"]["site_mean"]["accuracy"]
    expected = "-" if summary["mean"] is None else f"{summary['mean']:.3f} ± {summary['sd']:.3f}"
    row = re.search(r"<tr><td>fedavg</td>(.*?)</tr>", header, re.S).group(1)
    assert re.findall(r"<td[^>]*>(.*?)</td>", row)[6] == expected != "-"
