"""StreamService: open sessions on one node, replay, live push, acks and heartbeats."""
