"""Thousands of simulated clients on Ray: the aggregator here, the clients on a pool of actors.

``bastion simulate --backend ray`` keeps the real ``Aggregator`` in this (the driver)
process, writing checkpoints and metrics to the workspace as with processes. Each round
the driver asks it for every roster member's tasks, puts the round's global model in
Ray's object store once, and hands the assigned clients to ``ClientWorker`` actors
(``bastion.sim.remote_clients``). Each result a client sent is replayed into the
aggregator through the in-process transport's checks (wire frames with the plan's size
limit, then ``submit_result`` / ``reject_result`` / ``decline_task``) as soon as it and
the results before it are in, so aggregation streams and the driver holds O(model).

Order makes it reproducible: clients are visited in the order the in-process backend
visits them, dealt to actors round-robin, and replayed in that order, so a runner with
per-client state (``client_state()``) gives a final model bit for bit equal to
``--in-process``. Secure aggregation is refused: its stages need every client of the
round at once, and an actor runs one client's round at a time.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bastion.aggregator.engine import Aggregator
from bastion.aggregator.service import build_aggregator
from bastion.errors import BastionError, MissingDependency
from bastion.plan import Plan, load_plan
from bastion.protocol import Assignment
from bastion.sim.inprocess import InProcessClient
from bastion.sim.remote_clients import ClientRound, ClientWorker

try:
    import ray
    from ray.exceptions import RayError, RayTaskError
except ModuleNotFoundError as exc:  # pragma: no cover - exercised where ray is absent
    if exc.name != "ray":
        raise
    raise MissingDependency("ray", "ray", "bastion simulate --backend ray") from None

log = logging.getLogger("bastion.sim")

#: Results each actor may have queued or waiting to be replayed (bounds the object store).
QUEUED_PER_WORKER = 2

#: Ray's longest socket path below its temp folder is about 77 bytes (session name, pid).
MAX_TEMP_PARENT = 28

RayRoundCallback = Callable[[int, "RayFederation"], None]


def refuse_unsupported(plan: Plan) -> None:
    """Raise, naming the plan key and the alternative, for what Ray cannot simulate here."""
    if plan.uses_secure_aggregation:
        raise BastionError(
            "key 'secure_aggregation': secure aggregation runs interactive stages across all "
            "clients of a round at once, which Ray actors running one client at a time cannot "
            "take part in; use `bastion simulate --in-process` or the process backend "
            "(`bastion simulate`)"
        )
    if plan.asynchronous is not None and plan.asynchronous.enabled:
        raise BastionError(
            "key 'asynchronous': buffered asynchronous aggregation lets each client train on "
            "the model version it was given while others publish newer ones, and the Ray "
            "backend hands every client of a round the same model in one batch; use "
            "`bastion simulate --in-process` or the process backend (`bastion simulate`)"
        )


def _temp_parent() -> str:
    """Where Ray's session folder goes: $RAY_TMPDIR or the system's temporary folder, or /tmp
    when that path is too long for the Unix sockets Ray makes inside it (107 bytes at most)."""
    parent = os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()
    if len(parent) > MAX_TEMP_PARENT and Path("/tmp").is_dir():
        return "/tmp"
    Path(parent).mkdir(parents=True, exist_ok=True)
    return parent


@contextmanager
def ray_session(address: str | None = None) -> Iterator[None]:
    """Ray for the simulation: the caller's if already initialized, else started (or joined at
    ``address``) here, quietly, with its files in a temporary folder, and shut down after."""
    if ray.is_initialized():
        yield
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # A failed client ends the run with one line; the results in flight with it stay unread.
    os.environ.setdefault("RAY_IGNORE_UNHANDLED_ERRORS", "1")
    temp_dir: str | None = None
    options: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    if address is None:  # a local instance: never under $HOME, no dashboard
        temp_dir = tempfile.mkdtemp(prefix="bastion-ray-", dir=_temp_parent())
        options.update(include_dashboard=False, _temp_dir=temp_dir)
    try:
        ray.init(address=address, **options)
    except (RayError, OSError, ValueError) as exc:
        if temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)
        where = f"at {address}" if address else "on this machine"
        raise BastionError(f"could not start Ray {where}: {exc}") from None
    try:
        yield
    finally:
        ray.shutdown()
        if temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)


def _client_error(what: str, exc: RayTaskError) -> BastionError:
    """One line for a failure inside an actor: the task code's own error when it has one."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BastionError):
        return BastionError(f"{what}: {cause}")
    if isinstance(cause, BaseException):
        return BastionError(f"{what}: {type(cause).__name__}: {cause}")
    return BastionError(f"{what}: {str(exc).strip().splitlines()[-1]}")


