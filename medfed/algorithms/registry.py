"""Algorithm names -> strategy builders."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from medfed.algorithms.ensemble import LocalEnsemble
from medfed.algorithms.fedavg import FedAvg
from medfed.algorithms.fedbn import FedBN
from medfed.algorithms.sequential import SequentialTransfer
from medfed.algorithms.server_optimizer import AdaptiveServerOptimizer
from medfed.algorithms.strategy import Strategy
from medfed.config import FederationConfig
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


def _fedopt(variant: str) -> Callable[[StrategyContext], Strategy]:
    def build(ctx: StrategyContext) -> Strategy:
        c = ctx.config
        optimizer = AdaptiveServerOptimizer(ctx.parameter_keys, variant, c.server_lr, c.beta1,
                                            c.beta2, c.tau)
        return FedAvg(ctx.initial, name=f"fed{variant}", server_optimizer=optimizer)
    return build


ALGORITHMS: Registry[Callable[[StrategyContext], Strategy]] = Registry("algorithm", {
    "fedavg": lambda ctx: FedAvg(ctx.initial),
    "fedprox": lambda ctx: FedAvg(ctx.initial, name="fedprox", proximal_mu=ctx.config.mu),
    "fedbn": lambda ctx: FedBN(FedAvg(ctx.initial, name="fedbn"), ctx.norm_keys),
    "fedadam": _fedopt("adam"),
    "fedyogi": _fedopt("yogi"),
    "swt": lambda ctx: SequentialTransfer(ctx.initial, ctx.sites, ctx.config.rounds, cyclic=False),
    "cwt": lambda ctx: SequentialTransfer(ctx.initial, ctx.sites, ctx.config.rounds, cyclic=True),
    "ensemble": lambda ctx: LocalEnsemble(ctx.initial),
})


def build_strategy(name: str, ctx: StrategyContext) -> Strategy:
    return ALGORITHMS[name](ctx)
