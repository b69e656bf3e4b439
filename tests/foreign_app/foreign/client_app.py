"""What a foreign ClientApp could do on a device: read its node config (the log store's path) and write it out."""

from pathlib import Path

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(message: Message, context: Context) -> Message:
    with Path(str(context.run_config["marker"])).open("a") as marker:
        marker.write(f"{context.node_config}\n")
    return Message(RecordDict(), reply_to=message)