class RayFederation:
    """Drives one workspace's federation to the end with its clients on Ray actors.

    ``workers`` actors (default: one per CPU of the Ray cluster) run the clients;
    ``on_round(round, federation)`` runs after every completed round.
    """

    def __init__(
        self,
        workspace: Path | str,
        *,
        workers: int | None = None,
        address: str | None = None,
        on_round: RayRoundCallback | None = None,
    ) -> None:
        self.workspace = Path(workspace).resolve()
        self.plan: Plan = load_plan(self.workspace)
        refuse_unsupported(self.plan)
        if workers is not None and workers < 1:
            raise BastionError(f"--workers must be at least 1, got {workers}")
        self.aggregator = build_aggregator(self.plan, self.workspace)
        self.requested_workers = workers
        self.address = address
        self.workers = 0  # known once Ray runs
        self._on_round = on_round
        self._states: dict[str, Any] = {}  # name -> ObjectRef of its ClientState
        self._cursor = 0  # roster position the in-process backend's next visit starts at
        self._stop_requested = False

    def stop(self) -> None:
        """End ``run`` after the round in progress (e.g. from ``on_round``)."""
        self._stop_requested = True

    def run(self) -> Aggregator:
        """Run every round and the final evaluation; returns the finished aggregator."""
        with ray_session(self.address):
            actors = self._start_workers()
            try:
                while not (self.aggregator.finished.is_set() or self._stop_requested):
                    before = self.aggregator.state.round_completed
                    self._run_round(actors)
                    self._report_rounds(before)
            finally:
                for actor in actors:
                    ray.kill(actor)
                self._states.clear()
        return self.aggregator

    def _start_workers(self) -> list[Any]:
        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        count = self.requested_workers or max(1, int(cpus))
        # More workers than CPUs share them, rather than wait for CPUs that never free up.
        share = min(1.0, cpus / count)
        actor_class = ray.remote(num_cpus=share)(ClientWorker)
        actors: list[Any] = [
            actor_class.remote(str(self.workspace), self.plan.canonical_hash())
            for _ in range(count)
        ]
        try:
            keeps_state = ray.get([actor.keeps_client_state.remote() for actor in actors])
        except RayTaskError as exc:
            raise _client_error("starting a Ray worker", exc) from None
        except RayError as exc:
            raise BastionError(f"starting a Ray worker failed: {_last_line(exc)}") from None
        self.workers = count
        if count > 1 and not all(keeps_state):
            log.warning(
                "%s keeps no per-client state (no client_state()/load_client_state()): what it "
                "carries from one client to the next (a random generator, say) passes between "
                "the clients each worker runs, so results depend on --workers",
                self.plan.task_runner.path,
            )
        return actors

    def _visit_order(self) -> list[tuple[int, str, Assignment]]:
        """This round's assigned clients in the order the in-process backend visits them:
        the roster, starting after the client that completed the previous round."""
        roster = self.plan.collaborator_names()
        order = []
        for offset in range(len(roster)):
            position = (self._cursor + offset) % len(roster)
            name = roster[position]
            assignment = self.aggregator.get_tasks(name)
            if assignment.action == "run":
                order.append((position, name, assignment))
        return order

    def _run_round(self, actors: list[Any]) -> None:
        order = self._visit_order()
        number = self.aggregator.current_round
        if not order:
            raise BastionError(
                f"Ray simulation stalled in round {number}: no collaborator has a task, "
                "yet the round did not complete"
            )
        model = ray.put(self.aggregator.model)  # once per round, shared by every actor
        in_flight: deque[tuple[str, Any]] = deque()
        for index, (_, name, assignment) in enumerate(order):
            actor = actors[index % len(actors)]
            sent, state = actor.run_client.options(num_returns=2).remote(
                name, assignment, model, self._states.get(name)
            )
            self._states[name] = state  # follows the client to whichever actor runs it next
            in_flight.append((name, sent))
            if len(in_flight) >= QUEUED_PER_WORKER * len(actors):
                self._replay(*in_flight.popleft())
        while in_flight:
            self._replay(*in_flight.popleft())
        del model
        if self.aggregator.current_round == number and not self.aggregator.finished.is_set():
            raise BastionError(
                f"Ray simulation stalled in round {number}: every assigned client ran, "
                "yet the round did not complete"
            )
        self._cursor = (order[-1][0] + 1) % len(self.plan.collaborator_names())

    def _replay(self, name: str, sent_ref: Any) -> None:
        """Feed what ``name`` sent into the aggregator through the in-process transport."""
        try:
            sent: ClientRound = ray.get(sent_ref)
        except RayTaskError as exc:
            raise _client_error(f"{name} (on a Ray worker)", exc) from None
        except RayError as exc:
            raise BastionError(f"{name}: its Ray worker failed: {_last_line(exc)}") from None
        client = InProcessClient(self.aggregator, name)
        for message in sent.messages:
            if message.failed is not None:
                accepted, reason = client.fail_task(sent.round, message.task, message.failed)
            elif message.declined is not None:
                accepted, reason = client.decline_task(
                    sent.round, message.task, message.declined, message.metrics
                )
            else:
                accepted, reason = client.send_result(
                    sent.round,
                    message.task,
                    message.example_count,
                    message.metrics,
                    message.weights,
                )
            if not accepted:
                log.warning(
                    "%s: %s of round %d not accepted: %s", name, message.task, sent.round, reason
                )
                break  # the client stopped there too; the aggregator dropped the rest

    def _report_rounds(self, completed_before: int) -> None:
        if self._on_round is None:
            return
        for number in range(completed_before + 1, self.aggregator.state.round_completed + 1):
            self._on_round(number, self)


def _last_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[-1] if lines else type(exc).__name__


def simulate_on_ray(
    workspace: Path | str,
    *,
    workers: int | None = None,
    address: str | None = None,
    on_round: RayRoundCallback | None = None,
) -> Aggregator:
    """Run the workspace's whole federation with its clients on Ray; see ``RayFederation``."""
    return RayFederation(workspace, workers=workers, address=address, on_round=on_round).run()


__all__ = ["RayFederation", "ray_session", "refuse_unsupported", "simulate_on_ray"]
