"""Attacks on the aggregator's resources by one identity, each over real mTLS on 127.0.0.1.

The figures (round times, bytes allocated) are printed for the issue's closing table.
"""

from __future__ import annotations

import gc
import logging
import os
import statistics
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from support.chunks import to_chunk
from support.servers import ServedAggregator, served_aggregator
from support.workspaces import make_workspace

from bastion.framing import iter_frames
from bastion.pki import Role, issue
from bastion.tensors import total_bytes
from bastion.transport import bastion_pb2 as pb
from bastion.transport import bastion_pb2_grpc as pb_grpc
from bastion.transport.limits import StreamLimits

TRAIN_ONLY = {"tasks": [{"name": "train", "kind": "train"}]}
ROUNDS = 2
WORK_SECONDS = 1.5  # an honest site's local training, the same in both runs
LIMITS = StreamLimits(idle_timeout=1.0, receive_deadline=60.0, streams_per_peer=4, upload_slots=2)


def _header(round_number: int, count: int = 100) -> pb.ResultChunk:
    return pb.ResultChunk(
        header=pb.ResultHeader(round=round_number, task="train", example_count=count)
    )


def _honest_site(
    served: ServedAggregator, name: str, times: dict[int, float], errors: list[str]
) -> None:
    """Ask for tasks, download, 'train' for WORK_SECONDS, upload: each round's work timed."""
    channel, stub = served.stub(name)
    plan_hash = served.plan.canonical_hash()
    try:
        done = 0
        while done < ROUNDS:
            reply = stub.GetTasks(pb.TasksRequest(plan_hash=plan_hash), timeout=30)
            if reply.action == pb.TasksReply.DONE:
                break
            if reply.action != pb.TasksReply.RUN or reply.round in times:
                time.sleep(0.05)
                continue
            started = time.monotonic()
            chunks = list(stub.GetModel(pb.ModelRequest(round=reply.round), timeout=30))
            model = {c.name: np.frombuffer(c.data, np.float32).reshape(c.shape) for c in chunks}
            time.sleep(WORK_SECONDS)
            update = {k: v + 1.0 for k, v in model.items()}
            messages = [_header(reply.round)] + [
                pb.ResultChunk(tensor=to_chunk(f)) for f in iter_frames(update, 4096)
            ]
            ack = stub.SendResult(iter(messages), timeout=30)
            if not ack.accepted:
                errors.append(f"{name} round {reply.round}: {ack.reason}")
            times[reply.round] = time.monotonic() - started
            done += 1
    except grpc.RpcError as exc:
        errors.append(f"{name}: {exc.code()} {exc.details()}")
    finally:
        channel.close()


def _stalled(first: list[pb.ResultChunk], release: threading.Event) -> Iterator[pb.ResultChunk]:
    yield from first
    release.wait(60)


