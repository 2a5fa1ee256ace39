"""byzsgd plot: which runs go together, what the figures show, and that the figures are real."""

import csv
import json

import numpy as np
import pytest
import yaml
from matplotlib import image

from byzsgd.cli import main
from byzsgd.plots.figures import plot_runs
from byzsgd.plots.runs import (
    attack_title,
    average,
    final_accuracy_table,
    find_runs,
    grouped,
    seed_statistics,
    setting_names,
    shared_setting,
)
from byzsgd.registry import ConfigError
from byzsgd.sweep import expand_sweep, run_sweep
from tests.conftest import make_config

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_run(run_dir, rows, status="finished", label=None, gather_period=None, **config):
    """A run folder as the runner and the sweep write it, with made-up metrics."""
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(make_config(**config).to_dict()))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    summary = {"status": status, "final": rows[-1] if rows else None}
    if gather_period:
        summary["gather_period"] = gather_period
    (run_dir / "summary.json").write_text(json.dumps(summary))
    if label:
        (run_dir / "sweep_run.json").write_text(json.dumps({"label": label}))
    return run_dir


def rows(accuracies, diameters=None, every=10):
    diameters = diameters or [0.0] * len(accuracies)
    return [
        {"step": i * every, "test_acc": acc, "diameter": diam}
        for i, (acc, diam) in enumerate(zip(accuracies, diameters))
    ]


def assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 2000
    pixels = image.imread(path)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert pixels[..., :3].std() > 0.01  # something was drawn


def test_a_sweep_folder_plots_to_valid_pngs(tmp_path):
    data = make_config(steps=4, eval_every=2, nodes={"n_ps": 2, "f_ps": 0, "n_w": 4, "f_w": 1}).to_dict()
    data["sweep"] = {
        "grid": {"attack.name": ["signflip", "gaussian"]},
        "variants": [{"label": "mda"}, {"label": "mean", "aggregator.name": "mean"}],
    }
    plan = expand_sweep(data, out_dir=tmp_path / "sweep")
    assert not run_sweep(plan, quiet=True).failed
    written = plot_runs([plan.out_dir])
    assert [p.name for p in written] == ["accuracy.png", "diameter.png", "final_accuracy.png"]
    assert all(p.parent == plan.out_dir / "plots" for p in written)
    for path in written:
        assert_png(path)

    assert main(["plot", str(plan.out_dir), "-o", str(tmp_path / "figures")]) == 0
    assert_png(tmp_path / "figures" / "accuracy.png")


def test_a_settings_name_is_its_label_or_the_keys_that_differ_besides_seed_and_attack(tmp_path):
    for period in (1, 5):
        for seed in (0, 1):
            for attack in ("signflip", "gaussian"):
                write_run(
                    tmp_path / f"T{period}-s{seed}-{attack}",
                    rows([0.1, 0.5]),
                    seed=seed,
                    attack={"name": attack},
                    byzsgd={"period": period},
                )
    runs = find_runs([tmp_path])
    assert sorted(set(setting_names(runs).values())) == ["period=1", "period=5"]
    attacks, settings, groups = grouped(runs)
    assert sorted(attacks) == ["gaussian", "signflip"]
    assert all(len(members) == 2 for members in groups.values())  # the two seeds of a setting

    labelled = tmp_path / "labelled"
    write_run(labelled / "a", rows([0.2]), label="ps+mean", aggregator={"name": "mean"}, seed=0)
    write_run(labelled / "b", rows([0.3]), label="ps+mean", aggregator={"name": "mean"}, seed=1)
    write_run(labelled / "c", rows([0.4]), label="byzsgd", optimizer={"lr": 0.05})
    names = setting_names(find_runs([labelled]))
    assert sorted(names.values()) == ["byzsgd", "ps+mean", "ps+mean"]


def test_seeds_are_averaged_step_by_step_and_missing_values_skipped(tmp_path):
    write_run(tmp_path / "a", rows([0.0, 0.4, 0.8]), seed=0)
    write_run(tmp_path / "b", rows([0.2, None]), seed=1)  # stopped early, NaN accuracy at step 10
    steps, mean, low, high = average(find_runs([tmp_path]), "test_acc")
    assert steps == [0, 10, 20]
    assert mean == pytest.approx([0.1, 0.4, 0.8]) and low == pytest.approx([0.0, 0.4, 0.8])
    assert high == pytest.approx([0.2, 0.4, 0.8])


