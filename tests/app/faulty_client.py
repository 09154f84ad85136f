"""A ClientApp that wraps fedwon's and misbehaves on purpose: partition 1 raises, partition 2
returns NaN weights. Importable, so any engine can load it by reference."""

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedwon import client_app as real

app = ClientApp()
RAISES, NAN = 1, 2


@app.train()
def train(msg: Message, context: Context) -> Message:
    pid = int(context.node_config["partition-id"])
    if pid == RAISES:
        raise RuntimeError("simulated client crash")
    reply = real.train(msg, context)
    if pid == NAN:
        arrays = reply.content["arrays"]
        poisoned = ArrayRecord(
            {k: Array(np.full_like(v.numpy(), np.nan)) for k, v in arrays.items()}
        )
        content = RecordDict(
            {
                "arrays": poisoned,
                "metrics": reply.content["metrics"],
                "client": reply.content["client"],
            }
        )
        return Message(content, reply_to=msg)
    return reply


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return real.evaluate_step(msg, context)
