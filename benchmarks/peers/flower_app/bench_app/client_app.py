"""Trivial training: every weight nudged, as in benchmarks/scale.py's Bastion runner."""

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    arrays = msg.content["arrays"].to_numpy_ndarrays()
    for array in arrays:
        array += np.float32(0.001)
    content = RecordDict(
        {"arrays": ArrayRecord(arrays), "metrics": MetricRecord({"num-examples": 100})}
    )
    return Message(content=content, reply_to=msg)
