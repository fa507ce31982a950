"""The Ray backend (transport/ray_pool.py, ray_transport.py, ray_worker.py): the same seed gives
the in-process backend's summary on a local Ray and on a two-node Ray cluster on this machine,
and rounds.jsonl says where each site trained.

Hand mutations, each turned a test red (the fast ones on the driver and worker are in
test_ray_worker.py):
- the DP-SGD budgets not collected from the workers (collect_privacy skipped): the privacy block
  of the Ray run differs from the in-process one.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from medfed.config import RunConfig
from medfed.config_execution import ExecutionConfig
from medfed.config_file import with_overrides
from medfed.errors import ConfigError
from medfed.transport.ray_pool import check_supported, import_ray, worker_device, worker_limit
from tests.test_cli import assert_one_line_error, run_cli

REPO = Path(__file__).resolve().parents[2]
RAY = Path(sys.executable).parent / "ray"
RUN_SECONDS = 180  # a bound, not a target: the machine is shared
TOML = """\
seed = 5
device = "cpu"
baselines = false
[data]
sites = 3
synthetic_samples = 150
synthetic_test = 60
image_size = 16
augment = false
[federation]
rounds = 2
"""

needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None,
    reason="Ray is not installed (pip install 'medfed[ray]'): the Ray backend cannot run")


def environment(**extra: str) -> dict[str, str]:
    """This checkout first on the path (for the driver and every Ray worker), one thread each."""
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "RAY_USAGE_STATS_ENABLED": "0", **extra}


def medfed_run(folder: Path, *flags: str, env: dict[str, str] | None = None) -> dict:
    """`medfed run` in its own process (as a user runs it); its summary.json."""
    config = folder.parent / f"{folder.name}.toml"
    config.write_text(TOML)
    done = subprocess.run([sys.executable, "-m", "medfed", "run", "--config", str(config),
                           "--out", str(folder), *flags], env=env or environment(),
                          capture_output=True, text=True, timeout=RUN_SECONDS, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((folder / "summary.json").read_text())


def placements(folder: Path) -> list[dict[str, dict[str, str]]]:
    return [json.loads(line)["placement"]
            for line in (folder / "rounds.jsonl").read_text().splitlines()]


def assert_same_result(ray_summary: dict, reference: dict) -> None:
    assert ray_summary["test"] == reference["test"]
    assert ray_summary["sites"] == reference["sites"]
    assert (ray_summary["bytes_up"], ray_summary["bytes_down"]) == (
        reference["bytes_up"], reference["bytes_down"])


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The in-process backend's summary for the test configuration."""
    return medfed_run(tmp_path_factory.mktemp("inprocess") / "run")


@needs_ray
def test_local_ray_gives_the_in_process_result(tmp_path, reference):
    summary = medfed_run(tmp_path / "ray", "--backend", "ray", "--max-workers", "2")
    assert_same_result(summary, reference)
    for placed in placements(tmp_path / "ray"):
        assert set(placed) == {"site-a", "site-b", "site-c"}
        # sticky: site k on worker k mod 2, the same worker every round
        assert [p["worker"] for p in placed.values()] == ["0", "1", "0"]


@needs_ray
def test_site_state_and_privacy_accounts_live_in_the_workers(tmp_path):
    """DP-SGD (its accountant and noise stream per site), an attacker and compression's codes:
    site-side wrappers built in the workers give the in-process summary, privacy block too."""
    flags = ("--algorithm", "fednova", "--dp-sgd", "--noise-multiplier", "1.0",
             "--attack", "sign-flip", "--compress", "q8")
    inprocess = medfed_run(tmp_path / "inprocess", *flags)
    on_ray = medfed_run(tmp_path / "ray", *flags, "--backend", "ray")
    assert_same_result(on_ray, inprocess)
    assert on_ray["privacy"] == inprocess["privacy"]
    assert set(on_ray["privacy"]["epsilon"]) == {"site-b", "site-c"}  # site-a is the attacker


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(log: Path, process: subprocess.Popen, seconds: float) -> None:
    """Until `ray start --block` says its node runs (or fails, or the time is up)."""
    deadline = time.monotonic() + seconds
    while "block forever" not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"ray start did not come up:\n{log.read_text()[-2000:]}")
        time.sleep(0.5)


