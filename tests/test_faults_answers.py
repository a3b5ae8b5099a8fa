"""Every request is safe to retry: lost answers change nothing twice.

A proxy between the parties and the coordinator forwards every request but loses the
first answer to a submit, an accept (the worker's poll that carries it), an output
upload, an input upload, a finish and a cancel (it closes the connection instead, as a
network failure at that moment would).
Each party sends the request again, and the coordinator must recognise it: one job per
submission (the idempotency key), accepted once, its output stored once and in order,
its end recorded once, a cancel answered like the first.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from client.api import Api
from tests import databases
from tests.answer_proxy import AnswerDroppingProxy, Rule
from tests.faults import Timing, check_all, fault_cluster
from tests.helpers import free_port, wait_until

JOB = r"/api/v1/jobs/[0-9a-f]{32}"
RULES = [
    Rule("submit", "POST", re.compile(r"/api/v1/jobs")),
    # A worker accepts its jobs with its next poll (``accepted=``).
    Rule("accept", "GET", re.compile(r"/api/v1/workers/poll"), query=re.compile("accepted=")),
    Rule("output", "POST", re.compile(JOB + "/output")),
    Rule("input", "POST", re.compile(JOB + "/input")),
    Rule("finish", "POST", re.compile(JOB + "/finish")),
    Rule("cancel", "POST", re.compile(JOB + "/cancel")),
]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_retried_requests_with_lost_answers_change_nothing_twice(tmp_path: Path, kind: str) -> None:
    if kind not in databases.selected():
        pytest.skip(f"{kind} is not among DFFMPEG_TEST_DATABASES")
    port = free_port()
    proxy = AnswerDroppingProxy(("127.0.0.1", port), RULES)
    try:
        with (
            databases.fresh_database(kind, tmp_path) as url,
            fault_cluster(
                tmp_path, url, Timing.fast(), workers=1, urls=[proxy.url], ports=[port]
            ) as cluster,
        ):
            # Their stdin ends during the job: the EOF goes in an input request, which
            # loses an answer too (a /dev/null stdin's EOF goes with the submission).
            callers = cluster.callers([(8, 0), (8, 3)], 0.25, late_eof=True)
            check_all(cluster, callers, timeout=90)
            jobs = cluster.jobs()
            assert sorted(j["args"][0] for j in jobs) == sorted(c.marker for c in callers)
            for job in jobs:
                moves = [e["to"] for e in job["events"]]
                assert moves == ["pending", "assigned", "running", "completed"], job["events"]
            # A cancel whose answer is lost is sent again and answered like the first.
            client = Api(proxy.url, "c1", _key(cluster))
            try:
                body = {"binary": "faultjob", "args": ["never", "1", "0", "0"],
                        "mode": "background", "wait_for_worker": True,
                        "required_labels": ["nobody-has-this"]}  # fmt: skip
                job_id = client.call("POST", "/jobs", json_body=body, retry_for=10)["job"]["job_id"]
                canceled = client.call("POST", f"/jobs/{job_id}/cancel", retry_for=10)
                assert canceled["job"]["state"] == "canceled"
                events = client.call("GET", f"/jobs/{job_id}")["job"]["events"]
                assert [e["to"] for e in events] == ["pending", "canceled"]
            finally:
                client.close()
            # Every kind of request lost an answer once and was sent again.
            assert sorted(proxy.dropped) == sorted(r.name for r in RULES)
            # A poll whose answer was lost is sent again after the worker's back-off,
            # with the same accepts: possibly after every job ended.
            wait_until(lambda: proxy.seen["accept"] >= 2, timeout=30)
            for rule in RULES:
                assert proxy.seen[rule.name] >= 2, (rule.name, proxy.seen)
            assert len(cluster.jobs()) == 3
    finally:
        proxy.close()


@pytest.mark.timeout(120)
def test_a_submission_whose_answer_is_lost_in_an_outage_waits_for_its_job(tmp_path: Path) -> None:
    """The coordinator makes the job and goes away before its answer (the submission
    waits for the job's first output, so this moment is not short). The drop-in may
    not give up after ``connect_retry_seconds`` as if nothing had been made: its job
    is under way, and it keeps trying for the outage grace, then follows the job."""
    port = free_port()
    outage = 4.0
    rule = Rule("submit", "POST", re.compile(r"/api/v1/jobs"), outage=outage)
    proxy = AnswerDroppingProxy(("127.0.0.1", port), [rule])
    try:
        with (
            databases.fresh_database("sqlite", tmp_path) as url,
            fault_cluster(
                tmp_path,
                url,
                Timing.fast(),
                workers=1,
                urls=[proxy.url],
                ports=[port],
                client_extra={"connect_retry_seconds": 1},
            ) as cluster,
        ):
            callers = cluster.callers([(6, 5)], 0.25)
            check_all(cluster, callers, timeout=90)
            assert proxy.dropped == ["submit"]
            assert callers[0].ended_at - callers[0].started_at > outage
            assert len(cluster.jobs()) == 1
    finally:
        proxy.close()


def _key(cluster: object) -> str:
    import yaml

    config = yaml.safe_load(cluster.client_config.read_text())  # type: ignore[attr-defined]
    return str(config["hmac_key"])
