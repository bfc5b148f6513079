"""Runtime backends, one module per runtime, each implementing backends/base.py's Runner."""
