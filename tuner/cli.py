"""The `tuner` command: thin wrappers that parse, call the library, and print.

Exit codes: 0 success, 2 bad input (one line naming the key), 1 a run that produced nothing usable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from tuner import __version__
from tuner.errors import SpaceError

app = typer.Typer(
    help="Auto-tune DeepSpeed training: measure real trials over micro-batch, ZeRO stage, offload and "
    "activation checkpointing, keep every trial in an Optuna store, export the winning ds_config.json.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

StorageOpt = Annotated[
    str | None,
    typer.Option("--storage", envvar="TUNER_STORAGE", help="SQLAlchemy URL of the Optuna storage "
                 "(default: the space's `storage`, else sqlite:///tuner.sqlite3)."),
]  # fmt: skip


def _fail(exc: SpaceError) -> NoReturn:
    err.print(f"error: {exc}", markup=False, soft_wrap=True)
    raise typer.Exit(2)


def _version(value: bool) -> None:
    if value:
        out.print(f"tuner {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Auto-tune DeepSpeed training configurations."""


def _fmt(value: Any, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


class _Progress:
    """Prints one line per trial start and end, with the current best."""

    def __init__(self, objective: str, maximize: bool) -> None:
        self.objective, self.maximize = objective, maximize
        self.best: tuple[float, int] | None = None
        self.budget = 0
        self.finished = 0

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "plan":
            self.budget = data["budget"]
            out.print(
                f"{data['remaining']} point(s) to run, {self.budget} trial(s) in this run, on {data['accelerator']}"
            )
        elif kind == "prebuild":
            out.print("preparing DeepSpeed ops (compiled once, cached for later runs) ...")
        elif kind == "warning":
            err.print(f"warning: {data['message']}", markup=False)
        elif kind == "end":
            self._end(data)

    def _end(self, data: dict[str, Any]) -> None:
        self.finished += 1
        result = data["result"]
        head = f"[{self.finished}/{self.budget}] trial {data['number']} {data['point'].label()}:"
        if not result.ok:
            out.print(f"{head} FAIL {result.failure_category}: {result.failure_reason}", markup=False)
            return
        value = result.figures[self.objective]
        better = self.best is None or (value > self.best[0] if self.maximize else value < self.best[0])
        if better:
            self.best = (value, data["number"])
        assert self.best is not None
        f = result.figures
        mfu = f" MFU {f['mfu']:.1%}," if "mfu" in f else ""
        noisy = " NOISY" if f.get("noisy") else ""
        out.print(
            f"{head} {f['tokens_per_s']:,.0f} tokens/s, {f['tflops_per_device']:.3g} TFLOP/s/device,{mfu} "
            f"step {f['step_time_s']:.3f} s (cv {f['step_time_cv']:.1%} over {f['measured_steps']:.0f}{noisy}), "
            f"peak {f['peak_mem_gb']:.2f} GB, trial {result.duration_s:.0f} s of which fixed "
            f"{f['fixed_overhead_s']:.0f} s  (best: trial {self.best[1]}, {self.objective}={self.best[0]:,.4g})",
            markup=False,
        )


def _summary_table(study: Any, objective: str) -> Table:
    from optuna.trial import TrialState

    from tuner.store import measured_trials

    trials = measured_trials(study)
    maximize = study.direction.name == "MAXIMIZE"
    complete = sorted(
        (t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: float(t.value or 0.0), reverse=maximize
    )
    rest = [t for t in trials if t.state != TrialState.COMPLETE]
    table = Table(title=f"study {study.study_name}: {len(complete)} complete, {len(rest)} not", title_justify="left")
    numeric = ("#", "tokens/s", "TFLOP/s/dev", "step s", "cv", "peak GB")
    for name in ("#", "point", "state", "tokens/s", "TFLOP/s/dev", "step s", "cv", "peak GB", "failure"):
        table.add_column(name, justify="right" if name in numeric else "left")
    for t in complete + rest:
        a = t.user_attrs
        table.add_row(
            str(t.number), a.get("point", ""), t.state.name, _fmt(a.get("tokens_per_s"), 0),
            _fmt(a.get("tflops_per_device"), 3), _fmt(a.get("step_time_s"), 3),
            _fmt(a.get("step_time_cv"), 3) + ("!" if a.get("noisy") else ""), _fmt(a.get("peak_mem_gb"), 2),
            a.get("failure_category", ""),
        )  # fmt: skip
    return table


def _failure_lines(study: Any) -> list[str]:
    """One line per failed trial: its reason and where its log is."""
    from optuna.trial import TrialState

    from tuner.store import measured_trials

    lines = []
    for t in measured_trials(study, (TrialState.FAIL,)):
        a = t.user_attrs
        reason = f"{a.get('failure_category')}: {a.get('failure_reason')}"
        log = f" (log: {a['log_path']})" if a.get("log_path") else ""
        lines.append(f"  trial {t.number} {reason}{log}")
    return lines


@app.command()
def search(
    space_file: Annotated[Path, typer.Argument(help="The search-space YAML file.", show_default=False)],
    study: Annotated[
        str | None, typer.Option(help="Study name (default: the space's `study`, else the file's stem).")
    ] = None,
    storage: StorageOpt = None,
    address: Annotated[str | None, typer.Option(help="An existing Ray cluster (auto, HOST:PORT, ray://...).")] = None,
    run_dir: Annotated[Path, typer.Option(help="Where trial logs go (a folder per study).")] = Path("tuner_runs"),
    max_trials: Annotated[
        int | None, typer.Option(min=1, help="Most trials to launch in this run (overrides search.max_trials).")
    ] = None,
) -> None:
    """Run real DeepSpeed trials over the space and record every one in the Optuna storage."""
    from tuner.points import enumerate_points
    from tuner.space import DEFAULT_STORAGE, load_space
    from tuner.store import redact

    try:
        space = load_space(space_file, study=study, storage=storage)
        if space.storage is None:
            space = space.model_copy(update={"storage": DEFAULT_STORAGE})
        if max_trials is not None:
            space = space.model_copy(update={"search": space.search.model_copy(update={"max_trials": max_trials})})
        enumeration = enumerate_points(space)
        if not enumeration.valid:
            reasons = "; ".join(reason for reason, _ in enumeration.dropped_summary())
            raise SpaceError("space", f"no valid point: {reasons}")
    except SpaceError as exc:
        _fail(exc)
    assert space.storage is not None and space.study is not None
    out.print(f"study {space.study} in {redact(space.storage)}", markup=False)
    out.print(f"{len(enumeration.valid)} valid point(s); {len(enumeration.dropped)} dropped", markup=False)
    for reason, count in enumeration.dropped_summary():
        out.print(f"  dropped {count}: {reason}", markup=False)

    import optuna

    from tuner.search import run_search

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    progress = _Progress(space.search.objective, space.direction == "maximize")
    try:
        searched = run_search(space, space_file, run_dir / space.study, progress, address=address)
    except SpaceError as exc:
        _fail(exc)
    out.print(_summary_table(searched.study, space.search.objective), soft_wrap=False)
    failed = _failure_lines(searched.study)
    if failed:
        out.print("failures:\n" + "\n".join(failed), markup=False)
    from tuner.store import best_trial

    best = best_trial(searched.study)
    if searched.interrupted:
        err.print("interrupted: running trials were stopped and recorded; run the same command to continue")
        raise typer.Exit(130)
    if best is None:
        err.print("error: no trial completed; see the failures above and the logs under " + str(run_dir))
        raise typer.Exit(1)
    out.print(
        f"best: trial {best.number} {best.user_attrs.get('point')} "
        f"{space.search.objective}={best.value:,.4g}\n"
        f"export it: tuner export --study {space.study} --storage {redact(space.storage)} --output ds_config.json",
        markup=False,
    )


@app.command()
def export(
    study: Annotated[str, typer.Option(help="The study to export from.", show_default=False)],
    output: Annotated[Path, typer.Option(help="Where to write the ds_config JSON.", show_default=False)],
    storage: StorageOpt = None,
    trial: Annotated[int | None, typer.Option(help="Export this trial number instead of the best.")] = None,
) -> None:
    """Write the best (or a chosen) trial's complete ds_config.json and its provenance file."""
    from tuner.export import export as do_export
    from tuner.space import DEFAULT_STORAGE
    from tuner.store import load_study, open_storage

    url = storage or DEFAULT_STORAGE
    try:
        found = load_study(open_storage(url, "--storage"), study)
        chosen, prov = do_export(found, url, output, trial)
    except SpaceError as exc:
        _fail(exc)
    out.print(f"wrote {output} (trial {chosen.number}: {chosen.user_attrs.get('point')}) and {prov}", markup=False)


def run() -> None:
    """Console-script entry point."""
    app(prog_name="tuner")


if __name__ == "__main__":
    run()
