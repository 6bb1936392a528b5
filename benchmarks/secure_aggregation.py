"""Secure aggregation overhead against plain FedAvg, per collaborator and at the aggregator.

For each roster size and model size, one round is run twice on the same random updates:
plain FedAvg (the aggregator folds in float32 models) and secure aggregation (Bonawitz
et al. 2017, complete graph, and the SecAgg+ graph of Bell et al. 2020) through the same
classes the federation uses: ``UpdateCodec`` (weights applied before masking, fixed-point
quantization), ``SecAggClient``, ``SecAggServer`` and ``FedAvg.accumulate_secure_sum``.
Clients are simulated one after another in this process, so per-client figures are what
each site spends (sites work in parallel). Times are CPU seconds of each party's calls
(``time.process_time``), which a busy shared machine disturbs far less than wall time;
the network is not included, bytes are counted from the protocol messages.
The secure model is checked against the plain one within the quantization bound.
``check ms`` and ``check B`` are what the ConsistencyCheck round costs one client: signing
the survivor set plus verifying the forwarded signatures (CPU), and the survivor list,
its signature and the forwarded signatures (bytes sent and received).

    nice -n 10 .venv/bin/python benchmarks/secure_aggregation.py            # 10/50 x 1M/10M
    .venv/bin/python benchmarks/secure_aggregation.py --collaborators 10 --params 1000000
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric import ed25519

from bastion.algorithms.fedavg import FedAvg
from bastion.privacy.secagg.client import SecAggClient
from bastion.privacy.secagg.consistency import verified_signers
from bastion.privacy.secagg.messages import UnmaskingRequest
from bastion.privacy.secagg.server import SecAggServer
from bastion.privacy.secagg.session import quantizer_for, session_config
from bastion.privacy.secagg.stats import Stage
from bastion.privacy.secagg.update import UpdateCodec
from bastion.spec.secure_aggregation import SecureAggregationSpec

RESULTS = Path(__file__).parent / "results" / "secure_aggregation.json"
DELTA_STD = 0.01


def _update(seed: int, params: int) -> tuple[np.ndarray, int]:
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, DELTA_STD, params).astype(np.float32), int(rng.integers(100, 5000))


class CpuClock:
    """CPU seconds spent inside ``with clock(party):`` blocks (robust on a shared machine)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, party: str) -> Iterator[None]:
        began = time.process_time()
        try:
            yield
        finally:
            self.seconds[party] = self.seconds.get(party, 0.0) + time.process_time() - began


def plain_round(names: list[str], params: int) -> dict:
    """FedAvg over float32 models: what the aggregator spends, what each client uploads."""
    start = {"w": np.zeros(params, np.float32)}
    strategy = FedAvg()
    strategy.begin_round(start, 1)
    cpu = CpuClock()
    for seed, name in enumerate(names):
        delta, weight = _update(seed, params)
        model = {"w": start["w"] + delta}
        with cpu("server"):
            strategy.accumulate(name, model, float(weight))
    with cpu("server"):
        result = strategy.finalize()
    return {
        "model": result["w"],
        "server_seconds": cpu.seconds["server"],
        "client_bytes_sent": 4 * params,
    }


def secure_round(names: list[str], params: int, neighbours: int | None) -> dict:
    """The same round under secure aggregation; stage by stage, client by client."""
    spec = SecureAggregationSpec(neighbours=neighbours, max_weight=10_000, clip=0.25)
    start = {"w": np.zeros(params, np.float32)}
    codec = UpdateCodec(start, quantizer_for(spec, len(names), spec.clip), "examples", 10_000)
    config = session_config(spec, names, 1, 0, codec.vector_length, "benchmark")
    identities = {n: ed25519.Ed25519PrivateKey.generate() for n in names}
    public = {n: k.public_key() for n, k in identities.items()}
    clients = {
        n: SecAggClient(n, config, identities[n], lambda peer, _cred: public[peer]) for n in names
    }
    server = SecAggServer(config)
    cpu, masking, encoding, check = CpuClock(), CpuClock(), CpuClock(), CpuClock()

    for name, client in clients.items():
        with cpu(name):
            advert = client.advertise_keys()
        with cpu("server"):
            server.receive_advertise(name, advert)
    with cpu("server"):
        roster = server.close_advertise()
    for name, client in clients.items():
        with cpu(name):
            shares = client.share_keys(roster)
        with cpu("server"):
            server.receive_shares(name, shares)
    with cpu("server"):
        per_client = server.close_shares()
    for seed, name in enumerate(names):
        delta, weight = _update(seed, params)
        with encoding(name):
            vector, clipped = codec.encode({"w": delta}, weight)
        assert clipped == 0, "the benchmark's deltas must fit the clip range"
        with masking(name):
            message = clients[name].masked_input(per_client[name], vector)
        del vector
        with cpu("server"):
            server.receive_masked_input(name, message)
        del message
    with cpu("server"):
        survivors = server.close_masked_inputs()
    for name in survivors.survivors:
        with cpu(name), check(name):
            signed = clients[name].consistency_check(survivors)
        with cpu("server"):
            server.receive_signature(name, signed)
    with cpu("server"):
        requests = server.close_consistency()
    for name, request in requests.items():
        with check(name):  # the verification unmask() runs first, timed on its own
            signers = verified_signers(
                config, frozenset(request.survivors), request.signatures, public
            )
            assert len(signers) >= config.threshold
        with cpu(name):
            response = clients[name].unmask(request)
        with cpu("server"):
            server.receive_unmasking(name, response)
    with cpu("server"):
        result = server.finalize()
        summed = codec.decode(result.total, len(result.contributors))
        strategy = FedAvg()
        strategy.begin_round(start, 1)
        strategy.accumulate_secure_sum(
            summed.delta_sum, summed.total_weight, summed.contributors, 0
        )
        model = strategy.finalize()["w"]

    client_seconds = [cpu.seconds[n] + masking.seconds[n] + encoding.seconds[n] for n in names]
    return {
        "model": model,
        "bound": summed.error_bound / summed.total_weight,
        "threshold": config.threshold,
        "bits": codec.quantizer.bits,
        "client_seconds_mean": float(np.mean(client_seconds)),
        "client_seconds_max": float(np.max(client_seconds)),
        "client_masking_seconds_mean": float(np.mean(list(masking.seconds.values()))),
        "client_encode_seconds_mean": float(np.mean(list(encoding.seconds.values()))),
        "client_consistency_seconds_mean": float(np.mean(list(check.seconds.values()))),
        "client_consistency_bytes_mean": float(
            np.mean([_consistency_bytes(clients[n], r) for n, r in requests.items()])
        ),
        "client_bytes_sent_mean": float(
            np.mean([c.stats.total.bytes_sent for c in clients.values()])
        ),
        "client_bytes_received_mean": float(
            np.mean([c.stats.total.bytes_received for c in clients.values()])
        ),
        "server_seconds": cpu.seconds["server"],
        "server_stage_wall_seconds": {s.value: server.stats.stages[s].seconds for s in Stage},
    }


