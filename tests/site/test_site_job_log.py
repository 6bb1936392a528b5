"""A site's per-job log file rotates (``python -m bastion.site.job_process --log-file``)."""

from __future__ import annotations

import logging
from pathlib import Path

from bastion.site.job_process import configure_logging


def test_a_jobs_log_at_the_site_rotates(tmp_path: Path) -> None:
    path = tmp_path / "collaborator.log"
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging(path, max_bytes=2000, backups=2)
        for number in range(200):
            logging.getLogger("bastion.collaborator").info("round %d: a line of the job", number)
        for handler in root.handlers:
            handler.close()
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["collaborator.log", "collaborator.log.1", "collaborator.log.2"]
    assert all(p.stat().st_size <= 2100 for p in tmp_path.iterdir())
    assert "round 199" in path.read_text()
