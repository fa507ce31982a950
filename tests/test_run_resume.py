"""`medfed run` interrupted by Ctrl-C (SIGINT) or killed (SIGKILL) after some rounds, then
`medfed run --resume DIR`: the same summary.json test metrics as a run never interrupted, and the
rounds finished before the interruption readable in DIR/rounds.jsonl all along.

Deliberate breaks that make this fail (tried by hand): the checkpoint's strategy not restored;
the sampling stream not replayed (with --fraction < 1).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medfed.cli import main
from tests.deploy.processes import ENV

ROUNDS = 40  # long enough that the signal lands mid-run on a fast, idle machine


# `medfed` with Ctrl-C as in a terminal: a test runner started in the background by a shell ignores
# SIGINT, a child inherits that, and Python then installs no KeyboardInterrupt. (Not preexec_fn:
# Python code between fork and exec in a process with gRPC threads can hang the child.)
WITH_CTRL_C = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
               "from medfed.cli import main; sys.exit(main(sys.argv[1:]))")


def rounds_done(out: Path) -> int:
    path = out / "rounds.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def interrupted_run(args: list[str], out: Path, sig: signal.Signals) -> subprocess.CompletedProcess:
    proc = subprocess.Popen([sys.executable, "-c", WITH_CTRL_C, "run", *args, "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.monotonic() + 120
    while rounds_done(out) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def uninterrupted(tiny_config, tmp_path_factory) -> tuple[list[str], dict]:
    """(the run's arguments, the summary of that run never interrupted): one run for both signals."""
    # 2 of 3 sites a round; the operating rule is not in config.toml but must survive the resume too
    args = [*tiny_config(ROUNDS), "--no-baselines", "--fraction", "0.5", "--target-sensitivity", "0.8"]
    out = tmp_path_factory.mktemp("whole")
    assert main(["run", *args, "--out", str(out)]) == 0
    whole = json.loads((out / "summary.json").read_text())
    assert 0 < whole["wall_seconds"] <= whole["total_seconds"] < 600  # the training's own time
    return args, whole


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "killed"])
def test_an_interrupted_run_resumed_gives_the_uninterrupted_test_metrics(
        uninterrupted, tmp_path: Path, sig: signal.Signals):
    args, whole = uninterrupted
    out = tmp_path / "stopped"
    done = interrupted_run(args, out, sig)
    assert done.returncode != 0 and rounds_done(out) >= 3 and not (out / "summary.json").exists()
    if sig is signal.SIGINT:
        assert done.returncode == 130 and f"medfed run --resume {out}" in done.stderr
    assert main(["run", "--resume", str(out)]) == 0
    resumed = json.loads((out / "summary.json").read_text())
    assert resumed["test"] == whole["test"]
    assert resumed["operating_point"] == whole["operating_point"]
    assert [r["round"] for r in map(json.loads, (out / "rounds.jsonl").read_text().splitlines())] \
        == list(range(1, ROUNDS + 1))


def test_resume_takes_no_other_flags_and_needs_a_run_folder(tmp_path: Path, capsys):
    for flags in (["--rounds", "3"], ["--target-sensitivity", "0.9"]):
        assert main(["run", "--resume", str(tmp_path), *flags]) == 2
        assert "give no --config, --out or other flags" in capsys.readouterr().err
    assert main(["run", "--resume", str(tmp_path)]) == 2
    assert "not a `medfed run` folder" in capsys.readouterr().err


def test_an_interrupted_compare_resumed_reuses_finished_seeds_and_gives_the_same_table(
        tiny_config, tmp_path: Path):
    args = ["compare", *tiny_config(2), "--algorithms", "fedavg", "--seeds", "2",
            "--bootstrap", "100"]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    whole = json.loads((tmp_path / "whole" / "compare.json").read_text())

    out = tmp_path / "stopped"
    proc = subprocess.Popen([sys.executable, "-m", "medfed", *args, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    deadline = time.monotonic() + 180
    while not (out / "seeds" / "seed0.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert (out / "seeds" / "seed0.json").exists() and not (out / "compare.json").exists()
    first = (out / "seeds" / "seed0.json").stat().st_mtime
    assert main(["compare", "--resume", str(out)]) == 0
    assert (out / "seeds" / "seed0.json").stat().st_mtime == first  # read back, not trained again
    resumed = json.loads((out / "compare.json").read_text())
    assert without_timings(resumed["configurations"]) == without_timings(whole["configurations"])


def without_timings(value):
    """The table without wall-clock measurements, which differ between any two runs."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items()
                if not k.endswith(("_seconds", "seconds"))}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value
