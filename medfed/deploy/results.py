"""What a deployed federation leaves: every site scores the final model on its own splits
(deploy/evaluation.py), and the server writes summary.json (summary.py: the keys of `medfed run`),
rounds.jsonl, model.safetensors and the model bundle into its state folder."""

from __future__ import annotations

import hashlib
import json
import sys
from typing import TYPE_CHECKING, Any

from medfed.algorithms.strategy import Strategy
from medfed.bundle_write import deployment_bundle
from medfed.deploy.evaluation import combine_answers, gather
from medfed.deploy.site_worker import REFERENCE
from medfed.deploy.state import atomic_write
from medfed.evaluation.verdict import deployment_verdict
from medfed.output import write_json
from medfed.summary import run_summary
from medfed.transport.codec import encode_state

if TYPE_CHECKING:
    from medfed.deploy.server import Federation


def finish(fed: Federation, strategy: Strategy, seconds: float) -> dict[str, Any]:
    """Every site scores the final model; summary.json, rounds.jsonl and model.safetensors."""
    history = fed.store.history()
    config = fed.config
    d = fed.deployment
    budget = d.eval_deadline + (config.federation.rounds * d.round_deadline if config.baselines else 0)
    _say("the sites score the final model" + (" and train their local baselines"
                                              if config.baselines else ""))
    states = {s: strategy.site_state(s) for s in fed.sites}
    answers, failed = gather(fed.transport, states, fed.task, config.baselines, budget)
    for site, why in failed.items():
        fed.audit.record("evaluation_failed", site=site, reason=why)
    combined = combine_answers(answers, failed, fed.task)
    info, last_val = fed.store.site_info(), (history[-1]["val"] if history else {})
    sites = {s: {**_sizes(info.get(s, {})), "val": last_val.get(s) or {},
                 **({"test": combined["site_test"][s]} if s in combined["site_test"] else {})}
             for s in fed.sites}
    summary = run_summary(
        config, mode="deployment", dataset="each site's own data", task=str(fed.task.kind),
        class_names=list(fed.task.classes), partition="natural (one hospital, one site)",
        sites=sites, test=combined["test"], n_test=combined["n_test"], device="at each site",
        wall_seconds=seconds, bytes_up=sum(h["bytes_up"] for h in history),
        bytes_down=sum(h["bytes_down"] for h in history),
        failed_updates={h["round"]: h["failed"] for h in history if h["failed"]}, attackers=[],
        verdict=deployment_verdict(config.federation.algorithm,
                                   combined.get("baselines", {}).get("local")),
        operating_point=combined.get("operating_point") or {})
    summary |= {k: combined[k] for k in ("site_mean", "baselines", "evaluation") if k in combined}
    summary["evaluation"]["bytes_up"] = dict(fed.transport.eval_bytes)
    summary["task_schema"] = fed.task.to_json()
    if fed.privacy.active:
        summary["privacy"] = fed.privacy.report()
        if config.privacy.dp_sgd:  # the sites' accountants are at the sites: their last reports
            summary["privacy"]["epsilon"] = _last_epsilon(history)
    _write_outputs(fed, strategy, summary, history)
    _say(f"verdict: {summary['verdict']['text']}")
    return summary


def _write_outputs(fed: Federation, strategy: Strategy, summary: dict[str, Any],
                   history: list[dict[str, Any]]) -> None:
    out = fed.store.folder
    summary["files"] = ["summary.json", "rounds.jsonl", "model.safetensors", "audit.jsonl",
                        "medfed.sqlite", "model/model.safetensors", "model/model.json"]
    write_json(out / "summary.json", summary, private=True)
    lines = "".join(json.dumps(h) + "\n" for h in history)
    atomic_write(out / "rounds.jsonl", lines.encode())
    meta: dict[str, Any] = {"algorithm": fed.config.federation.algorithm,
                            "task": fed.task.to_json()}  # the preprocessing travels with the model
    if REFERENCE in fed.transport.common_options:
        meta["harmonize_reference"] = fed.transport.common_options[REFERENCE]
    model = encode_state(strategy.global_state, meta)
    atomic_write(out / "model.safetensors", model)
    fed.audit.record("model_written", sha256=hashlib.sha256(model).hexdigest())
    head = fed.store.anchor().head  # the bundle names the trail's head after model_written
    deployment_bundle(out, fed.config, fed.task, strategy, fed.sites, summary,
                      meta.get("harmonize_reference"), fed.store.get("config_sha256"),
                      head and head.hash)
    _say(f"model written to {out / 'model.safetensors'}; summary in {out / 'summary.json'}")


def _last_epsilon(history: list[dict]) -> dict[str, float]:
    """Each site's epsilon as its last update reported it (DP-SGD's accountant lives at the site)."""
    spent: dict[str, float] = {}
    for record in history:
        spent |= record.get("epsilon") or {}
    return spent


def _sizes(info: dict[str, Any]) -> dict[str, Any]:
    return {k: info[k] for k in ("n_train", "n_val", "n_test", "label_counts") if k in info}


def _say(text: str) -> None:
    sys.stderr.write(f"medfed server: {text}\n")
    sys.stderr.flush()