def _consistency_bytes(client: SecAggClient, request: UnmaskingRequest) -> int:
    """What ConsistencyCheck adds for one client: its stage, and the signatures forwarded."""
    stage = client.stats.stages[Stage.CONSISTENCY_CHECK]
    unsigned = UnmaskingRequest(request.survivors, {})
    forwarded = len(request.to_bytes()) - len(unsigned.to_bytes())
    return stage.bytes_sent + stage.bytes_received + forwarded


def secagg_plus_degree(n: int) -> int | None:
    """An even k near 2 log2 n (Bell et al.'s O(log n)), or None when that is every pair."""
    k = 2 * math.ceil(math.log2(n))
    return k if k < n - 1 else None


def run(collaborators: list[int], params_list: list[int], graphs: list[str]) -> list[dict]:
    rows = []
    for n in collaborators:
        names = [f"site-{i:03d}" for i in range(n)]
        for params in params_list:
            plain = plain_round(names, params)
            for graph in graphs:
                k = None if graph == "complete" else secagg_plus_degree(n)
                if graph == "secagg+" and k is None:
                    continue
                began = time.perf_counter()
                secure = secure_round(names, params, k)
                wall = time.perf_counter() - began
                error = float(np.max(np.abs(secure.pop("model") - plain["model"])))
                assert error <= secure["bound"] + 1e-6, (error, secure["bound"])
                row = {
                    "collaborators": n,
                    "params": params,
                    "graph": graph if k is None else f"secagg+ k={k}",
                    "plain_server_seconds": plain["server_seconds"],
                    "plain_client_bytes_sent": plain["client_bytes_sent"],
                    **secure,
                    "max_abs_error_vs_plain": error,
                    "bytes_expansion": secure["client_bytes_sent_mean"]
                    / plain["client_bytes_sent"],
                    "server_slowdown": secure["server_seconds"] / plain["server_seconds"],
                    "simulation_wall_seconds": wall,
                }
                rows.append(row)
                _print_row(row)
    return rows


def _print_header() -> None:
    print(
        f"{'n':>3} {'params':>9} {'graph':<14} {'client s':>9} {'mask s':>8} {'check ms':>8} "
        f"{'check B':>8} {'up MiB':>7} {'x bytes':>7} {'server s':>9} {'plain s':>8} "
        f"{'x server':>8} {'err':>9}"
    )


def _print_row(r: dict) -> None:
    print(
        f"{r['collaborators']:>3} {r['params']:>9,} {r['graph']:<14} "
        f"{r['client_seconds_mean']:>9.2f} {r['client_masking_seconds_mean']:>8.2f} "
        f"{r['client_consistency_seconds_mean'] * 1e3:>8.2f} "
        f"{r['client_consistency_bytes_mean']:>8.0f} "
        f"{r['client_bytes_sent_mean'] / 2**20:>7.1f} {r['bytes_expansion']:>7.3f} "
        f"{r['server_seconds']:>9.2f} {r['plain_server_seconds']:>8.2f} "
        f"{r['server_slowdown']:>8.1f} {r['max_abs_error_vs_plain']:>9.2e}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collaborators", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--params", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--graphs", nargs="+", default=["complete", "secagg+"])
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    _print_header()
    rows = run(args.collaborators, args.params, args.graphs)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                "benchmark": "secure_aggregation",
                "machine": {"python": platform.python_version(), "cpu": platform.processor()},
                "notes": "seconds are CPU seconds of each party's calls; per-client figures are "
                "one site's work (sites run in parallel); network time not included; bytes "
                "counted from the protocol messages",
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
