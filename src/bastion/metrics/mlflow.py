"""MLflow logging, off the round engine's path: calls queue to one worker thread, so a slow
or unreachable tracking server never holds a round up (failures are logged, not raised)."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bastion.errors import BastionError

log = logging.getLogger("bastion.metrics.mlflow")


class MlflowLogger:
    """One MLflow run on ``uri`` in ``experiment``; every call returns at once."""

    def __init__(self, uri: str, experiment: str, run_name: str) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ModuleNotFoundError:
            raise BastionError("MLflow logging needs: pip install 'bastion-fl[mlflow]'") from None
        self.uri = uri
        self._client = MlflowClient(tracking_uri=uri)
        self._experiment = experiment
        self._run_name = run_name
        self.run_id: str | None = None
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="mlflow", daemon=True)
        self._thread.start()
        self._queue.put(self._start)

    def _start(self) -> None:
        found = self._client.get_experiment_by_name(self._experiment)
        experiment_id = (
            found.experiment_id if found else self._client.create_experiment(self._experiment)
        )
        run = self._client.create_run(experiment_id, run_name=self._run_name)
        self.run_id = run.info.run_id
        log.info("MLflow run %s in experiment %r at %s", self.run_id, self._experiment, self.uri)

    def _work(self) -> None:
        while True:
            call = self._queue.get()
            if call is None:
                return
            try:
                call()
            except Exception as exc:  # tracking must never break a federation
                log.warning("MLflow: %s: %s", type(exc).__name__, exc)

    def _run(self, fn: Callable[[str], None]) -> None:
        self._queue.put(lambda: fn(self.run_id) if self.run_id else None)

    def params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]

        def send(run_id: str) -> None:
            for start in range(0, len(items), 100):
                self._client.log_batch(run_id, params=items[start : start + 100])

        self._run(send)

    def metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        items = [Metric(k, float(v), stamp, step) for k, v in sorted(metrics.items())]

        def send(run_id: str) -> None:
            self._client.log_batch(run_id, metrics=items)

        self._run(send)

    def artifact(self, path: Path, folder: str) -> None:
        self._run(lambda run_id: self._client.log_artifact(run_id, str(path), folder))

    def close(self, status: str = "FINISHED", timeout: float = 60.0) -> None:
        self._run(lambda run_id: self._client.set_terminated(run_id, status))
        self._queue.put(None)
        self._thread.join(timeout)
