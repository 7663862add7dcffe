"""A run's result files: the table format, the column order (plain, KD, soft per architecture, in the run's
order) and one table from several runs that keeps each run's order."""

import json

from jaxdd import evaluation, results


def test_markdown_table_prints_percent_mean_and_std():
    rows = {
        "dc": {"ConvNet": evaluation.summarize([0.5, 0.7])},
        "random": {"MLP": evaluation.summarize([0.25])},
    }
    table = results.markdown_table(rows, ["ConvNet", "MLP"])
    assert table.splitlines() == [
        "| set | ConvNet | MLP |",
        "|---|---|---|",
        "| dc | 60.0 ± 10.0 | – |",
        "| random | – | 25.0 ± 0.0 |",
    ]


def test_each_arch_is_followed_by_its_kd_and_soft_label_columns():
    summary = evaluation.summarize([0.5])
    plain = {"MLP": summary, "ConvNet": summary}
    merged = results.merge_columns(("MLP", "ConvNet"), plain=plain, kd_results={"MLP": summary}, soft=plain)
    assert list(merged) == ["MLP", "MLP+KD", "MLP+soft", "ConvNet", "ConvNet+soft"]
    assert results.column_order(("MLP", "ConvNet"), [*sorted(merged), "Extra"]) == [*merged, "Extra"]
    assert [results.base_arch(c) for c in merged] == ["MLP"] * 3 + ["ConvNet"] * 2


def _run(folder, archs, columns, mean):
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"eval": {"archs": archs}}))
    summary = evaluation.summarize([mean])
    results.write_eval(folder, {column: summary for column in columns})


def test_collected_table_keeps_each_runs_column_order(tmp_path):
    _run(tmp_path / "a", "VGG11,ConvNet", ["VGG11", "VGG11+KD", "ConvNet", "ConvNet+KD"], 0.5)
    _run(tmp_path / "b", "MLP,ConvNet", ["MLP", "ConvNet"], 0.25)
    (tmp_path / "c").mkdir()  # no config.json: eval.json's order
    results.write_eval(tmp_path / "c", {"LeNet": evaluation.summarize([0.75])})
    on_disk = json.loads((tmp_path / "a" / "eval.json").read_text())
    assert list(on_disk) == sorted(on_disk)  # eval.json is written sorted: the order comes from config.json
    _run(tmp_path / "d", "MLP,VGG11", ["MLP+soft", "VGG11", "VGG11+soft"], 0.25)
    header = results.collect_table([tmp_path / name for name in "abcd"]).splitlines()[0]
    columns = "VGG11 | VGG11+KD | VGG11+soft | ConvNet | ConvNet+KD | MLP | MLP+soft | LeNet"
    assert header == f"| set | {columns} |"
