"""A ClientApp for the worker's tests: it counts the messages of its run in ``Context.state``
and fails when the message asks it to (after scribbling on the state, which must not stick)."""

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    count = context.state.config_records.get("count")
    seen = int(count["n"]) if count is not None else 0  # type: ignore[arg-type]
    if msg.content.config_records["config"].get("fail"):
        context.state["count"] = ConfigRecord({"n": -100})
        raise ValueError("asked to fail")
    context.state["count"] = ConfigRecord({"n": seen + 1})
    return Message(RecordDict({"metrics": MetricRecord({"n": seen + 1})}), reply_to=msg)
