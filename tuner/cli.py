"""The `tuner` command: thin wrappers that parse, call the library, and print.

Exit codes: 0 success, 2 bad input (one line naming the key), 1 a run that produced nothing usable.
"""

from __future__ import annotations

import os
import shlex
from concurrent.futures import Future
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from tuner import __version__
from tuner.errors import SpaceError

app = typer.Typer(
    help="Auto-tune DeepSpeed training: measure real trials over micro-batch, ZeRO stage, offload and "
    "activation checkpointing, keep every trial in an Optuna store, export the winning ds_config.json.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False, soft_wrap=True, emoji=False)  # a message's `:x:` stays as written
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)


def _tables() -> Console:
    """Where tables go: stdout at least 150 columns wide, so a pipe or a log (80 columns to rich) does not cut
    a column to `COMPL…`."""
    return Console(highlight=False, emoji=False, width=max(out.width, 150))


StorageOpt = Annotated[
    str | None,
    typer.Option("--storage", envvar="TUNER_STORAGE", help="SQLAlchemy URL of the Optuna storage "
                 "(default: the space's `storage`, else sqlite:///tuner.sqlite3)."),
]  # fmt: skip


def _fail(exc: SpaceError) -> NoReturn:
    err.print(f"error: {exc}", markup=False, soft_wrap=True)
    raise typer.Exit(2)


def _preflight(space: Any, enumeration: Any, accelerator: str) -> None:
    """DeepSpeed's parser on the base config (a SpaceError for its first problem), then one warning per base
    config key the tuned keys replace."""
    from tuner.preflight import base_config_overrides, check_base_config

    if enumeration.valid:
        check_base_config(space, enumeration.valid, accelerator)
    for line in base_config_overrides(space):
        err.print(f"warning: {line}", markup=False)


def _checks_verdict(space: Any, enumeration: Any, accelerator: str) -> str:
    """The name under which a pass of `_slow_checks` on this space and installation is kept (tuner.verdicts)."""
    from tuner import verdicts

    inputs = {
        "space": space.model_dump(mode="json", exclude={"study", "storage", "search"}),
        "accelerator": accelerator,
        "points": [point.params() for point in enumeration.valid],
    }
    return verdicts.key("checks", inputs)


def _slow_checks(space: Any, enumeration: Any, accelerator: str, verdict: str) -> None:
    """What `tuner search` checks with transformers and DeepSpeed (their imports take seconds): the model config,
    then DeepSpeed's parser on the base config (without the warnings: they are printed once it passed). The
    pass is kept under `verdict`; then the study store's own imports, before the caller creates it."""
    from tuner import verdicts
    from tuner.preflight import check_base_config
    from tuner.space import check_model_config, model_check_deferred
    from tuner.store import preload_storage_modules

    if model_check_deferred(space):
        check_model_config(space)
    check_base_config(space, enumeration.valid, accelerator)
    verdicts.write(verdict, {"passed": True})
    preload_storage_modules()


def _checked(checks: Future[None], space: Any, enumeration: Any) -> None:
    """Wait for `_slow_checks` (its SpaceError is raised here); then the base config's replaced keys, the study
    and its points."""
    from tuner.preflight import base_config_overrides
    from tuner.store import redact

    checks.result()
    for line in base_config_overrides(space):
        err.print(f"warning: {line}", markup=False)
    out.print(f"study {space.study} in {redact(space.storage)}", markup=False)
    out.print(f"{len(enumeration.valid)} valid point(s); {len(enumeration.dropped)} dropped", markup=False)
    for reason, count in enumeration.dropped_summary():
        out.print(f"  dropped {count}: {reason}", markup=False)