def _run(
    workspace: Path, attack: bool
) -> tuple[dict[str, dict[int, float]], dict[int, float], dict[str, object]]:
    """One federation of site-1, site-2 (honest) and site-3; with ``attack``, site-3 stalls
    two uploads and opens idle streams every round, and mallory (a valid certificate of the
    CA, not on the roster) holds 40 idle streams."""
    times: dict[str, dict[int, float]] = {"site-1": {}, "site-2": {}}
    errors: list[str] = []
    seen: dict[str, object] = {"codes": [], "mallory": []}
    release = threading.Event()
    with served_aggregator(workspace, limits=LIMITS) as served:
        round_started: dict[int, float] = {}
        round_closed: dict[int, float] = {}
        channels = []
        if attack:
            channel, mallory = served.stub("mallory")
            channels.append(channel)
            idle = [
                mallory.SendResult.future(_stalled([], release), timeout=30) for _ in range(30)
            ] + [mallory.SecAggSend.future(_stalled([], release), timeout=30) for _ in range(10)]
            seen["mallory"] = idle
        threads = [
            threading.Thread(target=_honest_site, args=(served, name, times[name], errors))
            for name in times
        ]
        for thread in threads:
            thread.start()
        channel3, site3 = served.stub("site-3")
        channels.append(channel3)
        plan_hash = served.plan.canonical_hash()
        model = served.aggregator.model
        calls = []
        while not served.aggregator.finished.is_set():
            reply = site3.GetTasks(pb.TasksRequest(plan_hash=plan_hash), timeout=30)
            if reply.action == pb.TasksReply.DONE:
                break
            if reply.action != pb.TasksReply.RUN or reply.round in round_started:
                time.sleep(0.02)
                continue
            round_started[reply.round] = time.monotonic()
            if attack:
                partial = [
                    _header(reply.round),
                    pb.ResultChunk(tensor=to_chunk(next(iter_frames(model, 256)))),
                ]
                calls += [
                    site3.SendResult.future(_stalled(partial, release), timeout=30)
                    for _ in range(2)
                ]
                calls += [
                    site3.SendResult.future(_stalled([], release), timeout=30) for _ in range(6)
                ]
            else:
                time.sleep(WORK_SECONDS)
                update = {k: v + 1.0 for k, v in model.items()}
                messages = [_header(reply.round)] + [
                    pb.ResultChunk(tensor=to_chunk(f)) for f in iter_frames(update, 4096)
                ]
                assert site3.SendResult(iter(messages), timeout=30).accepted
            number = reply.round
            while (
                served.aggregator.current_round == number
                and not served.aggregator.finished.is_set()
            ):
                time.sleep(0.01)
            round_closed[number] = time.monotonic()
        for thread in threads:
            thread.join(60)
        release.set()
        seen["codes"] = [_code(c) for c in calls]
        seen["mallory"] = [_code(c) for c in seen["mallory"]]  # type: ignore[attr-defined]
        for channel in channels:
            channel.close()
    assert not errors, errors
    durations = {n: round_closed[n] - round_started[n] for n in round_closed}
    return times, durations, seen


def _code(call: grpc.Future) -> grpc.StatusCode:
    try:
        call.result(timeout=30)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@pytest.mark.serial
