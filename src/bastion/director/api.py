"""The Python API of a federation service, as a model owner uses it (from a notebook too).

```python
import bastion

fed = bastion.Federation.connect("director.example.org:50051", pki="pki", name="alice")
fed.sites()                                    # the registry: who offers what
job = fed.submit("my-workspace", dataset="patients", min_sites=2)
for event in job.rounds():                     # live, while the job runs
    print(event)
job.wait()
weights = job.download(best=True)              # {tensor name: numpy array}
```

Every failure is a :class:`bastion.BastionError` with a one-line message.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bastion.errors import BastionError, PKIError
from bastion.pki import Role, tls_files_for
from bastion.pki.layout import PkiLayout
from bastion.storage.checkpoints import load_checkpoint
from bastion.tensors import Weights
from bastion.transport import service_wire as wire
from bastion.workspace.archive import export_workspace

FINAL = ("finished", "failed", "stopped")


class JobFailed(BastionError):
    """A job ended failed or stopped while someone waited for it to finish."""


class Federation:
    """A model owner's connection to a director (mutual TLS, named by its certificate)."""

    def __init__(self, client: wire.DirectorClient, owner: str) -> None:
        self._client = client
        self.owner = owner

    @classmethod
    def connect(
        cls, director: str, pki: Path | str, name: str | None = None, timeout: float = 30.0
    ) -> Federation:
        """Dial ``director`` (host:port) with the model owner's key and certificate in ``pki``
        (``NAME.key``, ``NAME.crt`` and the federation's ``ca.crt``)."""
        pki = Path(pki)
        if name is None:
            name = _single_owner(pki)
        files = tls_files_for(pki, name)
        identity = files.check()
        if identity.role is not Role.MODEL_OWNER:
            raise PKIError(
                f"{files.cert} belongs to {identity}; jobs are submitted by model owners"
            )
        return cls(wire.DirectorClient(director, files.read(), timeout=timeout), name)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Federation:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def sites(self) -> list[dict[str, Any]]:
        """Registered sites: name, last seen, and what each offers."""
        return list(self._client.call("Sites")["sites"])

    def jobs(self) -> list[dict[str, Any]]:
        """This owner's jobs and their states (never another owner's)."""
        return list(self._client.call("ListJobs")["jobs"])

    def job(self, job_id: str) -> Job:
        self._client.call("JobStatus", {"job": job_id})  # refuses a job not ours
        return Job(self, job_id)

    def submit(
        self,
        workspace: Path | str,
        *,
        sites: Sequence[str] = (),
        dataset: str | None = None,
        min_sites: int = 1,
    ) -> Job:
        """Submit a signed workspace (a folder, or an exported ``.tar.gz``) as a job on the
        named ``sites`` or on every site offering ``dataset`` (at least ``min_sites``)."""
        workspace = Path(workspace)
        targeting: dict[str, Any] = (
            {"sites": list(sites)} if sites else {"dataset": dataset, "min_sites": min_sites}
        )
        if workspace.is_dir():
            with tempfile.TemporaryDirectory(prefix="bastion-submit-") as scratch:
                archive = Path(scratch) / "workspace.tar.gz"
                export_workspace(workspace, archive)
                answer = self._client.upload("Submit", {"targeting": targeting}, archive)
        elif workspace.is_file():
            answer = self._client.upload("Submit", {"targeting": targeting}, workspace)
        else:
            raise BastionError(f"{workspace}: no workspace folder or archive here")
        return Job(self, str(answer["job"]))

    def sites_where(self, predicate: Any) -> list[str]:
        """Names of registered sites whose published offers satisfy ``predicate(site)``,
        e.g. ``lambda s: s["offers"]["datasets"]["mnist"]["examples"] > 1000``."""
        chosen = []
        for site in self.sites():
            try:
                if predicate(site):
                    chosen.append(site["name"])
            except (KeyError, TypeError):
                continue
        return chosen


class Job:
    """One submitted job, seen by its owner."""

    def __init__(self, federation: Federation, job_id: str) -> None:
        self.federation = federation
        self.id = job_id

    def __repr__(self) -> str:
        return f"Job({self.id!r})"

    @property
    def _client(self) -> wire.DirectorClient:
        return self.federation._client

    def status(self) -> dict[str, Any]:
        return dict(self._client.call("JobStatus", {"job": self.id}))

    @property
    def state(self) -> str:
        return str(self.status()["state"])

    def rounds(self, follow: bool = True, after: int = 0) -> Iterator[dict[str, Any]]:
        """Round events as the job's aggregator reports them, live; ends with the job."""
        for event in self._client.follow(
            "Rounds", {"job": self.id, "follow": follow, "after": after}
        ):
            if event.get("type") == "job_ended":
                return
            yield event

    def logs(self, follow: bool = False) -> Iterator[str]:
        for message in self._client.follow("Logs", {"job": self.id, "follow": follow}):
            yield str(message["line"])

    def wait(self, timeout: float | None = None, poll: float = 0.5) -> dict[str, Any]:
        """Block until the job ends; its final status. A failed or stopped job raises."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                status = self.status()
            except wire.DirectorUnavailable:
                status = {"state": "unknown"}
            if status["state"] in FINAL:
                if status["state"] != "finished":
                    raise JobFailed(f"job {self.id} {status['state']}: {status['reason']}")
                return status
            if deadline is not None and time.monotonic() > deadline:
                raise BastionError(f"job {self.id} is still {status['state']} after {timeout}s")
            time.sleep(poll)

    def stop(self) -> None:
        self._client.call("StopJob", {"job": self.id})

    def download(
        self, best: bool = True, out: Path | str | None = None, metrics: bool = True
    ) -> Weights:
        """The job's best (or last) model; with ``out``, also saved there with the metrics."""
        what = "best" if best else "last"
        if out is not None:
            folder = Path(out)
            folder.mkdir(parents=True, exist_ok=True)
            path = self._client.download(
                "Download", {"job": self.id, "what": what}, folder / f"{what}.safetensors"
            )
            if metrics:
                self._client.download(
                    "Download", {"job": self.id, "what": "metrics"}, folder / "metrics.jsonl"
                )
            weights, _ = load_checkpoint(path)
            return weights
        with tempfile.TemporaryDirectory(prefix="bastion-download-") as scratch:
            path = self._client.download(
                "Download", {"job": self.id, "what": what}, Path(scratch) / "model.safetensors"
            )
            weights, _ = load_checkpoint(path)
            return weights


def _single_owner(pki: Path) -> str:
    """The one model owner identity in ``pki`` (pass ``name`` when there are several)."""
    from bastion.pki import identity_of, load_certificate

    owners = []
    for cert in sorted(PkiLayout.of(pki).root.glob("*.crt")):
        if cert.name == "ca.crt" or not cert.with_suffix(".key").is_file():
            continue
        try:
            if identity_of(load_certificate(cert)).role is Role.MODEL_OWNER:
                owners.append(cert.stem)
        except BastionError:
            continue
    if len(owners) != 1:
        raise PKIError(
            f"{pki}: found {len(owners)} model owner identities ({', '.join(owners) or 'none'}); "
            "pass name="
        )
    return owners[0]
