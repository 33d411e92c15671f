"""REST routes under /api/v1, one module per resource, plus the agent-facing artifact routes."""