def test_final_accuracy_heatmap_averages_finished_runs_only(tmp_path):
    write_run(tmp_path / "a", rows([0.1, 0.6]), attack={"name": "signflip"}, aggregator={"name": "mda"}, seed=0)
    write_run(tmp_path / "b", rows([0.1, 0.8]), attack={"name": "signflip"}, aggregator={"name": "mda"}, seed=1)
    write_run(tmp_path / "c", rows([0.1, 0.2]), attack={"name": "signflip"}, aggregator={"name": "mean"})
    write_run(tmp_path / "d", rows([0.1, 0.9]), "failed", attack={"name": "gaussian"}, aggregator={"name": "mean"})
    write_run(tmp_path / "e", rows([0.1, 0.5]), attack={"name": "gaussian"}, aggregator={"name": "mda"})
    attacks, settings, groups = grouped(find_runs([tmp_path]))
    assert attacks == ["signflip", "gaussian"] and settings == ["aggregator=mda", "aggregator=mean"]
    table = final_accuracy_table(attacks, settings, groups)
    np.testing.assert_allclose(table, [[0.7, 0.2], [0.5, np.nan]])
    written = plot_runs([tmp_path], tmp_path / "out")
    assert [p.name for p in written] == ["accuracy.png", "final_accuracy.png"]  # no gather period: no diameter
    for path in written:
        assert_png(path)


def test_diameter_figure_for_runs_with_a_gather_period(tmp_path):
    write_run(tmp_path / "a", rows([0.1, 0.5, 0.7], [0.0, 2.0, 0.5], every=2), gather_period=4)
    written = plot_runs([tmp_path / "a"])
    assert [p.name for p in written] == ["accuracy.png", "diameter.png"]
    assert_png(tmp_path / "a" / "plots" / "diameter.png")


def test_plotting_a_folder_without_runs_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(ConfigError, match="no run folders"):
        plot_runs([tmp_path])
    assert main(["plot", str(tmp_path / "missing")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_bands_are_mean_plus_minus_std_and_every_figure_has_its_csv(tmp_path):
    for seed, accuracies in enumerate(([0.1, 0.5], [0.3, 0.7], [0.2, 0.9])):
        write_run(
            tmp_path / f"s{seed}", rows(accuracies), seed=seed, attack={"name": "signflip", "params": {"scale": 4.0}}
        )
    (table,) = [seed_statistics(find_runs([tmp_path]), "test_acc")]
    assert [row["seeds"] for row in table] == [3, 3]
    assert table[1]["mean"] == pytest.approx(0.7) and table[1]["std"] == pytest.approx(np.std([0.5, 0.7, 0.9], ddof=1))
    written = plot_runs([tmp_path], tmp_path / "out", fmt="pdf")
    assert [p.name for p in written] == ["accuracy.pdf"]
    assert written[0].read_bytes().startswith(b"%PDF")
    with (tmp_path / "out" / "accuracy.csv").open() as handle:
        data = list(csv.DictReader(handle))
    assert [(r["attack"], r["step"], r["seeds"]) for r in data] == [
        ("sign flip (scale 4)", "0", "3"),
        ("sign flip (scale 4)", "10", "3"),
    ]
    assert float(data[1]["std"]) == pytest.approx(0.2)
    assert (
        shared_setting(find_runs([tmp_path]))
        == "synthetic, logreg, 5 servers (f=1), 7 workers (f=2), 60 steps, 3 seeds"
    )


def test_readable_attack_names():
    assert attack_title({"name": "signflip", "params": {"scale": 4.0}}) == "sign flip (scale 4)"
    assert attack_title({"name": "ipm", "params": {"eps": 0.5}, "count": 1}) == "IPM (eps 0.5, count 1)"
    assert attack_title({"name": "none"}) == "no attack" and attack_title({"name": "custom"}) == "custom"


def test_diameter_keeps_zeros_and_warns_when_sampling_aliases_the_gather_period(tmp_path, capsys):
    write_run(tmp_path / "a", rows([0.1, 0.5, 0.7], [0.0, 2.0, 0.0], every=10), gather_period=3, eval_every=10)
    assert main(["plot", str(tmp_path / "a"), "--format", "svg"]) == 0
    assert "eval_every=10 does not divide the gather period T=3" in capsys.readouterr().err
    with (tmp_path / "a" / "plots" / "diameter.csv").open() as handle:
        assert [r["mean"] for r in csv.DictReader(handle)] == ["0.0", "2.0", "0.0"]  # zeros kept
    assert (tmp_path / "a" / "plots" / "diameter.svg").read_text().lstrip().startswith("<?xml")
    write_run(tmp_path / "b", rows([0.1, 0.5], [0.0, 2.0], every=2), gather_period=4, eval_every=2)
    assert main(["plot", str(tmp_path / "b"), "--dpi", "72"]) == 0
    assert "aliased" not in capsys.readouterr().err


def test_plot_arguments_are_checked(capsys):
    with pytest.raises(SystemExit):
        main(["plot", "x", "--format", "jpg"])
    with pytest.raises(SystemExit):
        main(["plot", "x", "--dpi", "0"])
    assert "must be at least 1" in capsys.readouterr().err
