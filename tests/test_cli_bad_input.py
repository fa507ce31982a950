"""Bad input gets one line on stderr and exit status 2, never a traceback (issue 19's unclean
cases): wrong deployment flags, broken certificate and key files, a corrupt summary.json, a
MedMNIST file whose images and labels differ in count, heart-disease files with unusable or
implausible values (the file and line named), and label names that differ only in case."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medfed.cli import main
from medfed.deploy import certs
from tests.deploy.processes import make_certs

REPO = Path(__file__).resolve().parents[1]
FEDERATION = REPO / "examples" / "federation.toml"
HEART_ROW = "63,1,1,145,233,1,2,150,0,2.3,3,0,6,{num}"
HOSPITALS = ("cleveland", "hungarian", "switzerland", "va")


def server(tmp: Path, *extra: str) -> list[str]:
    return ["server", "--config", str(FEDERATION), "--certs", str(make_certs(tmp / "certs")),
            "--state", str(tmp / "state"), *extra]


def garbage_server_key(tmp: Path) -> list[str]:
    argv = server(tmp)
    (tmp / "certs" / "server.key").write_bytes(b"-----BEGIN PRIVATE KEY-----\nnonsense\n")
    return argv


def another_key_for_the_server(tmp: Path) -> list[str]:
    argv = server(tmp)
    (tmp / "certs" / "server.key").write_bytes((tmp / "certs" / "site-a.key").read_bytes())
    return argv


def corrupt_summary(tmp: Path) -> list[str]:
    (tmp / "run").mkdir()
    (tmp / "run" / "summary.json").write_text('{"mode": "deployment", "rounds": 3, "tes')
    return ["report", str(tmp / "run")]


def summary_of_another_shape(tmp: Path) -> list[str]:
    (tmp / "run").mkdir()
    (tmp / "run" / "summary.json").write_text('{"mode": "deployment", "sites": 7}')
    return ["report", str(tmp / "run")]


def npz_with_fewer_labels(tmp: Path) -> list[str]:
    rng = np.random.default_rng(0)
    arrays = {f"{split}_images": rng.integers(0, 255, (n, 8, 8), dtype=np.uint8)
              for split, n in (("train", 20), ("val", 6), ("test", 6))}
    arrays |= {f"{split}_labels": np.zeros((n, 1), np.uint8)
               for split, n in (("train", 19), ("val", 6), ("test", 6))}
    np.savez(tmp / "pneumoniamnist.npz", **arrays)
    return ["run", "--dataset", "medmnist", "--data-file", str(tmp / "pneumoniamnist.npz"),
            "--out", str(tmp / "out"), "--rounds", "1"]


def heart(va_line: str) -> Callable[[Path], list[str]]:
    """Four hospitals' files, the VA file's second line replaced."""
    def write(tmp: Path) -> list[str]:
        for hospital in HOSPITALS:
            lines = [HEART_ROW.format(num=k % 2) for k in range(12)]
            if hospital == "va":
                lines[1] = va_line
            (tmp / f"processed.{hospital}.data").write_text("\n".join(lines) + "\n")
        return ["run", "--dataset", "heart-disease", "--data-dir", str(tmp), "--model", "logistic",
                "--rounds", "1", "--out", str(tmp / "out")]
    return write


def labels_differing_in_case(tmp: Path) -> list[str]:
    rows = ["file,label"]
    for site in ("site-x", "site-y"):
        (tmp / "images" / site).mkdir(parents=True)
        for k, label in enumerate(("normal", "Opacity", "normal", "opacity")):
            Image.fromarray(np.full((8, 8), 40 * k, np.uint8)).save(tmp / "images" / site / f"{k}.png")
            rows.append(f"{site}/{k}.png,{label}")
    (tmp / "labels.csv").write_text("\n".join(rows) + "\n")
    return ["run", "--dataset", "images", "--data-dir", str(tmp / "images"), "--labels",
            str(tmp / "labels.csv"), "--image-size", "8", "--rounds", "1", "--out", str(tmp / "out")]


def issue_over_an_existing_key(tmp: Path) -> list[str]:
    certs.init_ca(tmp)
    certs.issue(tmp, "site-a")
    return ["certs", "issue", "--name", "site-a", "--out", str(tmp)]


def issue_for_a_bad_host(tmp: Path) -> list[str]:
    certs.init_ca(tmp)
    return ["certs", "issue", "--name", "server", "--out", str(tmp), "--hosts", "bad host!"]


CLIENT = ["client", "--server", "127.0.0.1:50051", "--site", "site-a", "--insecure"]
CASES: dict[str, tuple[Callable[[Path], list[str]], str]] = {
    "--address nonsense": (lambda t: server(t, "--address", "nonsense"), "HOST:PORT"),
    "--address 127.0.0.1:99999": (lambda t: server(t, "--address", "127.0.0.1:99999"), "HOST:PORT"),
    "--address 127.0.0.1:0": (lambda t: server(t, "--address", "127.0.0.1:0"), "1-65535"),
    "client --server :99999": (lambda t: ["client", "--server", "127.0.0.1:99999", "--site",
                                          "site-a", "--certs", str(t)], "HOST:PORT"),
    "a garbage server.key": (garbage_server_key, "server.key is not an unencrypted PEM private key"),
    "server.key of another certificate": (another_key_for_the_server,
                                          "server.key is not the key of"),
    "--max-backoff -1": (lambda t: [*CLIENT, "--max-backoff", "-1"], "--max-backoff must be > 0"),
    "--retry-for -5": (lambda t: [*CLIENT, "--retry-for", "-5"], "--retry-for >= 0"),
    "a corrupt summary.json": (corrupt_summary, "summary.json is not valid JSON"),
    "a summary.json of another shape": (summary_of_another_shape, "lack what a report reads"),
    "a .npz with 20 images and 19 labels": (npz_with_fewer_labels,
                                            "train_images holds 20 images"),
    "certs issue --hosts 'bad host!'": (issue_for_a_bad_host, "'bad host!' is neither"),
    "certs issue over an existing key": (issue_over_an_existing_key, "add --force"),
    "heart: nan": (heart(HEART_ROW.format(num=0).replace("233", "nan")),
                   "processed.va.data:2: chol is 'nan'"),
    "heart: inf": (heart(HEART_ROW.format(num=0).replace("150", "inf")),
                   "processed.va.data:2: thalach is 'inf'"),
    "heart: an empty field": (heart(HEART_ROW.format(num=0).replace(",145,", ",,")),
                              "processed.va.data:2: trestbps is ''"),
    "heart: age -500": (heart("-500" + HEART_ROW.format(num=0)[2:]),
                        "processed.va.data:2: age is -500; heart-disease.names documents 1 to 120"),
    "heart: cholesterol 1e308": (heart(HEART_ROW.format(num=0).replace("233", "1e308")),
                                 "chol is 1e+308; heart-disease.names documents 0 to 1000"),
    "heart: sex 5": (heart(HEART_ROW.format(num=0).replace("63,1,", "63,5,")),
                     "processed.va.data:2: sex is 5; heart-disease.names documents an integer 0 to 1"),
    "heart: num 9": (heart(HEART_ROW.format(num=9)), "processed.va.data:2: num is 9"),
    "labels 'Opacity' and 'opacity'": (labels_differing_in_case,
                                       "labels 'Opacity' and 'opacity' differ only in case"),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_input_is_one_line_and_status_2(tmp_path: Path, capsys: pytest.CaptureFixture,
                                            case: str):
    make, fragment = CASES[case]
    argv = make(tmp_path)
    capsys.readouterr()
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse's own errors
        status = exc.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("medfed") and fragment in lines[0], lines[0]


def test_certs_issue_replaces_a_key_with_force(tmp_path: Path, capsys: pytest.CaptureFixture):
    issue_over_an_existing_key(tmp_path)
    before = (tmp_path / "site-a.key").read_bytes()
    assert main(["certs", "issue", "--name", "site-a", "--out", str(tmp_path), "--force"]) == 0
    assert (tmp_path / "site-a.key").read_bytes() != before
    assert json.dumps(capsys.readouterr().err) == '""'


def test_data_check_warns_loudly_about_labels_differing_in_case(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture):
    argv = labels_differing_in_case(tmp_path)
    check = ["data", "check", *argv[1:argv.index("--rounds")]]
    assert main(check) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "WARNING: labels 'Opacity' and 'opacity' differ only in case" in out
