"""Built-in public-domain texts (see fox_edge/texts.py)."""
