"""FedAvg over every SuperNode, no evaluation; each round's seconds go to ``timings-file``."""

import json
import time

import numpy as np
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


class TimedFedAvg(FedAvg):
    """FedAvg that notes when each round's training starts and when it is aggregated."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.started: dict[int, float] = {}
        self.rounds: list[float] = []

    def configure_train(self, server_round, arrays, config, grid):
        self.started[server_round] = time.perf_counter()
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        result = super().aggregate_train(server_round, replies)
        self.rounds.append(time.perf_counter() - self.started[server_round])
        return result


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = context.run_config
    nodes = int(config["clients"])  # waits until that many SuperNodes are connected
    strategy = TimedFedAvg(
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_train_nodes=nodes,
        min_available_nodes=nodes,
    )
    initial = ArrayRecord([np.zeros(int(config["params"]), dtype=np.float32)])
    strategy.start(grid=grid, initial_arrays=initial, num_rounds=int(config["num-server-rounds"]))
    out = str(config["timings-file"])
    if out:
        with open(out, "w") as handle:
            json.dump({"round_seconds": strategy.rounds, "nodes": nodes}, handle)