@contextmanager
def two_node_cluster(env: dict[str, str]) -> Iterator[str]:
    """A Ray head and a second node on this machine, 1 CPU each; stopped after (only the
    processes started here: each `ray start --block` leads its own process group)."""
    port, temp = free_port(), tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: socket paths
    node = ["--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--disable-usage-stats",
            "--dashboard-agent-listen-port", "0", "--block"]
    commands = [[str(RAY), "start", "--head", "--port", str(port), "--temp-dir", temp,
                 "--include-dashboard", "false", *node],
                [str(RAY), "start", "--address", f"127.0.0.1:{port}", *node]]
    started: list[subprocess.Popen] = []
    try:
        for k, command in enumerate(commands):
            log = Path(temp) / f"node{k}.log"
            with log.open("w") as out:
                started.append(subprocess.Popen(command, env=env, stdout=out,
                                                stderr=subprocess.STDOUT, start_new_session=True))
            wait_for(log, started[-1], 90)
        yield f"127.0.0.1:{port}"
    finally:
        stop(started)
        shutil.rmtree(temp, ignore_errors=True)


def stop(started: list[subprocess.Popen]) -> None:
    for process in reversed(started):
        os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for process in started:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for process in started:  # what did not stop on SIGTERM (Ray's GCS can take its time)
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=10)


@needs_ray
def test_a_two_node_cluster_gives_the_in_process_result(tmp_path, reference):
    env = environment(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    with two_node_cluster(env) as address:
        summary = medfed_run(tmp_path / "cluster", "--backend", "ray", "--ray-address", address,
                             env=env)
    assert_same_result(summary, reference)
    nodes = {p["node"] for placed in placements(tmp_path / "cluster") for p in placed.values()}
    assert len(nodes) == 2, "each node holds one 1-CPU worker: the sites are spread on both"


def test_without_ray_the_cli_says_how_to_install_it(monkeypatch, capsys, tiny_config):
    monkeypatch.setitem(sys.modules, "ray", None)  # importing it now raises ImportError
    code, _, err = run_cli(["run", *tiny_config(1), "--backend", "ray"], capsys)
    assert_one_line_error(code, err, "pip install 'medfed[ray]'")
    with pytest.raises(ConfigError, match=r"pip install 'medfed\[ray\]'"):
        import_ray()


@pytest.mark.parametrize(("resources", "settings", "workers"), [
    ({"CPU": 8.0}, {}, 8),
    ({"CPU": 8.0}, {"cpus_per_site": 2.0}, 4),
    ({"CPU": 8.0}, {"max_workers": 3}, 3),
    ({"CPU": 2.0}, {"max_workers": 5}, 2),  # never more workers than the cluster can hold
    ({"CPU": 8.0, "GPU": 1.0}, {"gpus_per_site": 0.5}, 2),
])
def test_worker_limit_follows_the_cluster_and_the_settings(resources, settings, workers):
    assert worker_limit(resources, ExecutionConfig(backend="ray", **settings)) == workers


@pytest.mark.parametrize(("resources", "settings", "message"), [
    ({"CPU": 8.0}, {"gpus_per_site": 1.0}, "has 0 GPUs"),
    ({"CPU": 1.0}, {"cpus_per_site": 2.0}, "has 1 CPUs"),
])
def test_a_cluster_too_small_for_one_worker_is_refused(resources, settings, message):
    with pytest.raises(ConfigError, match=message):
        worker_limit(resources, ExecutionConfig(backend="ray", **settings))


def test_protocols_that_call_every_site_from_the_server_are_refused_on_ray():
    for switch in ("secure_aggregation", "homomorphic"):
        config = with_overrides(RunConfig(), {switch: True, "backend": "ray"})
        with pytest.raises(ConfigError, match=f"privacy {switch} does not run on backend"):
            check_supported(config)


def test_a_worker_takes_a_gpu_only_with_a_share_of_one():
    with_gpu, without = (ExecutionConfig(backend="ray", gpus_per_site=g) for g in (0.5, 0.0))
    assert worker_device("auto", with_gpu) == "auto"  # Ray shows the worker its GPU: CUDA
    assert worker_device("auto", without) == "cpu"
    with pytest.raises(ConfigError, match="--device cuda on backend = \"ray\" needs --gpus-per-site"):
        worker_device("cuda", without)


@needs_ray
def test_a_cluster_address_where_nothing_listens_is_refused_at_once(capsys, tiny_config):
    """Checked with a plain connection first: Ray itself would retry for minutes."""
    address = f"127.0.0.1:{free_port()}"  # free: nothing listens there
    code, _, err = run_cli(["run", *tiny_config(1), "--backend", "ray", "--ray-address", address],
                           capsys)
    assert code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]  # after the run's opening lines
    assert last.startswith("medfed: error: cannot join the Ray cluster at " + address)
    assert "Connection refused" in last and "ray start --head" in last
