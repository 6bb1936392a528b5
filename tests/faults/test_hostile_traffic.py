"""Hostile traffic: a gRPC fuzzer with a valid identity, and a flood of connections without one."""

from __future__ import annotations

import itertools
import socket
import ssl
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import pytest
from faults.harness import FULL, FaultFederation, rss_and_fds
from faults.results import record
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.federations import checkpoint_state

from bastion.transport import bastion_pb2 as pb
from bastion.transport.identity import channel_credentials

# method -> (call shape, request type)
METHODS = {
    "GetTasks": ("unary", pb.TasksRequest),
    "GetModel": ("server_stream", pb.ModelRequest),
    "SendResult": ("client_stream", pb.ResultChunk),
    "AttestAggregator": ("unary", pb.AggregatorChallenge),
    "AttestCollaborator": ("unary", pb.CollaboratorEvidence),
    "SecAggSend": ("client_stream", pb.SecAggPart),
    "SecAggFetch": ("server_stream", pb.SecAggPoll),
    "Heartbeat": ("unary", pb.HeartbeatRequest),
}
# What a malformed, refused or cut request may get back; UNKNOWN or INTERNAL would mean an
# exception escaped the transport's error table.
EXPECTED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNAVAILABLE,
}

u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
names = st.text(max_size=40)
metrics = st.dictionaries(names, st.floats(), max_size=4)
tensor = st.builds(
    pb.TensorChunk,
    name=st.sampled_from(["w", "b", "pad", "", "../w", "w\x00"]) | names,
    dtype=st.sampled_from(["float32", "float64", "int8", "bool", "bogus", ""]),
    shape=st.lists(st.integers(-3, 2**40), max_size=5),
    offset=u64,
    data=st.binary(max_size=4096),
)
header = st.builds(
    pb.ResultHeader,
    round=st.integers(0, 6) | u32,
    task=st.sampled_from(["train", "validate_global", "validate_local", "x"]),
    example_count=st.integers(0, 10) | u64,
    metrics=metrics,
    declined=st.sampled_from(["", "budget"]),
    failed=st.sampled_from(["", "boom"]),
)
chunk = st.one_of(
    st.builds(pb.ResultChunk, header=header), st.builds(pb.ResultChunk, tensor=tensor)
)


def _message(kind: type) -> st.SearchStrategy[bytes]:
    """Valid encodings (random fields, any order), truncations of them, and plain garbage."""
    if kind is pb.ResultChunk:
        valid = chunk.map(lambda m: m.SerializeToString())
    elif kind is pb.ModelRequest:
        valid = st.builds(pb.ModelRequest, round=u32).map(lambda m: m.SerializeToString())
    elif kind is pb.HeartbeatRequest:
        valid = st.builds(pb.HeartbeatRequest, round=u32).map(lambda m: m.SerializeToString())
    else:
        valid = st.just(kind().SerializeToString())
    cut = st.tuples(valid, st.integers(0, 64)).map(lambda t: t[0][: max(0, len(t[0]) - t[1])])
    return st.one_of(valid, cut, st.binary(max_size=2048))


request = st.sampled_from(sorted(METHODS)).flatmap(
    lambda m: st.tuples(st.just(m), st.lists(_message(METHODS[m][1]), min_size=1, max_size=8))
)


def _call(channel: grpc.Channel, method: str, payloads: list[bytes]) -> str:
    shape = METHODS[method][0]
    path = f"/bastion.v1.Federation/{method}"
    same = {"request_serializer": None, "response_deserializer": None}
    try:
        if shape == "unary":
            channel.unary_unary(path, **same)(payloads[0], timeout=3)
        elif shape == "server_stream":
            for _ in itertools.islice(
                channel.unary_stream(path, **same)(payloads[0], timeout=3), 200
            ):
                pass
        else:
            channel.stream_unary(path, **same)(iter(payloads), timeout=3)
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()  # type: ignore[attr-defined]
        if code == grpc.StatusCode.INTERNAL and "deserializing request" in str(exc.details()):  # type: ignore[attr-defined]
            return "GRPC_REJECTED_UNPARSABLE"  # gRPC's own answer to bytes that are no protobuf
        if code not in EXPECTED:
            print(f"FUZZ unexpected {code.name} from {method}: {exc.details()}")  # type: ignore[attr-defined]
        return code.name
    return "OK"


