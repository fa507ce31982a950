"""The federation file's [deployment] table, the loopback rule of --insecure, and the deployment
commands' one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from medfed.cli import main
from medfed.deploy.settings import DeploymentConfig, load_federation
from medfed.errors import ConfigError
from medfed.transport.grpc_channel import allow_insecure, is_loopback

REPO = Path(__file__).resolve().parents[2]


def test_the_example_federation_loads():
    federation = load_federation(REPO / "examples" / "federation.toml")
    assert federation.config.data.sites == 3 and federation.config.federation.rounds >= 2
    assert federation.task.classes == ("normal", "finding") and federation.task.image_size == 32
    deployment = federation.deployment
    assert deployment.address == "127.0.0.1:50051" and deployment.sites == ("site-a", "site-b", "site-c")


TASK = '[task]\nkind = "binary"\nclasses = ["no", "yes"]\nspatial_dims = 2\nchannels = 1\nimage_size = 16\n'


@pytest.mark.parametrize("text, message", [
    ('[deployment]\nsites = ["a"]\n', "no \\[task\\] table"),
    (TASK + '[data]\ndata_dir = "/x"\n[deployment]\nsites = ["a"]\n',
     "data_dir belongs in each site's own configuration"),
    (TASK + "[deployment]\n", "sites must list"),
    (TASK.replace("channels = 1", "channels = 0") + '[deployment]\nsites = ["a"]\n', "channels must be >= 1"),
    (TASK.replace('"binary"', '"binry"') + '[deployment]\nsites = ["a"]\n', "binry"),
    (TASK.replace('["no", "yes"]', '["no"]') + '[deployment]\nsites = ["a"]\n', "at least 2"),
    (TASK + '[federation]\ntopology = "p2p"\ngossip = "braintorrent"\n[deployment]\n'
     'sites = ["a", "b"]\n', "gossip braintorrent runs in simulation only"),
    (TASK + '[federation]\nkeep_best = true\n[deployment]\nsites = ["a", "b"]\n',
     "keep_best runs in simulation only"),
    (TASK + '[federation]\npatience = 3\n[deployment]\nsites = ["a", "b"]\n',
     "patience and min_rounds run in simulation only"),
    (TASK + '[federation]\nmin_rounds = 3\n[deployment]\nsites = ["a", "b"]\n',
     "patience and min_rounds run in simulation only"),
    (TASK + '[federation]\nalgorithm = "split"\n[model]\nmodel = "resnet18"\n[deployment]\n'
     'sites = ["a", "b"]\n', "ordered list of blocks: cnn or mlp"),
])
def test_a_federation_declares_a_task_and_no_data(tmp_path: Path, text: str, message: str):
    path = tmp_path / "f.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_federation(path)


@pytest.mark.parametrize("table, message", [
    ("deadline = 3", "unknown key in \\[deployment\\]"),
    ("round_deadline = 0", "round_deadline must be > 0"),
    ('address = "nowhere"', "HOST:PORT"),
    ('sites = "site-a"', "sites must be list"),
])
def test_bad_deployment_keys_are_one_clear_error(tmp_path: Path, table: str, message: str):
    path = tmp_path / "f.toml"
    path.write_text(f"{TASK}[deployment]\n{table}\n")
    with pytest.raises(ConfigError, match=message):
        load_federation(path)


def test_insecure_only_on_loopback(capsys: pytest.CaptureFixture):
    assert is_loopback("127.0.0.1:1") and is_loopback("localhost:1") and is_loopback("[::1]:1")
    assert not is_loopback("10.0.0.5:50051") and not is_loopback("fl.example.org:443")
    with pytest.raises(ConfigError, match="refused"):
        allow_insecure("10.0.0.5:50051", "server")
    allow_insecure("127.0.0.1:50051", "server")
    assert "WITHOUT TLS" in capsys.readouterr().err
    assert DeploymentConfig().address.startswith("127.0.0.1:")


def test_deployment_commands_fail_with_one_line_and_status_2(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture):
    assert main(["certs", "issue", "--name", "site-a", "--out", str(tmp_path)]) == 2
    assert main(["server", "--config", str(tmp_path / "missing.toml"), "--certs", str(tmp_path),
                 "--state", str(tmp_path / "state")]) == 2
    assert main(["client", "--server", "10.0.0.5:50051", "--site", "site-a", "--insecure"]) == 2
    assert main(["audit", "verify", str(tmp_path / "missing.jsonl")]) == 2
    with pytest.raises(SystemExit) as usage:
        main(["client", "--server", "127.0.0.1:1", "--site", "site-a"])
    assert usage.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 5 and all(line.startswith("medfed") for line in lines)
    assert "certs init" in lines[0] and "not found" in lines[1] and "refused" in lines[2]


def test_a_deployment_may_be_p2p_or_hybrid(tmp_path: Path):
    """p2p runs through the relay (deploy/relay.py); hybrid's regional and global averages are the
    server's (its strategy is the simulation's Hierarchical, deploy/server.py's _strategy)."""
    from medfed.algorithms.hierarchical import Hierarchical
    from medfed.algorithms.registry import StrategyContext, build_strategy
    from medfed.deploy.server import ServerModel

    path = tmp_path / "f.toml"
    path.write_text(TASK + '[federation]\ntopology = "p2p"\ngossip = "full"\n[deployment]\n'
                    'sites = ["a", "b", "c"]\n')
    assert load_federation(path).config.federation.topology == "p2p"
    path.write_text(TASK + '[federation]\ntopology = "hybrid"\nregions = "n:a,b;s:c"\n'
                    '[deployment]\nsites = ["a", "b", "c"]\n')
    federation = load_federation(path)
    model = ServerModel.build(federation.config, federation.task)
    ctx = StrategyContext(model.initial, model.parameter_keys, model.norm_keys, ["a", "b", "c"],
                          federation.config.federation)
    assert isinstance(build_strategy("fedavg", ctx, federation.config.federation.topology),
                      Hierarchical)
