"""What a deployed site does for a federation, once the coordinator has said what to learn.

The worker is built from the server's welcome (the run configuration without data, the task
schema, the site's position in the federation) and the site's own data (site_data.py). It trains
with the simulation's trainer and privacy wrappers, scores on its own splits, and answers every
task with aggregates only:

    train       the model -> the site's update (weights, sample count, training loss)
    evaluate    a model -> metrics on its validation split
    final       the final model -> score summaries of its validation and test splits (histograms,
                medfed/evaluation/federated.py), its own test metrics with a CI and, with
                baselines, the paired comparison with a local-only model it trains itself

With split learning, `train` runs the site's head and tail on its batches and the server's middle
between them, over gRPC (client/split_site.py, transport/grpc_split.py); the update is the site's
head and tail, and evaluate / final score the whole model here as for every algorithm.

A federation with `[task] harmonize = "histogram"` sends its reference with each task; the site
maps its images onto it once (and again only if the reference changes).

The site's [policy] (site_policy.py) decides: a plan it refuses stops the worker before anything
is trained (PlanRefused), and what it does not share is left out of its answers. DP noise comes
from OS entropy; DP-SGD's accountant starts from the site's ledger and the ledger is written
before an update leaves the site.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from medfed.algorithms.compression import compress_sites
from medfed.algorithms.compression_spec import parse_compression
from medfed.client.split_site import SiteLink, SplitSite
from medfed.client.trainer import LocalSite, SiteTrainer, TrainOptions
from medfed.config import RunConfig
from medfed.config_file import config_from_dict
from medfed.config_split import SPLIT, parse_cut
from medfed.data.dataset import Samples, SiteData, label_counts
from medfed.data.harmonize import harmonize_site, pool_images, site_quantiles
from medfed.data.transforms import Preprocess
from medfed.defaults import DataFacts, choose_defaults, choose_rounds
from medfed.deploy import homomorphic_exchange, relay_site, secure_exchange
from medfed.deploy.audit_witness import AUDIT_HEAD, Witness
from medfed.deploy.site_data import LocalData
from medfed.deploy.site_policy import SHARES, SitePolicy
from medfed.device import pick_device
from medfed.errors import ConfigError, IncompatibleUpdate
from medfed.evaluation.federated import summarize
from medfed.evaluation.metrics import compute_metrics
from medfed.evaluation.statistics import delong_ci, delong_test
from medfed.experiment import make_site_trainer, train_options
from medfed.models import build_model
from medfed.models.blocks import SITE_PARTS, SplitLayout
from medfed.privacy.homomorphic import HomomorphicSite
from medfed.privacy.ledger import PrivacyLedger
from medfed.privacy.mechanisms import Mechanisms
from medfed.privacy.secure_round import SecureSite
from medfed.privacy.signing import SigningIdentity
from medfed.server.validation import check_state
from medfed.task_schema import TaskSchema
from medfed.transport.codec import decode_state, encode_state
from medfed.transport.grpc_split import GrpcWire
from medfed.transport.split_channel import SiteEnd
from medfed.types import StateDict, Task, split_control

OPTION_NAMES = {f.name for f in fields(TrainOptions)}
REFERENCE = "harmonize_reference"  # the task option that carries the histogram reference


@dataclass(frozen=True)
class Welcome:
    """What the coordinator tells a site when it connects."""

    config: RunConfig
    task: TaskSchema
    index: int  # the site's position in the federation (its random streams as in simulation)
    sites: list[str]
    key: str = ""  # what identifies the federation (a hash of what the server sent)

    @classmethod
    def parse(cls, config_toml: str, body: str) -> Welcome:
        config = config_from_dict(tomllib.loads(config_toml), source="the server's configuration")
        raw = json.loads(body or "{}")
        if not isinstance(raw, dict) or not isinstance(raw.get("index"), int) \
                or not isinstance(raw.get("sites"), list):
            raise ConfigError("the server's welcome lacks the task, the site's index or the sites")
        task = TaskSchema.from_json(raw.get("task"), "the server's task")
        # A medfed server sends its settings filled in (settings.py); filling from the same task
        # schema here is a no-op then, and gives what that server would have chosen otherwise.
        config = choose_rounds(choose_defaults(config, DataFacts.of_task(task))).config
        return cls(config, task, raw["index"], [str(s) for s in raw["sites"]], welcome_key(config_toml, body))


def welcome_key(config_toml: str, body: str) -> str:
    """One federation's identity: a restarted server of the same federation keeps the site's
    worker (and SCAFFOLD's c_k); a new federation gets a new one."""
    return hashlib.sha256((config_toml + "\0" + body).encode()).hexdigest()


class PlanRefused(ConfigError):
    """The site's own policy refuses the federation's plan."""


class SiteWorker:
    def __init__(self, local: LocalData, welcome: Welcome, site: str,
                 policy: SitePolicy | None = None, state: Path | None = None,
                 identity: SigningIdentity | None = None, he_context: bytes | None = None) -> None:
        """policy: the site's own [policy]; state: its state folder (the privacy ledger);
        identity: its certificate key and CA, which sign its secure-aggregation messages (None with
        --insecure: the site then refuses secure aggregation); he_context: the federation's secret
        CKKS context (SITE.ckks beside its key), for homomorphic encryption."""
        differences = welcome.task.differences(local.schema)
        if differences:
            raise ConfigError(f"this site's data does not fit the federation's task: "
                              f"{'; '.join(differences)}")
        self.local, self.welcome, self.site = local, welcome, site
        self.welcome_key = welcome.key
        self.config = welcome.config
        self.policy = policy or SitePolicy()
        self._check_plan()
        self.device = pick_device(self.config.device)
        harmonized = welcome.task.harmonize != "none"
        max_value = 1.0 if harmonized else local.source.max_value
        dims = welcome.task.spatial_dims
        self.preprocess = Preprocess(max_value if dims else None, welcome.task.spatial_size or None)
        self.reference: list[float] | None = None
        data = local.data
        if welcome.task.harmonize == "zscore":
            data = harmonize_site(data, "zscore", local.source.max_value)
        self.base = self._trainer(data)
        self.ledger = PrivacyLedger(state) if state is not None else None
        self.witness = Witness(state) if state is not None else None
        spent = {site: self.ledger.history()} if self.ledger else None
        self.privacy = Mechanisms.build(self.config, welcome.sites, deployed=True)
        identities = {site: identity} if identity is not None else {}
        self.trainer: LocalSite = self.privacy.wrap_sites(
            {site: self.base}, first_index=welcome.index, spent=spent, identities=identities,
            secret_context=he_context)[site]
        self.trainer = compress_sites({site: self.trainer},  # the federation's --compress
                                      parse_compression(self.config.federation.compress),
                                      self.config.seed, welcome.index, deployed=True)[site]
        for dp in self.privacy.dp_sites.values():  # the site's own cap on top of the plan's target
            dp.budget.target = self.policy.epsilon_cap(dp.budget.target)
        self.last_final: dict[str, Any] | None = None
        spec = self.welcome.task.model_spec(self.config.model)
        # The model this site builds from the plan: what the coordinator sends must fit it.
        model = build_model(self.config.model.model, spec, self.config.seed)
        self.model_reference = model.state_dict()
        self.train_reference = self.model_reference  # what a train task's model must fit
        self.wire: GrpcWire | None = None  # split learning: the way to the server's middle
        if self.config.federation.algorithm == SPLIT:
            self._split_learning(model, (spec.in_channels, *spec.input_size), identity is None)
        self.peer = self._peer(identity)

    def _split_learning(self, model: nn.Module, sample_shape: tuple[int, ...], insecure: bool
                        ) -> None:
        """Train tasks run the head and tail here, the middle at the server over gRPC
        (client/split_site.py); a train task's model is the site's part (head.*, tail.*)."""
        cut = parse_cut(self.config.federation.cut)
        layout = SplitLayout.of(model, *cut)
        self.wire = GrpcWire(self.site, names_itself=insecure)
        seam = SiteEnd(self.wire, layout.cut_shapes(sample_shape))
        self.trainer = SplitSite(self.base, SiteLink(seam, self.site), cut)
        self.train_reference = layout.from_whole(self.model_reference, *SITE_PARTS)

    def _peer(self, identity: SigningIdentity | None) -> relay_site.PeerSite | None:
        """p2p through the relay: the site's own model and round keys (None for other topologies,
        and without a certificate key, which p2p's key adverts need: its tasks are refused)."""
        if self.config.federation.topology != "p2p" or identity is None:
            return None
        return relay_site.PeerSite(self.site, identity, self.trainer, self.config,
                                   self.welcome.sites, self.model_reference, self._record_spending)

    def _check_plan(self) -> None:
        refusal = self.policy.refusal(self.config, len(self.welcome.sites))
        if refusal is None and self.welcome.task.harmonize == "histogram" \
                and not self.policy.shares("share_data_summary", self.config):
            refusal = ("the federation matches intensity histograms, which needs this site's "
                       "quantiles; its policy does not share its data summary")
        if refusal is not None:
            raise PlanRefused(f"site {self.site} refuses the federation's plan: {refusal}")

    def shares(self, what: str) -> bool:
        return self.policy.shares(what, self.config)

    def _trainer(self, data: SiteData) -> SiteTrainer:
        spec = self.welcome.task.model_spec(self.config.model)
        return make_site_trainer(self.config, spec, self.welcome.task.kind, self.preprocess,
                                 self.device, self.welcome.index, data)

    @property
    def info(self) -> dict[str, Any]:
        """The site's second hello: with its policy's leave, sizes and label counts, and its
        intensity quantiles when the federation matches histograms (aggregates; no image)."""
        if not self.shares("share_data_summary"):
            return {"site": self.site}
        data, task = self.local.data, self.welcome.task
        info: dict[str, Any] = {"site": self.site, **self.local.sizes,
                                "label_counts": label_counts(task.kind, data.train.y, len(task.classes))}
        if task.harmonize == "histogram":
            fit = site_quantiles(pool_images(data, self.local.source.max_value))
            info["quantiles"] = {"values": fit.values.tolist(), "n_pixels": fit.n_pixels}
        return info

    def run(self, kind: str, options: dict[str, Any], blob: bytes, task_id: int = 0
            ) -> tuple[dict[str, Any], bytes]:
        """(metadata, update bytes) for one task (task_id: the server's, which split learning's
        calls name)."""
        if kind in secure_exchange.KINDS:
            if not isinstance(self.trainer, SecureSite):
                raise ValueError("this federation does not use secure aggregation")
            return secure_exchange.answer(self.trainer, self.config, kind, json.loads(blob)), b""
        if kind in relay_site.KINDS:
            if self.peer is None:
                raise ValueError("this federation is not p2p, or this site has no certificate key "
                                 "to sign its round keys with (--insecure)")
            return self.peer.answer(kind, options, blob)
        if kind == homomorphic_exchange.DECRYPT:
            if not isinstance(self.trainer, HomomorphicSite):
                raise ValueError("this federation does not use homomorphic encryption")
            return homomorphic_exchange.answer(self.trainer, options, blob)
        self._harmonize(options.pop(REFERENCE, None))
        head = options.pop(AUDIT_HEAD, None)
        if self.witness is not None and head is not None:
            self.witness.keep(head)
        state = self._global_model(blob, self.train_reference if kind == "train"
                                    else self.model_reference)
        if kind == "evaluate":
            if not self.shares("share_validation_metrics"):
                return {"metrics": {}, "withheld": "this site's policy"}, b""
            return {"metrics": self.trainer.evaluate(state, str(options.get("split", "val")))}, b""
        if kind == "final":
            self.last_final = self.final(state, bool(options.get("baselines")))
            if not self.shares("share_evaluation"):
                return {"withheld": "this site's policy does not share its evaluation"}, b""
            return self.last_final, b""
        if kind != "train":
            raise ValueError(f"unknown task '{kind}'")
        unknown = set(options) - OPTION_NAMES
        if unknown:
            raise ValueError(f"unknown training options {sorted(unknown)}")
        if self.wire is not None:
            self.wire.start_task(task_id)
        update = self.trainer.train(state, TrainOptions(**options))
        self._record_spending()  # before anything of this update leaves the site
        metrics = dict(update.metrics)
        if not self.shares("share_training_loss"):
            metrics.pop("train_loss", None)
        meta = {"n_samples": update.n_samples, "n_steps": update.n_steps, "metrics": metrics}
        return meta, encode_state(update.state)

    def _global_model(self, blob: bytes, reference: StateDict) -> StateDict:
        state = decode_state(blob)
        model, control = split_control(state)  # SCAFFOLD's control variate rides along
        try:
            check_state(model, reference)
            check_state(control, {k: v for k, v in reference.items() if k in control})
        except IncompatibleUpdate as exc:
            raise IncompatibleUpdate(f"the coordinator's model does not fit the one this site builds "
                                     f"from the plan ({exc}); do both run the same medfed version?"
                                     ) from None
        return state

    def _record_spending(self) -> None:
        if self.ledger is None:
            return
        for dp in self.privacy.dp_sites.values():
            self.ledger.record(list(dp.budget.accountant.history), dp.budget.delta)

    def _harmonize(self, reference: Any) -> None:
        if self.welcome.task.harmonize != "histogram":
            return
        if reference is None and self.reference is None:
            raise ValueError("the federation matches histograms but sent no reference")
        if reference is None or reference == self.reference:
            return
        target = np.asarray(reference, dtype=np.float64)
        if target.shape != (len(site_quantiles(np.zeros(1)).values),) or not np.isfinite(target).all():
            raise ValueError("the histogram reference is not a quantile function")
        self.base.data = harmonize_site(self.local.data, "histogram", self.local.source.max_value,
                                        target)
        self.reference = list(reference)

    def final(self, state: StateDict, baselines: bool) -> dict[str, Any]:
        """The final model at this site: what the coordinator combines, and (with baselines) the
        answer to "did joining help this hospital?"."""
        data = self.base.data
        val_probs, val_loss = self.base.predictor.predict(state, data.val)
        test = data.test if data.test is not None else Samples(data.val.x[:0], data.val.y[:0])
        probs, loss = self.base.predictor.predict(state, test)
        task = self.welcome.task.kind
        out: dict[str, Any] = {
            "val": summarize(task, data.val.y, val_probs, val_loss).to_json(),
            "test": summarize(task, test.y, probs, loss).to_json(),
            "metrics": {"val": _metrics(task, data.val.y, val_probs, val_loss),
                        "test": _metrics(task, test.y, probs, loss)},
        }
        if baselines:
            out["local"] = self._local_baseline(test, probs)
        self.last_final = out
        return out

    def _local_baseline(self, test: Samples, federated: np.ndarray) -> dict[str, Any]:
        """A model trained on this site's training split alone, with the federation's budget
        (rounds x local epochs, from the same initial model), scored on the same test split."""
        spec = self.welcome.task.model_spec(self.config.model)
        state = build_model(self.config.model.model, spec, self.config.seed).state_dict()
        trainer = self._trainer(self.base.data)
        options = train_options(self.config)
        for r in range(self.config.federation.rounds):  # as the simulation's local baseline
            state = trainer.train(state, replace(options, round=r)).state
        probs, loss = trainer.predictor.predict(state, test)
        task = self.welcome.task.kind
        return {"test": _metrics(task, test.y, probs, loss), "paired": _paired(task, test.y,
                                                                               federated, probs)}


def _metrics(task: Task, y: np.ndarray, probs: np.ndarray, loss: float) -> dict[str, Any]:
    """Exact metrics of a site's own split, with the AUC's DeLong interval (binary tasks)."""
    if not len(y):
        return {"n": 0.0}
    metrics: dict[str, Any] = {**compute_metrics(task, y, probs), "loss": loss}
    if task is Task.BINARY and len(np.unique(y)) == 2:
        interval = delong_ci(y.astype(int), probs[:, -1])
        metrics["auc_ci"] = [interval.low, interval.high]
    return metrics


def _paired(task: Task, y: np.ndarray, federated: np.ndarray, local: np.ndarray
            ) -> dict[str, Any]:
    """Federated minus local AUC on the site's test split (DeLong), or why there is none."""
    if task is not Task.BINARY:
        return {"method": "none", "reason": "DeLong's paired test is for binary tasks"}
    try:
        test = delong_test(y.astype(int), federated[:, -1], local[:, -1])
    except ValueError as exc:
        return {"method": "none", "reason": str(exc)}
    return {"method": "DeLong", "difference": test.difference, "low": test.low, "high": test.high,
            "p_value": test.p_value}


def site_results(worker: SiteWorker, final: dict[str, Any]) -> dict[str, Any]:
    """The site's own record of a federation: what it sent and what it learned (kept at the site)."""
    spent = {s: dp.budget.spent() for s, dp in worker.privacy.dp_sites.items()}
    return {"site": worker.site, "task": worker.welcome.task.to_json(), **worker.local.sizes,
            "algorithm": worker.config.federation.algorithm,
            "rounds": worker.config.federation.rounds,
            "federated": final["metrics"], "local": final.get("local"),
            "epsilon_spent": spent.get(worker.site),
            "shared": {what: worker.shares(what) for what in SHARES}}


def write_site_results(state: Path, results: dict[str, Any]) -> list[Path]:
    """state/site-summary.json and state/report.html (the site's own page)."""
    from medfed.output import write_json
    from medfed.report.site_page import site_page

    state.mkdir(parents=True, exist_ok=True)
    write_json(state / "site-summary.json", results)
    (state / "report.html").write_text(site_page(results), encoding="utf-8")
    return [state / "site-summary.json", state / "report.html"]
