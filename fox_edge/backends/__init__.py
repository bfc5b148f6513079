"""Runtime backends behind fox_edge.runner.Runner: one module per runtime."""
