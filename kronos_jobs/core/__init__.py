"""What every layer shares: names (states, queues, task names), the error tree, settings, routing, the
worker's identity. Imports nothing heavier than pydantic."""
