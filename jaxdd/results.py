"""A run's result files, written and read: eval.json, baselines.json, table.md, metrics.jsonl's eval lines,
and one cross-architecture table from many runs.

What is evaluated, and how, is `jaxdd.run_eval`; this module only names the columns, formats and stores.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from jaxdd import kd, relabel, reporting
from jaxdd.config_lists import split_names
from jaxdd.errors import UserError
from jaxdd.evaluation import format_cell


def student_columns(arch: str) -> tuple[str, ...]:
    """The columns of `arch`, in table order: plain, KD ('arch+KD'), soft-label ('arch+soft')."""
    return (arch, kd.column(arch), relabel.column(arch))


def merge_columns(archs: Sequence[str], *, plain: dict, kd_results: dict, soft: dict) -> dict[str, dict]:
    """{column: summary} of the plain, KD and soft-label summaries ({arch: summary} each), in table
    order: every arch in `archs` followed by its KD and soft-label columns where evaluated."""
    merged = {}
    for arch in archs:
        for column, results in zip(student_columns(arch), (plain, kd_results, soft), strict=True):
            if arch in results:
                merged[column] = results[arch]
    return merged


def base_arch(column: str) -> str:
    """The architecture of a column: 'LeNet+KD' -> 'LeNet'."""
    for suffix in (kd.COLUMN_SUFFIX, relabel.COLUMN_SUFFIX):
        if column.endswith(suffix):
            return column[: -len(suffix)]
    return column


def column_order(archs: Sequence[str], columns) -> list[str]:
    """`columns` (eval.json's keys) in table order for the run's `archs`; the others after, as given."""
    ordered = [c for arch in archs for c in student_columns(arch) if c in columns]
    return ordered + [c for c in columns if c not in ordered]


def markdown_table(rows: dict[str, dict[str, dict]], archs: Sequence[str]) -> str:
    """A cross-architecture table: one row per evaluated set, one column per architecture."""
    header = "| set | " + " | ".join(archs) + " |"
    rule = "|---|" + "---|" * len(archs)
    lines = [header, rule]
    for name, results in rows.items():
        cells = [format_cell(results[a]) if a in results else "–" for a in archs]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_eval(workdir: Path, results: dict) -> None:
    """workdir/eval.json: {column: summary} of the distilled set."""
    reporting.write_json(Path(workdir) / "eval.json", results)


def write_table(workdir: Path, table: str, baselines: dict) -> None:
    """workdir/table.md and, when there are baselines, workdir/baselines.json ({row: {arch: summary}})."""
    if baselines:
        reporting.write_json(Path(workdir) / "baselines.json", baselines)
    (Path(workdir) / "table.md").write_text(table)


def record_eval(workdir: Path, name: str, column: str, summary: dict, *, keys: Sequence[str], step=None):
    """One metrics.jsonl line {'event': 'eval', 'set', 'arch', ['step',] summary[keys]...}."""
    record = {"event": "eval", "set": name, "arch": column, **({"step": step} if step else {})}
    record.update({k: summary[k] for k in keys})
    reporting.append_metrics(Path(workdir) / "metrics.jsonl", record)


def collect_table(run_dirs: list[str | Path]) -> str:
    """One cross-architecture markdown table from the eval.json (and baselines.json) of several runs.

    Architectures in the order the runs list them (`eval.archs` of each config.json; eval.json is stored
    sorted), each followed by its KD and soft-label columns; an architecture new in a later run after the
    earlier ones.
    """
    rows, archs, columns = {}, {}, {}  # dicts as ordered sets
    for run_dir in map(Path, run_dirs):
        eval_path = run_dir / "eval.json"
        if not eval_path.is_file():
            raise UserError(f"{str(run_dir)!r} has no eval.json: evaluate it first (--mode=evaluate).")
        rows[run_dir.name] = _read_results(eval_path)
        baselines_path = run_dir / "baselines.json"
        if baselines_path.is_file():
            for name, results in _read_results(baselines_path).items():
                rows.setdefault(name, results)
        archs.update(dict.fromkeys((*_run_archs(run_dir), *map(base_arch, rows[run_dir.name]))))
        columns.update(dict.fromkeys(rows[run_dir.name]))
    return markdown_table(rows, column_order(list(archs), list(columns)))


def _run_archs(run_dir: Path) -> tuple[str, ...]:
    """`eval.archs` of the run's config.json; () when it has none readable (eval.json's order then)."""
    try:
        return split_names(json.loads((run_dir / "config.json").read_text())["eval"]["archs"])
    except (OSError, ValueError, KeyError, TypeError, UserError):
        return ()


def _read_results(path: Path) -> dict:
    """A results file's JSON object; UserError naming the file when it is cut short or not an object."""
    try:
        results = json.loads(path.read_text())
    except ValueError as error:
        raise UserError(
            f"{str(path)!r} is not valid JSON ({error}): evaluate the run again (--mode=evaluate) to "
            "rewrite it."
        ) from None
    if not isinstance(results, dict):
        kind = type(results).__name__
        raise UserError(f"{str(path)!r} holds a {kind}, not {{arch: summary}}: evaluate the run again.")
    return results
