"""The protocol fuzzer (benchmarks/fuzz_protocol.py), bounded: 1,500 to 2,500 hostile messages
from a site with a valid certificate against a real `medfed server` process on 127.0.0.1. The
server must not exit, and the honest site must complete a round afterwards. Memory growth is
reported, not asserted here (it is a benchmark figure; the full run is 100,000 messages).

Deliberate breaks tried by hand: the evaluate path as it was (GrpcTransport._wait passing
IncompatibleUpdate through, the round loop catching TransportError only) made the server exit and
the first test fail. For the split-learning test (hostile Split calls): checked_tensor without its
finite check (NaN and Inf accepted), without its shape comparison (a wrong shape accepted), and
OpenTasks.holding admitting any task id (calls naming never-issued, closed and site-a's tasks
accepted) each make it fail.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "fuzz_protocol.py"


def load_fuzzer():
    if str(BENCHMARK.parent) not in sys.path:  # its helpers (fuzz_session, fuzz_split) beside it
        sys.path.insert(0, str(BENCHMARK.parent))
    spec = importlib.util.spec_from_file_location("fuzz_protocol", BENCHMARK)
    fuzz = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_protocol"] = fuzz
    spec.loader.exec_module(fuzz)
    return fuzz


def test_two_thousand_hostile_messages_neither_stop_nor_hang_the_server(tmp_path: Path):
    """Attacker: site-b's valid certificate, random and mutated messages and hostile answers."""
    report = load_fuzzer().fuzz(2000, tmp_path, seed=1, settle=60)
    print(report)
    assert report.messages == 2000
    assert report.server_exits == 0 and not report.hang
    assert report.honest_rounds_after >= 1
    assert report.tasks_answered.get("train", 0) >= 1


def test_hostile_answers_to_every_secure_aggregation_step_leave_the_honest_sites_federating(
        tmp_path: Path):
    """Attacker: site-b in a secure-aggregation federation (site-a and site-c honest) answers
    advertise, share, receive, consistency and unmask with hostile JSON; the rounds go on
    without it."""
    report = load_fuzzer().fuzz(1500, tmp_path, seed=2, settle=90, mode="secure")
    print(report)
    assert report.server_exits == 0 and not report.hang
    assert report.honest_rounds_after >= 1
    assert report.tasks_answered.get("secagg.advertise", 0) >= 1


def test_hostile_split_calls_are_all_refused_and_the_honest_site_goes_on(tmp_path: Path):
    """Attacker: site-b (valid certificate, opted in) in a split-learning federation calls
    Split.Forward / Backward with hostile requests (fuzz_split.py: bad bytes, names, dtypes,
    shapes, values, announced sizes, out-of-turn backwards, other tasks, replays) while it holds
    a train task and when it holds none. None may be answered OK; site-a's rounds go on."""
    report = load_fuzzer().fuzz(2500, tmp_path, seed=3, settle=60, mode="split")
    split = report.split
    print(report)
    assert report.server_exits == 0 and not report.hang and report.honest_rounds_after >= 1
    assert split.accepted == {}, split.accepted
    assert report.honest_split_failures == 0  # nothing site-b sent failed site-a's tasks
    assert split.calls_in_task >= 10 and split.calls_no_task >= 10
    assert split.replies["forward"].get("OK", 0) >= 1  # an honest call passes: the refusals
    checked = {kind for kind, codes in split.replies.items() if "INVALID_ARGUMENT" in codes}
    assert len(checked) >= 5, split.replies  # are the checks', within a task, not only NotOpen
