"""The protocol fuzzer (benchmarks/fuzz_protocol.py), bounded: 2,000 hostile messages from a site
with a valid certificate against a real `medfed server` process on 127.0.0.1. The server must not
exit, and the honest site must complete a round afterwards. Memory growth is reported, not
asserted here (it is a benchmark figure; the full run is 100,000 messages).

Deliberate break tried by hand: the evaluate path as it was (GrpcTransport._wait passing
IncompatibleUpdate through, the round loop catching TransportError only) made the server exit and
this test fail.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "fuzz_protocol.py"


def load_fuzzer():
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
    report = load_fuzzer().fuzz(1500, tmp_path, seed=2, settle=90, secure=True)
    print(report)
    assert report.server_exits == 0 and not report.hang
    assert report.honest_rounds_after >= 1
    assert report.tasks_answered.get("secagg.advertise", 0) >= 1
