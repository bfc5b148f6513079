"""Converters from a Hugging Face checkpoint to on-device formats: one module per format."""