@pytest.mark.slow
def test_fuzzer_with_a_valid_identity(tmp_path: Path) -> None:
    """Site 3's identity (on the roster, never running honestly) sends malformed, truncated,
    oversized and out-of-order messages for a bounded time; the federation of sites 1 and 2
    finishes, only site 3 can be blamed, the aggregator's fds and memory stay bounded."""
    # Enough rounds to outlast the fuzzing (60 s under make faults): it targets a live round.
    run = FaultFederation(
        tmp_path,
        collaborators=3,
        rounds=12 if FULL else 3,
        plan_changes={"timeouts": {"round_seconds": 8}},
    )
    pki = run.workspace / "pki"
    try:
        port = run.start_aggregator()
        run.watcher.start()
        for name in ("site-1", "site-2"):
            run.start_collaborator(name)
        aggregator = run.federation.aggregator_process
        assert aggregator is not None
        _, fds_before = rss_and_fds(aggregator.pid)
        credentials = channel_credentials(
            (pki / "ca.crt").read_bytes(),
            (pki / "site-3.crt").read_bytes(),
            (pki / "site-3.key").read_bytes(),
        )
        options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
        seen: Counter[str] = Counter()
        budget = time.monotonic() + (60 if FULL else 15)
        with grpc.secure_channel(f"127.0.0.1:{port}", credentials, options=options) as channel:
            # Oversized: one message far past the per-message limit.
            seen[_call(channel, "SendResult", [b"\x12" + b"\xff" * (40 * 1024 * 1024)])] += 1

            @settings(
                max_examples=400 if FULL else 120,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            )
            @given(request)
            def fuzz(call: tuple[str, list[bytes]]) -> None:
                if time.monotonic() > budget or aggregator.poll() is not None:
                    return
                seen[_call(channel, *call)] += 1

            fuzz()
        assert aggregator.poll() in (None, 0), "the fuzzer crashed the aggregator"
        if aggregator.poll() is None:
            _, fds_after = rss_and_fds(aggregator.pid)
            assert fds_after <= fds_before + 8, (fds_before, fds_after)
        print(f"FUZZ status codes: {dict(seen)}")
        unexpected = {
            c: n
            for c, n in seen.items()
            if c not in ("OK", "GRPC_REJECTED_UNPARSABLE") and grpc.StatusCode[c] not in EXPECTED
        }
        assert not unexpected, f"escaped the error table: {unexpected}"
        codes = run.finish(timeout=180)
        assert codes == {"aggregator": 0, "site-1": 0, "site-2": 0}, codes
        state = checkpoint_state(run.last)
        assert state["round_completed"] == run.rounds and state["finished"]
        assert not run.watcher.violations
        for entry in run.records():
            if entry.get("event") == "round":
                for kind in ("rejected", "failed"):
                    assert set(entry[kind]) <= {"site-3"}, entry
        record(
            "hostile traffic",
            f"gRPC fuzzer, site-3's valid identity, {sum(seen.values())} calls",
            f"finished; status codes {sorted(seen)}; only site-3 could be blamed",
            0,
        )
    finally:
        run.close()


def _flood(port: int, ca: Path, count: int) -> tuple[int, int]:
    """``count`` connections without a client certificate, half plain TCP with garbage, half TLS;
    all held open at once, then closed. (refused, completed TLS handshakes)."""
    held: list[socket.socket] = []
    refused = handshakes = 0
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = False
    context.set_alpn_protocols(["h2"])
    for index in range(count):
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=2)
        except OSError:
            refused += 1
            continue
        if index % 2:
            sock.sendall(b"\x16\x03\x01\xff\xff" + b"\x00" * 512)
            held.append(sock)
            continue
        try:
            tls = context.wrap_socket(sock)
            tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            # TLS 1.3: the client's side of the handshake ends before the server has checked
            # the (missing) client certificate; the refusal is the alert or EOF that follows.
            if tls.recv(1):
                handshakes += 1
            held.append(tls)
        except (OSError, ssl.SSLError):
            refused += 1
            sock.close()
    for sock in held:
        sock.close()
    return refused, handshakes


@pytest.mark.slow
def test_flood_without_certificates(tmp_path: Path, baseline: dict[str, np.ndarray]) -> None:
    # Training that lasts: the flood and the reaping must happen while the aggregator serves
    # (with tasks delivered at once, three rounds of the bare model end within a second).
    run = FaultFederation(tmp_path, delay=3.0)
    try:
        port = run.start()
        run.wait_round(1)
        aggregator = run.federation.aggregator_process
        assert aggregator is not None
        rss_before, fds_before = rss_and_fds(aggregator.pid)
        refused, handshakes = _flood(port, run.workspace / "pki" / "ca.crt", 600 if FULL else 200)
        time.sleep(2.0)  # the server reaps the dead connections
        assert aggregator.poll() is None, "the federation ended before the flood was measured"
        rss_after, fds_after = rss_and_fds(aggregator.pid)
        codes = run.finish()
        run.assert_invariants(codes, baseline)
        assert handshakes == 0, "a TLS session without a client certificate got data through"
        assert fds_after <= fds_before + 8, (fds_before, fds_after)
        record(
            "hostile traffic",
            "connections without a certificate (half TLS, half garbage), held then closed",
            f"finished, = undisturbed; none got data through; aggregator fds "
            f"{fds_before} -> {fds_after}, RSS {rss_before >> 20} -> {rss_after >> 20} MiB",
            run.lost_rounds(),
        )
    finally:
        run.close()
