"""A site agent killed between starting a job's collaborator and recording its pid.

Found by tests/faults/test_service_faults.py (kill -9 at ``site.spawned``): the restarted
agent looked for leftovers only through pid files, missed the collaborator no file named,
and started a second collaborator of the same site in the same job.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bastion.site.agent import SITE_DIR_ENV, _leftover_collaborators


def _sleeper(state_dir: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "BASTION_SITE_JOB": "job-1", SITE_DIR_ENV: str(state_dir)}
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env)


def test_leftovers_are_found_without_a_pid_file_and_only_this_sites(tmp_path: Path) -> None:
    mine, theirs = tmp_path / "site-a" / "state", tmp_path / "site-b" / "state"
    processes = [_sleeper(mine), _sleeper(theirs)]
    try:
        found = _leftover_collaborators(mine)
        assert processes[0].pid in found
        assert processes[1].pid not in found
        assert not list(mine.glob("**/pid"))  # no pid file names it
    finally:
        for process in processes:
            process.kill()
            process.wait()