def _check_run_dir(folder: Path) -> None:
    """The study's log folder must be one that can be created here: found out before the study is."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise SpaceError("--run-dir", f"{existing} is a file; the trials' logs need a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SpaceError("--run-dir", f"cannot create {folder}: {existing} is not writable")


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
    no_prune: Annotated[
        bool, typer.Option("--no-prune", help="Launch points the memory model predicts not to fit.")
    ] = False,
) -> None:
    """Run real DeepSpeed trials over the space and record every one in the Optuna storage."""
    from tuner.points import enumerate_points
    from tuner.space import DEFAULT_STORAGE, load_space

    try:
        space = load_space(space_file, study=study, storage=storage, check_model=False)
        if space.storage is None:
            space = space.model_copy(update={"storage": DEFAULT_STORAGE})
        if max_trials is not None:
            space = space.model_copy(update={"search": space.search.model_copy(update={"max_trials": max_trials})})
        enumeration = enumerate_points(space)
        if not enumeration.valid:
            reasons = "; ".join(reason for reason, _ in enumeration.dropped_summary())
            raise SpaceError("space", f"no valid point: {reasons}")
        _check_run_dir(run_dir / str(space.study))
    except SpaceError as exc:
        _fail(exc)
    assert space.storage is not None and space.study is not None
    from concurrent.futures import ThreadPoolExecutor

    from tuner import verdicts
    from tuner.devices import detect_accelerator
    from tuner.ray_start import connect_ray
    from tuner.store import preload_storage_modules

    accelerator = detect_accelerator(space)
    verdict = _checks_verdict(space, enumeration, accelerator)
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tuner-checks")
    # The two threads never import the same package at once (a module one thread is half-way through importing
    # is an ImportError in the other, seen with SQLAlchemy): the thread's work is joined before the main thread
    # imports Optuna's or SQLAlchemy's modules, and Ray's start imports none of the thread's.
    if verdicts.read(verdict) is not None:
        # Passed on this installation before: Ray starts first (a SQLite store is created after it, so a trial
        # Ray cannot place writes nothing), with Alembic's imports beside it; then Ray Tune's and Optuna's, while
        # Ray's own processes still start.
        checks = pool.submit(preload_storage_modules)
        try:
            if space.storage.startswith("sqlite"):  # another store is reached before Ray, in run_search
                connect_ray(address, accelerator, space.hardware.gpus_per_trial)
        except SpaceError as exc:
            _fail(exc)
        checks.result()
        import optuna

        from tuner.search import run_search
    else:
        import optuna

        from tuner.search import run_search

        checks = pool.submit(_slow_checks, space, enumeration, accelerator, verdict)  # while Ray starts
    pool.shutdown(wait=False)
    from tuner.progress import Progress

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    progress = Progress(out, err, space.objectives[0])
    try:
        searched = run_search(
            space, space_file, run_dir / space.study, progress, address=address, prune=False if no_prune else None,
            checked=lambda: _checked(checks, space, enumeration),
        )  # fmt: skip
    except SpaceError as exc:
        _fail(exc)
    from tuner.ranking import rank_study
    from tuner.summary import best_line, failure_lines, front_table, summary_table

    ranking = rank_study(searched.study)  # the table, the front and the best line all in this one order
    _tables().print(summary_table(searched.study, ranking), soft_wrap=False)
    if len(space.objectives) > 1:
        front = front_table(searched.study, space.objectives, ranking)
        out.print(f"Pareto front over {', '.join(space.objectives)}: {front.row_count} trial(s)", markup=False)
        _tables().print(front, soft_wrap=False)
    failed = failure_lines(ranking)
    if failed:
        out.print("failures:\n" + "\n".join(failed), markup=False)
    if searched.interrupted:
        err.print("interrupted: running trials were stopped and recorded; run the same command to continue")
        raise typer.Exit(130)
    best = best_line(ranking, space.objectives, space.study, space.storage)
    if best is None:
        err.print("error: no trial completed; see the failures above and the logs under " + str(run_dir))
        raise typer.Exit(1)
    out.print(best, markup=False)


def _plan_without_model(space: Any, enumeration: Any, as_json: bool) -> None:
    """A script space that describes no model (or no sequence length): nothing to predict, its points listed."""
    import json

    why = "no model: is described" if not space.has_model else "no data.sequence_length: is given"
    message = (
        f"{space.script}: the memory of a script workload is learned from its trials ({why.replace(':', '')}); "
        "out-of-memory trials still rule out the points that need at least as much"
    )
    if as_json:
        points = [{"point": p.params(), "label": p.label()} for p in enumeration.valid]
        summary = {"points": len(enumeration.valid) + len(enumeration.dropped), "invalid": len(enumeration.dropped)}
        out.print(json.dumps({"script": space.script, "note": message, "points": points, "summary": summary},
                             indent=2), markup=False, soft_wrap=True)  # fmt: skip
        return
    out.print(message, markup=False)
    for point in enumeration.valid:
        out.print(f"  {point.label()}", markup=False)
    out.print(
        f"{len(enumeration.valid) + len(enumeration.dropped)} point(s) in the space: {len(enumeration.dropped)} "
        f"invalid, {len(enumeration.valid)} to run",
        markup=False,
    )


def _model_line(s: Any, setup: Any, kind: str, sequence: str, extra: str = "") -> str:
    """The plan's first line: the model as counted, the ranks, the precision and the sequence length(s)."""
    return (
        f"model {s.model_type}: {s.num_parameters / 1e6:,.1f}M parameters ({s.embedding_parameters / 1e6:,.1f}M "
        f"embedding, largest layer {s.largest_layer_parameters / 1e6:,.1f}M), {s.num_layers} layers, hidden "
        f"{s.hidden_size}, {s.attention} attention{extra}; {setup.ranks} {kind} rank(s), {setup.precision}, "
        f"sequence {sequence}"
    )


