"""The checks that tie split learning's key (`cut`) to the rest of the configuration: which models
can be cut, where, and what split learning does not combine with. Torch-free, so a bad flag is
refused before torch and MONAI load."""

from __future__ import annotations

from typing import TYPE_CHECKING

from medfed.errors import ConfigError

if TYPE_CHECKING:
    from medfed.config import RunConfig

SPLIT = "split"
DEFAULT_CUT = "2,1"
# The models that are an ordered list of blocks (models/blocks.py), and how many blocks each has:
# tests/models/test_blocks.py checks these counts against the built networks.
SPLIT_BLOCKS = {"cnn": 10, "mlp": 7}


def parse_cut(text: str) -> tuple[int, int]:
    """"H,T" -> (H, T): the site keeps the first H and the last T blocks."""
    parts = text.split(",")
    try:
        head, tail = (int(p) for p in parts) if len(parts) == 2 else (0, 0)
    except ValueError:
        head, tail = 0, 0
    if head < 1 or tail < 1:
        raise ConfigError(f"--cut takes two positive integers H,T (the first H and last T blocks "
                          f"stay at the site), e.g. {DEFAULT_CUT}; got '{text}'")
    return head, tail


def check_split(config: RunConfig) -> None:
    fed = config.federation
    if fed.algorithm != SPLIT:
        if fed.cut != DEFAULT_CUT:
            raise ConfigError(f"cut applies to --algorithm split, not {fed.algorithm}; add "
                              "--algorithm split or leave --cut out")
        return
    head, tail = parse_cut(fed.cut)
    model = config.model.model
    if model is not None:  # None: chosen from the data, then checked again (defaults.py)
        if model not in SPLIT_BLOCKS:
            raise ConfigError(f"--algorithm split needs a model made of an ordered list of blocks: "
                              f"{' or '.join(SPLIT_BLOCKS)}, not {model}")
        blocks = SPLIT_BLOCKS[model]
        if head + tail >= blocks:
            raise ConfigError(f"--cut {fed.cut} leaves no block for the server: {model} has "
                              f"{blocks} blocks, so H + T must be at most {blocks - 1}")
    _refuse_combinations(config)


def _refuse_combinations(config: RunConfig) -> None:
    """What split learning is not built to combine with, refused rather than silently ignored."""
    fed = config.federation
    clashes = {
        "topology": (fed.topology, "server"), "aggregator": (fed.aggregator, "mean"),
        "compress": (fed.compress, "none"), "attack": (config.adversary.attack, "none"),
        "backend": (config.execution.backend, "inprocess"),
        "privacy": ("on" if config.privacy.enabled else "off", "off"),
    }
    for key, (value, needed) in clashes.items():
        if value != needed:
            raise ConfigError(f"--algorithm split does not combine with {key} {value}: it runs in "
                              f"this process with {key} {needed}")
