"""tuner: auto-tuning of DeepSpeed training configurations by measured trials.

Modules follow the flow: space -> points -> dsconfig -> search/searcher -> trial (launch, worker)
-> store -> export. The CLI in `tuner.cli` is a thin layer over them; heavy imports (torch, Ray,
DeepSpeed) happen inside the functions that need them, so `tuner --help` and bad input answer fast.
"""

__version__ = "0.1.0"
