"""The baselines in a second process beside the federation (medfed/baselines_beside.py): when the
arms split the threads, that the split changes nothing computed, that the child's progress reaches
the parent's bars, and that a child that dies or is no longer wanted does not hang or outlive the
run."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from rich.console import Console

from medfed.baselines_beside import BaselinesBeside, Split, split_for, torch_threads
from medfed.cli import main
from medfed.config import RunConfig
from medfed.config_execution import ExecutionConfig
from medfed.errors import MedfedError
from medfed.progress import RichRoundProgress

CPU = torch.device("cpu")


def _config(**execution) -> RunConfig:
    return replace(RunConfig(), execution=ExecutionConfig(**execution))


@pytest.mark.parametrize("threads, split", [(1, None), (2, Split(1, 1)), (5, Split(3, 2)),
                                            (8, Split(4, 4))])
def test_the_run_threads_are_shared_out_not_added_to(threads, split):
    assert split_for(_config(), CPU, threads) == split


@pytest.mark.parametrize("why, config, device", [
    ("no baselines", replace(RunConfig(), baselines=False), CPU),
    ("switched off", _config(baselines_beside=False), CPU),
    ("a GPU the two would share", _config(), torch.device("cuda")),
    ("a multi-node pooled baseline takes the cores", _config(pooled_workers=2), CPU),
])
def test_the_arms_run_one_after_another_where_beside_would_not_pay(why, config, device):
    assert split_for(config, device, 4) is None, why


def test_an_honest_ensemble_reuses_its_models_instead_of_training_a_local_baseline():
    config = RunConfig()
    ensemble = replace(config, federation=replace(config.federation, algorithm="ensemble",
                                                  keep_best=False, patience=0))
    assert split_for(ensemble, CPU, 2) is None
    assert split_for(config, CPU, 2) is not None


def _summary(out) -> dict:
    return json.loads((out / "summary.json").read_text())


def _computed(summary: dict) -> dict:
    """What the run computed: everything but clocks."""
    pooled = {k: v for k, v in summary["baselines"]["pooled"].items() if k != "wall_seconds"}
    return {"test": summary["test"], "verdict": summary["verdict"],
            "operating_point": summary["operating_point"], "pooled": pooled,
            "local": summary["baselines"]["local"]}


def test_beside_gives_the_same_run_as_one_after_another_at_the_same_threads(tiny_config, tmp_path,
                                                                           capsys):
    """Two torch threads beside: one for the federation here, one for the baselines' process.
    One after another with one thread: every figure the same."""
    beside, after = tmp_path / "beside", tmp_path / "after"
    with torch_threads(2):
        assert main(["run", *tiny_config(3), "--out", str(beside)]) == 0
    assert "baselines train beside the federation: 1 + 1 torch threads" in capsys.readouterr().err
    assert torch.get_num_threads() == 1  # the federation's one thread was given back
    assert main(["run", *tiny_config(3), "--no-baselines-beside", "--out", str(after)]) == 0
    assert _summary(beside)["baselines_beside"] == {"federation": 1, "baselines": 1}
    assert "baselines_beside" not in _summary(after)
    assert _computed(_summary(beside)) == _computed(_summary(after))


def _tiny_run_config(tiny_config) -> RunConfig:
    from medfed.cli import build_parser, run_config

    return run_config(build_parser().parse_args(["run", *tiny_config(2)]))


def test_the_childs_progress_is_drawn_on_the_parents_bars(tiny_config):
    config = _tiny_run_config(tiny_config)
    with RichRoundProgress(Console(quiet=True)) as progress:
        with BaselinesBeside(config, 1, progress) as beside:
            baselines = beside.result()
        tasks = {t.description: t for t in progress.progress.tasks}
    assert set(tasks) == {"local-only", "pooled"}
    assert all(t.completed == 2 and t.finished_time is not None for t in tasks.values())
    assert set(baselines.local) == set(baselines.summary["local"]) and baselines.local


def test_a_child_that_dies_is_reported_in_one_line_not_waited_for(tiny_config):
    config = _tiny_run_config(tiny_config)
    with RichRoundProgress(Console(quiet=True)) as progress:
        with BaselinesBeside(config, 1, progress) as beside:
            beside._process.kill()
            with pytest.raises(MedfedError, match="baselines' process failed: it ended without a "
                                                  "result .*--no-baselines-beside"):
                beside.result()


def test_a_run_that_ends_early_stops_the_child(tiny_config):
    """Ctrl-C or an error in the federation: the baselines are no longer wanted."""
    config = _tiny_run_config(tiny_config)
    with RichRoundProgress(Console(quiet=True)) as progress:
        with pytest.raises(KeyboardInterrupt):
            with BaselinesBeside(config, 1, progress) as beside:
                child = beside._process
                raise KeyboardInterrupt
    assert not child.is_alive()