def test_one_identity_cannot_freeze_the_rounds(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    calm = make_workspace(
        tmp_path / "calm", collaborators=3, rounds=ROUNDS, plan_changes=TRAIN_ONLY
    )
    hostile = make_workspace(
        tmp_path / "hostile", collaborators=3, rounds=ROUNDS, plan_changes=TRAIN_ONLY
    )
    issue(hostile / "pki", "mallory", Role.COLLABORATOR)

    calm_work, calm_rounds, _ = _run(calm, attack=False)
    with caplog.at_level(logging.WARNING, logger="bastion.transport"):
        work, rounds, seen = _run(hostile, attack=True)

    undisturbed = statistics.mean(calm_rounds.values())
    print(f"\nundisturbed rounds {calm_rounds}, under attack {rounds} (seconds)")
    print(f"honest work undisturbed {calm_work}, under attack {work}")
    assert sorted(rounds) == list(range(1, ROUNDS + 1))
    for number, seconds in rounds.items():
        assert seconds < 2 * undisturbed, (number, seconds, undisturbed)
    for site, per_round in work.items():
        assert sorted(per_round) == list(range(1, ROUNDS + 1)), site
        assert max(per_round.values()) < 2 * max(calm_work[site].values()), site
    # mallory is refused before any of its streams is read: none holds a worker.
    assert set(seen["mallory"]) == {grpc.StatusCode.PERMISSION_DENIED}  # type: ignore[arg-type]
    codes = seen["codes"]
    # site-3: one upload at a time, at most 4 calls open; the stalled upload is cut.
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes  # type: ignore[operator]
    assert grpc.StatusCode.CANCELLED in codes  # type: ignore[operator]
    refusals = [r.getMessage() for r in caplog.records if "mallory" in r.getMessage()]
    # Logged once per peer and reason, with the certificate serial, not 40 times.
    assert 1 <= len(refusals) <= 4, refusals
    assert all("[serial " in line for line in refusals)
    assert any("idle" in r.getMessage() and "site-3" in r.getMessage() for r in caplog.records)


BIG_TASK = """
import numpy as np
from bastion.runners.numpy import NumpyRunner


class Big:
    def __init__(self) -> None:
        self.w = np.zeros((1024, 256), np.float32)
        self.b = np.zeros(256, np.float32)

    def get_weights(self):
        return {"w": self.w, "b": self.b}

    def set_weights(self, weights):
        self.w, self.b = weights["w"], weights["b"]


def build_runner(seed: int = 0) -> NumpyRunner:
    return NumpyRunner(Big())
"""


ATTACKER = """
import sys
import grpc
from support.servers import PlanHeaders
from bastion.pki import tls_files_for
from bastion.framing import Frame
from bastion.transport import bastion_pb2 as pb
from bastion.transport import bastion_pb2_grpc as pb_grpc
from bastion.transport import bastion_pb2_grpc as pb_grpc
from support.chunks import to_chunk
from bastion.transport.identity import channel_credentials
from bastion.transport.limits import PLAN_HEADER

target, pki, name, plan_hash, kind = sys.argv[1:]
channel = grpc.secure_channel(target, channel_credentials(*tls_files_for(pki, name).read()))
channel = grpc.intercept_channel(channel, PlanHeaders(((PLAN_HEADER, plan_hash),)))
stub = pb_grpc.FederationStub(channel)
assert stub.GetTasks(pb.TasksRequest(plan_hash=plan_hash), timeout=10).action == pb.TasksReply.RUN
header = pb.ResultChunk(header=pb.ResultHeader(round=1, task="train", example_count=100))
CHUNK = 256 << 10
chunk = bytes(CHUNK)

def oversized():
    yield header
    for name in ("w", "b"):  # two 512 MiB tensors named like the model's, in full chunks
        for offset in range(0, 512 << 20, CHUNK):
            yield pb.ResultChunk(tensor=to_chunk(Frame(name, "float32", (128 << 20,), offset, chunk)))

def many():
    yield header
    for index in range(100_000):  # zero-size tensors with long names
        frame = Frame(f"{index:06d}" + "x" * 1000, "float32", (0,), 0, b"")
        yield pb.ResultChunk(tensor=to_chunk(frame))

def overflow():
    yield header
    yield pb.ResultChunk(tensor=to_chunk(Frame("w", "float32", (0, 2**62, 2**62), 0, b"")))

try:
    ack = stub.SendResult({"oversized": oversized, "many": many, "overflow": overflow}[kind](), timeout=120)
    print(f"accepted={ack.accepted} {ack.reason[:200]}")
except grpc.RpcError as exc:
    print(f"{exc.code().name} {exc.details()}")
"""


def _attack(served: ServedAggregator, name: str, kind: str) -> tuple[int, str]:
    """Run one attack from another process; the peak of what this (the aggregator's)
    process allocated meanwhile, from tracemalloc."""
    gc.collect()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            ATTACKER,
            served.target,
            str(served.workspace / "pki"),
            name,
            served.plan.canonical_hash(),
            kind,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parents[1],
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]
            ),
        },
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return tracemalloc.get_traced_memory()[1] - base, done.stdout.strip()


def test_oversized_and_many_tensor_updates_allocate_less_than_twice_the_model(
    tmp_path: Path,
) -> None:
    workspace = make_workspace(
        tmp_path, collaborators=3, rounds=1, plan_changes=TRAIN_ONLY, task_code=BIG_TASK
    )
    # The aggregator's wire chunk (plan network.chunk_mib) is a quarter of the 1 MiB model.
    with served_aggregator(workspace, chunk_bytes=256 << 10) as served:
        model_bytes = total_bytes(served.aggregator.model)
        tracemalloc.start()
        try:
            big_peak, big_outcome = _attack(served, "site-1", "oversized")
            many_peak, many_outcome = _attack(served, "site-2", "many")
            _, overflow_outcome = _attack(served, "site-3", "overflow")
        finally:
            tracemalloc.stop()
    print(
        f"\nmodel {model_bytes} B; 2x512 MiB update: peak {big_peak} B ({big_outcome[:80]}); "
        f"100,000 named empty tensors: peak {many_peak} B ({many_outcome[:60]}); "
        f"shape (0, 2**62, 2**62): {overflow_outcome[:100]}"
    )
    assert "accepted=False" in big_outcome and "larger than the limit" in big_outcome
    assert "accepted=False" in many_outcome and "unexpected tensors" in many_outcome
    assert big_peak < 2 * model_bytes
    assert many_peak < 2 * model_bytes
    # A header whose shape overflows int64 is a refusal, not a crash (UNKNOWN).
    assert "accepted=False" in overflow_outcome and "larger than the limit" in overflow_outcome


