"""Asks every connected node once (a short TTL, so refused messages expire soon) and reports how many answered."""

from flwr.app import Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    nodes = list(grid.get_node_ids())
    messages = [Message(RecordDict(), dst_node_id=node, message_type="train", ttl=60.0) for node in nodes]
    replies = list(grid.send_and_receive(messages, timeout=float(context.run_config["timeout"])))
    print(f"foreign app: asked {len(nodes)} nodes, {sum(reply.has_content() for reply in replies)} answered")
