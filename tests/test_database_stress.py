"""Stress: 2 coordinator instances x 2 gunicorn processes on one database, 4 workers,
500 trivial jobs submitted concurrently by 5 clients, on every database under test.

Every job must run exactly once (counted from what the job script itself recorded),
every client must receive all of its output, in order, and the job's exit code.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tests.multicluster import multi_cluster, run_jobs

JOBS = 500


@pytest.mark.timeout(300)
def test_many_jobs_through_two_instances_on_one_database(database_url: str, tmp_path: Path) -> None:
    with multi_cluster(tmp_path, database_url, instances=2, processes=2, workers=4) as cluster:
        results = run_jobs(cluster, JOBS)
        runs = Counter(cluster.runs())

    assert len(results) == JOBS
    assert len({r.job_id for r in results}) == JOBS
    twice = [marker for marker, n in runs.items() if n > 1]
    assert twice == []
    assert sorted(runs) == sorted(r.marker for r in results)
    for result in results:
        expected_code = int(result.marker.split("-")[1]) % 7
        assert result.status["state"] == "completed", (result.marker, result.status)
        assert result.status["exit_code"] == expected_code, result.marker
        assert result.stdout == f"stdout {result.marker}\n".encode(), result.marker
        assert result.stderr == f"stderr {result.marker}\n".encode(), result.marker