def _max_context(
    space: Any,
    space_file: Path,
    shape: Any,
    setup: Any,
    enumeration: Any,
    budget: Any,
    calibrations: Any,
    as_json: bool,
    hardware: dict[str, Any],
) -> None:
    """`tuner plan --max-context`: the longest sequence each family is predicted to fit (tuner.max_context)."""
    import dataclasses
    import json

    from tuner.max_context import max_context
    from tuner.plan_view import max_context_json, max_context_table
    from tuner.workload.hf_causal_lm import build_config

    try:
        if budget.device_gb is None:
            raise SpaceError("hardware.device_memory_gb", "--max-context needs the memory of one device to fit")
        positions = getattr(build_config(space.model_config_dict), "max_position_embeddings", None)
        if not isinstance(positions, int) or positions < 1:
            raise SpaceError(
                "model.config.max_position_embeddings", "--max-context searches up to it: set the model's longest"
            )
    except SpaceError as exc:
        _fail(exc)
    answers = max_context(shape, setup, enumeration.valid, budget, positions, calibrations)
    if as_json:
        header = {"space": str(space_file), "model": dataclasses.asdict(shape), "budget": dataclasses.asdict(budget),
                  "hardware": hardware}  # fmt: skip
        out.print(json.dumps(max_context_json(answers, header), indent=2), markup=False, soft_wrap=True)
        return
    out.print(_model_line(shape, setup, setup.accelerator, "searched per family"), markup=False)
    wide = Console(highlight=False, emoji=False, width=max(out.width, 150))
    wide.print(max_context_table(answers, budget, positions), soft_wrap=False)
    out.print(
        f"{len(answers)} famil{'y' if len(answers) == 1 else 'ies'} of {len(enumeration.valid)} valid point(s); "
        "a family's context does not depend on the global batch",
        markup=False,
    )


