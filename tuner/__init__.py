"""tuner: auto-tuning of DeepSpeed training configurations by measured trials.

The public API is re-exported here; the CLI in `tuner.cli` is a thin layer over it.
"""

__version__ = "0.1.0"
