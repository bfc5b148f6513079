"""What the tests and benchmarks build and fetch: not used by the fox-edge commands, which never import it."""