@app.command()
def plan(
    space_file: Annotated[Path, typer.Argument(help="The search-space YAML file.", show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
    accelerator: Annotated[
        str | None, typer.Option(help="cuda or cpu: plan for this device kind (default: the space's, else detected).")
    ] = None,
    study: Annotated[
        str | None, typer.Option(help="Calibrate with this study's measured trials (in --storage).")
    ] = None,
    storage: StorageOpt = None,
    max_context: Annotated[
        bool,
        typer.Option(
            "--max-context",
            help="For each family (the main knobs but micro-batch and sequence length), the longest "
            "sequence_length predicted to fit at micro-batch 1, up to the model's max_position_embeddings.",
        ),
    ] = False,
    device: Annotated[
        str | None,
        typer.Option(
            help="Plan on this GPU instead of the space's (what-if): h100-80gb, a100-40gb, a100-80gb, h200, l40s, l4.",
            show_default=False,
        ),
    ] = None,
    ranks: Annotated[
        str | None,
        typer.Option(
            help="Plan for this many ranks per trial instead of hardware.gpus_per_trial "
            "(nodes of 8 devices beyond one).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Predict every point's memory and FLOPs from the architecture alone; nothing runs, no GPU needed."""
    import json

    from tuner.calibration import Measured, calibrate
    from tuner.devices import detect_accelerator
    from tuner.plan import device_budget, estimate_setup, plan_space, prune_margin
    from tuner.points import enumerate_points
    from tuner.search import memory_budget
    from tuner.space import DEFAULT_STORAGE, load_space
    from tuner.whatif import what_if
    from tuner.workload.hf_causal_lm import model_shape

    try:
        space = load_space(space_file)
        if accelerator not in (None, "cuda", "cpu"):
            raise SpaceError("--accelerator", f"cuda or cpu is allowed, not {accelerator!r}")
        hardware = what_if(space, accelerator, device, ranks)  # the space's, or the what-if's
        space = hardware.space
        kind = accelerator or detect_accelerator(space)
        enumeration = enumerate_points(space)
        _preflight(space, enumeration, kind)
        if max_context and not space.plans_memory:
            raise SpaceError("--max-context", "needs the model's architecture (model.config) to predict memory")
        if not space.plans_memory:
            _plan_without_model(space, enumeration, as_json)
            return
        shape = model_shape(space.model_config_dict, space.model.options() if space.model else None)
        setup = estimate_setup(space, kind)
        calibrations = None
        measured: list[Measured] = []
        if study is not None:
            from tuner.store import load_study, measured_memory, open_storage

            found = load_study(
                open_storage(storage or space.storage or DEFAULT_STORAGE, "--storage", existing=True), study
            )
            measured = measured_memory(found)
            calibrations = calibrate(shape, setup, measured)
    except SpaceError as exc:
        _fail(exc)
    device_gb = hardware.device_gb or memory_budget(space, kind)  # a what-if device: its card, not this node's
    budget = device_budget(device_gb, space.hardware.host_memory_gb, prune_margin(space, kind), kind)
    budget = budget.with_measured_overhead([m.overhead_gb for m in measured])
    if not as_json:
        out.print(hardware.describe(kind), markup=False)
    if max_context:
        seen = hardware.as_dict(kind)
        _max_context(space, space_file, shape, setup, enumeration, budget, calibrations, as_json, seen)
        return
    result = plan_space(shape, setup, enumeration, budget, calibrations)
    from tuner.plan_view import plan_json, plan_table

    if as_json:
        shown = {**plan_json(result, space_file), "hardware": hardware.as_dict(kind)}
        out.print(json.dumps(shown, indent=2), markup=False, soft_wrap=True)
        return
    s = result.shape
    a = s.adapters
    lora = (
        f"; LoRA r={a.rank} on {', '.join(a.target_modules)}: {a.trainable_parameters / 1e6:,.3f}M trainable "
        f"({a.trainable_parameters / s.num_parameters:.2%}), the base frozen"
        if a
        else ""
    )
    lengths = space.data.lengths
    sequence = str(lengths[0]) if len(lengths) == 1 else f"{', '.join(map(str, lengths))} (a row per length)"
    out.print(f"{_model_line(s, setup, kind, sequence, lora)}; {result.calibrations.describe()}", markup=False)
    if budget.device_gb is None:
        out.print("no memory budget: set hardware.device_memory_gb to have points judged", markup=False)
    wide = Console(highlight=False, emoji=False, width=max(out.width, 150))  # a table too narrow to read helps no one
    wide.print(plan_table(result), soft_wrap=False)
    for row in result.rows:
        if row.reason:
            out.print(f"  {row.point.label()}: {row.reason}", markup=False)
    out.print(
        f"{result.total} point(s) in the space: {result.invalid} invalid, {result.not_fitting} predicted not to "
        f"fit, {result.to_run} to run",
        markup=False,
    )


@app.command()
def export(
    study: Annotated[str, typer.Option(help="The study to export from.", show_default=False)],
    output: Annotated[Path, typer.Option(help="Where to write the ds_config JSON.", show_default=False)],
    storage: StorageOpt = None,
    trial: Annotated[int | None, typer.Option(help="Export this trial number instead of the best.")] = None,
    world_size: Annotated[
        int | None, typer.Option(help="Ranks of the production job (default: the ranks trials ran on).")
    ] = None,
    fmt: Annotated[
        str, typer.Option("--format", help="deepspeed (a ds_config.json) or hf (Trainer/Accelerate + arguments).")
    ] = "deepspeed",
    accelerator: Annotated[
        str | None, typer.Option(help="cuda or cpu: write the config for this device kind (default: the study's).")
    ] = None,
    tokens: Annotated[
        float | None,
        typer.Option(
            help="Print (and keep in the provenance) the days to train this many tokens, e.g. 2e12, on "
            "--world-size ranks at the measured tokens/s per device.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Write the best (or a chosen) trial's complete config and its provenance file."""
    from tuner.export import export as do_export
    from tuner.handoff import lora_config_code, training_args_code
    from tuner.space import DEFAULT_STORAGE
    from tuner.store import load_study, open_storage

    url = storage or DEFAULT_STORAGE
    try:
        found = load_study(open_storage(url, "--storage", existing=True), study)
        done = do_export(found, url, output, trial, world_size, fmt, accelerator, tokens)
    except SpaceError as exc:
        _fail(exc)
    chosen = done.trial
    wrote = f"wrote {output} (trial {chosen.number}: {chosen.user_attrs.get('point')}, {done.world_size} rank(s))"
    extra = f", {done.training_args_path}" if done.training_args_path else ""
    out.print(f"{wrote}{extra} and {done.provenance_path}", markup=False)
    for note in done.notes:
        out.print(f"note: {note}", markup=False)
    if done.time_to_train is not None:
        out.print(done.time_to_train.line(), markup=False)
    if done.command is not None:
        out.print("train your script with it: " + shlex.join(done.command), markup=False)
    if done.training_args is not None:
        code = training_args_code(done.training_args)
        out.print(f"Hugging Face Trainer arguments that match it:\n{code}", markup=False)
    if done.lora_config is not None:
        out.print(f"LoRA adapters as the trials trained them:\n{lora_config_code(done.lora_config)}", markup=False)


@app.command()
def check(
    ds_config: Annotated[Path, typer.Argument(help="The exported ds_config.json to check.", show_default=False)],
    provenance: Annotated[
        Path | None, typer.Option(help="Its provenance file (default: the .provenance.json export wrote beside it).")
    ] = None,
    max_slowdown: Annotated[
        float, typer.Option(help="Fail when tokens/s (samples/s) fell more than this fraction (0.05 is 5%).")
    ] = 0.05,
    max_memory_growth: Annotated[
        float, typer.Option(help="Fail when peak memory rose more than this fraction (0.05 is 5%).")
    ] = 0.05,
    device_memory_gb: Annotated[
        float | None, typer.Option(help="Check under this memory budget per device instead of the search's.")
    ] = None,
    address: Annotated[str | None, typer.Option(help="Run on an existing Ray cluster (auto, HOST:PORT, ...).")] = None,
    run_dir: Annotated[Path, typer.Option(help="Where the check's trial log goes (a folder per study).")] = Path(
        "tuner_runs"
    ),
    record: Annotated[
        bool, typer.Option("--record", help="Keep the check as a trial of the original study (check_of: N).")
    ] = False,
    storage: Annotated[
        str | None,
        typer.Option("--storage", envvar="TUNER_STORAGE", help="Where to --record (default: the provenance's)."),
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="text, or json: one object for CI.")] = "text",
) -> None:
    """Re-run an exported config as one trial of its search and compare with what was recorded.

    Exit 0 within tolerance, 1 slower, bigger or failed, 2 bad input.
    """
    import contextlib
    import json
    import sys

    from tuner.check_cmd import Request, check_json, check_lines, prepare, run_check

    request = Request(
        ds_config, provenance, max_slowdown, max_memory_growth, device_memory_gb, address, run_dir, record, storage,
        fmt,
    )  # fmt: skip
    # stdout is the check alone (--format json: one object): what DeepSpeed logs on import goes to stderr.
    try:
        with contextlib.redirect_stdout(sys.stderr):
            inputs, url = prepare(request)
            checked = run_check(request, inputs, url)
    except SpaceError as exc:
        _fail(exc)
    if fmt == "json":
        out.print(json.dumps(check_json(checked), indent=2), markup=False, soft_wrap=True)
    else:
        out.print("\n".join(check_lines(checked)), markup=False)
    raise typer.Exit(checked.verdict.exit_code)


@app.command()
def results(
    study: Annotated[
        str | None, typer.Option(help="The study to list (required without --compare).", show_default=False)
    ] = None,
    storage: StorageOpt = None,
    fmt: Annotated[str, typer.Option("--format", help="table, csv, json or parquet.")] = "table",
    output: Annotated[Path | None, typer.Option(help="Write to this file instead of stdout.")] = None,
    compare: Annotated[
        bool, typer.Option("--compare", help="One row per study named after it: each study's best side by side.")
    ] = False,
    studies: Annotated[
        list[str] | None,
        typer.Argument(help="With --compare: the studies to line up.", metavar="STUDY", show_default=False),
    ] = None,
) -> None:
    """One row per trial, best first: the point, state, failure, every figure and the predicted memory; with
    --compare, the best of each study: tokens/s, per device, peak memory, USD per million tokens, device, ranks."""
    from tuner.compare import compare_frame, compare_text, study_names
    from tuner.results import results_frame, write_results
    from tuner.space import DEFAULT_STORAGE
    from tuner.store import load_study, open_storage

    url = storage or DEFAULT_STORAGE
    try:
        if studies and not compare:
            raise SpaceError("--compare", f"studies as arguments ({' '.join(studies)}) are compared: add --compare")
        if compare:
            names = study_names([*([study] if study else []), *(studies or [])])
            opened = open_storage(url, "--storage", existing=True)
            frame = compare_frame([load_study(opened, name, "--compare") for name in names])
            text = write_results(frame, fmt, output, compare_text)
        elif study is None:
            raise SpaceError("--study", "required: the study to list (or --compare STUDY STUDY ...)")
        else:
            frame = results_frame(load_study(open_storage(url, "--storage", existing=True), study), checks=True)
            text = write_results(frame, fmt, output)
    except SpaceError as exc:
        _fail(exc)
    if text is not None:
        out.print(text, markup=False, end="")
    else:
        err.print(f"wrote {len(frame)} {'studies' if compare else 'trial(s)'} to {output}", markup=False)


@app.command()
def report(
    study: Annotated[str, typer.Option(help="The study to report on.", show_default=False)],
    output: Annotated[Path, typer.Option(help="The HTML file to write.", show_default=False)],
    storage: StorageOpt = None,
) -> None:
    """One self-contained HTML file with plots, the best configuration and every trial; opens offline."""
    from tuner.report import render_report
    from tuner.space import DEFAULT_STORAGE
    from tuner.store import load_study, open_storage

    url = storage or DEFAULT_STORAGE
    try:
        page = render_report(load_study(open_storage(url, "--storage", existing=True), study), url)
    except SpaceError as exc:
        _fail(exc)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(page)
    out.print(f"wrote {output} ({len(page) / 1e6:.1f} MB, opens offline)", markup=False)


@app.command()
def dashboard(
    storage: StorageOpt = None,
    host: Annotated[
        str, typer.Option(help="Interface to listen on; anything but 127.0.0.1 is reachable by others.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
) -> None:
    """Start optuna-dashboard on the storage (Ctrl-C to stop)."""
    from tuner.dashboard import serve
    from tuner.space import DEFAULT_STORAGE

    try:
        serve(storage or DEFAULT_STORAGE, host, port, lambda line: out.print(line, markup=False))
    except SpaceError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        pass
    out.print("dashboard stopped")
    raise typer.Exit(130)  # it serves until interrupted (optuna-dashboard returns on Ctrl-C)


def run() -> None:
    """Console-script entry point."""
    app(prog_name="tuner")


if __name__ == "__main__":
    run()
