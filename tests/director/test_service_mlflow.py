"""``bastion director start --mlflow-uri``: every job of the service logs to MLflow (a local
``mlflow server``), its run named after the job."""

from __future__ import annotations

from pathlib import Path

from support.service import Service, wait_for

import bastion

SITES = ["site-1", "site-2"]


def test_director_logs_every_job_to_mlflow(tmp_path: Path, mlflow_server: str) -> None:
    from mlflow.tracking import MlflowClient

    svc = Service(tmp_path / "svc", SITES, ["alice"])
    folder = svc.parties["director"]
    try:
        process = svc._spawn(
            "director",
            [
                "director", "start", "--name", "director", "--pki-dir", "pki", "--dir",
                "state", "--host", "127.0.0.1", "--port", str(svc.port),
                "--port-file", str(folder / "port"), "--mlflow-uri", mlflow_server,
            ],
            folder,
        )  # fmt: skip
        wait_for(lambda: (folder / "port").is_file() or process.poll() is not None, "director")
        for index, site in enumerate(SITES):
            svc.start_site(site, 300, 300 * index, owners=["alice"])
        alice = bastion.Federation.connect(svc.address, pki=svc.pki("alice"))
        wait_for(lambda: len(alice.sites()) == 2, "two registered sites")
        job = alice.submit(svc.workspace("tracked", "alice", SITES, rounds=2), sites=SITES)
        status = job.wait(timeout=240)
        assert status["state"] == "finished", svc.output("director")
    finally:
        svc.stop_all()
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("tracked")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == job.id and run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted(m.step for m in history) == [1, 2]
    assert [a.path for a in client.list_artifacts(run.info.run_id, "model")]
