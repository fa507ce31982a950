"""Algorithm names -> strategy builders."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from medfed.algorithms.aggregators import AggregatorFactory, RobustSettings, build_aggregator
from medfed.algorithms.ensemble import LocalEnsemble
from medfed.algorithms.fedavg import FedAvg
from medfed.algorithms.fedbn import FedBN
from medfed.algorithms.fednova import FedNova
from medfed.algorithms.scaffold import Scaffold
from medfed.algorithms.sequential import SequentialTransfer
from medfed.algorithms.server_optimizer import AdaptiveServerOptimizer, MomentumServerOptimizer
from medfed.algorithms.split import build_split
from medfed.algorithms.strategy import Strategy
from medfed.algorithms.topologies import build_topology
from medfed.algorithms.topology_spec import SERVER
from medfed.config import FederationConfig, TrainingConfig

ADAPTIVE_SERVER_LR = 0.01  # FedAdam / FedYogi's eta when server_lr is unset (Reddi et al. 2021)
from medfed.registry import Registry
from medfed.types import SiteId, StateDict


@dataclass(frozen=True)
class StrategyContext:
    """What a strategy may know: the initial model, which keys are what, and the sites."""

    initial: StateDict
    parameter_keys: frozenset[str]
    norm_keys: frozenset[str]
    sites: Sequence[SiteId]
    config: FederationConfig
    training: TrainingConfig = TrainingConfig()
    aggregator_override: AggregatorFactory | None = None  # e.g. DP-FedAvg's (privacy/client_dp.py)
    seed: int = 0  # the run's seed (a p2p run's random k-regular graph is drawn from it)
    # Split learning: builds the server's own copy of the network, and one sample's shape
    # (algorithms/split.py).
    network: Callable[[], nn.Module] | None = None
    input_shape: tuple[int, ...] = ()

    def aggregator(self) -> AggregatorFactory:
        if self.aggregator_override is not None:
            return self.aggregator_override
        c = self.config
        return build_aggregator(c.aggregator, RobustSettings(c.byzantine, c.krum_keep, c.norm_bound))

    def sgd_momentum(self) -> float:
        """The heavy-ball momentum of the sites' optimizer (0 for Adam: see fednova.py)."""
        return self.training.momentum if self.training.optimizer == "sgd" else 0.0


def _fedopt(variant: str) -> Callable[[StrategyContext], Strategy]:
    def build(ctx: StrategyContext) -> Strategy:
        c = ctx.config
        lr = ADAPTIVE_SERVER_LR if c.server_lr is None else c.server_lr
        optimizer = AdaptiveServerOptimizer(ctx.parameter_keys, variant, lr, c.beta1, c.beta2,
                                            c.tau)
        return FedAvg(ctx.initial, name=f"fed{variant}", server_optimizer=optimizer,
                      aggregator=ctx.aggregator())
    return build


def _fedavgm(ctx: StrategyContext) -> Strategy:
    c = ctx.config
    optimizer = MomentumServerOptimizer(ctx.parameter_keys, 1.0 if c.server_lr is None else c.server_lr,
                                        c.server_momentum)
    return FedAvg(ctx.initial, name="fedavgm", server_optimizer=optimizer,
                  aggregator=ctx.aggregator())


ALGORITHMS: Registry[Callable[[StrategyContext], Strategy]] = Registry("algorithm", {
    "fedavg": lambda ctx: FedAvg(ctx.initial, aggregator=ctx.aggregator()),
    "fedprox": lambda ctx: FedAvg(ctx.initial, name="fedprox", proximal_mu=ctx.config.mu,
                                  aggregator=ctx.aggregator()),
    "fedbn": lambda ctx: FedBN(FedAvg(ctx.initial, name="fedbn", aggregator=ctx.aggregator()),
                               ctx.norm_keys),
    "fedavgm": _fedavgm,
    "fedadam": _fedopt("adam"),
    "fedyogi": _fedopt("yogi"),
    "fednova": lambda ctx: FedNova(ctx.initial, ctx.parameter_keys, ctx.sgd_momentum()),
    "scaffold": lambda ctx: Scaffold(ctx.initial, ctx.parameter_keys, ctx.sites),
    "swt": lambda ctx: SequentialTransfer(ctx.initial, ctx.sites, ctx.config.rounds, cyclic=False),
    "cwt": lambda ctx: SequentialTransfer(ctx.initial, ctx.sites, ctx.config.rounds, cyclic=True),
    "ensemble": lambda ctx: LocalEnsemble(ctx.initial),
    "split": lambda ctx: build_split(ctx.network, ctx.config.cut, ctx.initial, ctx.training,
                                     ctx.input_shape, ctx.config.rounds),
})


def build_strategy(name: str, ctx: StrategyContext, topology: str = SERVER) -> Strategy:
    """topology: the federated run's config topology; baselines keep the default (server)."""
    if topology != SERVER:
        return build_topology(name, ctx)
    return ALGORITHMS[name](ctx)