def test_plan_is_checked_before_any_stream_is_read(tmp_path: Path) -> None:
    """A wrong plan hash in a call's metadata, or none from a site that never matched the
    plan, is refused at once: the (never-ending) stream is not read."""
    workspace = make_workspace(tmp_path, collaborators=2, rounds=1, plan_changes=TRAIN_ONLY)
    release = threading.Event()
    with served_aggregator(workspace, limits=LIMITS) as served:
        channel, stub = served.stub("site-1", plan_headers=False)
        wrong = (("x-bastion-plan-hash", "0" * 64),)
        for metadata in (wrong, ()):
            with pytest.raises(grpc.RpcError) as caught:
                stub.SendResult(_stalled([], release), metadata=metadata, timeout=10)
            assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert "plan mismatch" in stub_details(stub, wrong, release)
        channel.close()
    release.set()


def stub_details(
    stub: pb_grpc.FederationStub, metadata: tuple[tuple[str, str], ...], release: threading.Event
) -> str:
    try:
        stub.SecAggSend(_stalled([], release), metadata=metadata, timeout=10)
    except grpc.RpcError as exc:
        return str(exc.details())
    return ""


def test_a_refused_upload_leaves_no_reader_behind_while_its_site_keeps_sending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server reads large uploads a chunk ahead on a thread of its own (here every
    upload): when the intake refuses one mid-stream, the answer goes out and its reader
    ends, even though the site goes on sending."""
    monkeypatch.setattr("bastion.transport.server.READ_AHEAD_FROM_BYTES", 0)
    workspace = make_workspace(tmp_path, collaborators=2, rounds=1, plan_changes=TRAIN_ONLY)
    release = threading.Event()
    with served_aggregator(workspace, limits=LIMITS) as served:
        channel, stub = served.stub("site-1")
        plan_hash = served.plan.canonical_hash()
        reply = stub.GetTasks(pb.TasksRequest(plan_hash=plan_hash), timeout=30)
        while reply.action != pb.TasksReply.RUN:
            time.sleep(0.05)
            reply = stub.GetTasks(pb.TasksRequest(plan_hash=plan_hash), timeout=30)
        poisoned = {k: np.full_like(v, np.nan) for k, v in served.aggregator.model.items()}
        first = [_header(reply.round)] + [
            pb.ResultChunk(tensor=to_chunk(f)) for f in iter_frames(poisoned, 4096)
        ][:3]
        readers: list[str] = []
        sending = _trickled(first, release, on_each=lambda: readers.extend(_upload_readers()))
        ack = stub.SendResult(sending, timeout=30)
        assert not ack.accepted and "sent twice" in ack.reason  # refused at the first repeat
        assert readers  # the upload was read ahead
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _upload_readers():
            time.sleep(0.05)
        assert _upload_readers() == []
        channel.close()
    release.set()


def _trickled(
    messages: list[pb.ResultChunk], release: threading.Event, on_each: Callable[[], None]
) -> Iterator[pb.ResultChunk]:
    """``messages``, then their last again and again, until ``release``: a site that goes
    on sending after its result was refused (``on_each`` is called before each message)."""
    for message in messages:
        on_each()
        yield message
    while not release.wait(0.02):
        on_each()
        yield messages[-1]


def _upload_readers() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("bastion-upload-")]
