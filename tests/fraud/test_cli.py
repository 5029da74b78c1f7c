"""The `fraud` command: every subcommand explains itself; the file-based jobs run as a user runs them."""

import json

import pytest
import typer
from typer.testing import CliRunner

from fraud.cli import app
from retrain import ModelRegistry

runner = CliRunner()


def _command_paths(group, prefix: tuple[str, ...] = ()) -> list[list[str]]:
    """Every subcommand of the CLI, nested groups included: a new command is checked without being listed."""
    paths = []
    for name, command in group.commands.items():
        paths.append([*prefix, name])
        if hasattr(command, "commands"):  # a group (typer's own click)
            paths += _command_paths(command, (*prefix, name))
    return paths


SUBCOMMANDS = _command_paths(typer.main.get_command(app))


@pytest.mark.parametrize("args", SUBCOMMANDS, ids=" ".join)
def test_every_subcommand_has_help(args):
    result = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and len(result.output) > 200


def test_commands_needing_a_broker_say_how_to_get_one(tmp_path):
    result = runner.invoke(app, ["stream", "--home", str(tmp_path)], env={"KAFKA_BOOTSTRAP": "", "REDIS_URL": ""})
    assert result.exit_code != 0
    assert "KAFKA_BOOTSTRAP" in str(result.exception) and "fraud up" in str(result.exception)


@pytest.mark.slow
def test_simulate_then_train_registers_a_served_model(tmp_path):
    result = runner.invoke(app, ["simulate", "--home", str(tmp_path), "--days", "10", "--customers", "1500"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "data" / "transactions.jsonl").exists()
    result = runner.invoke(app, ["train", "--home", str(tmp_path), "--label-maturity-days", "1"])
    assert result.exit_code == 0, result.output
    registry = ModelRegistry(tmp_path / "registry")
    assert registry.champion() == "xgb-0001"
    meta = registry.metadata("xgb-0001")
    assert meta["onnx_parity_max_abs_diff"] < 1e-4 and meta["metrics"]["pr_auc"] > 0
    assert json.loads((tmp_path / "registry" / "promotions.jsonl").read_text().splitlines()[0])["event"] == "promote"
    # lineage and the operating point chosen for the review capacity travel with the model
    assert meta["parent_version"] is None and len(meta["data_fingerprint"]) == 16
    assert meta["label_cutoff"] and meta["training_window"][0] < meta["evaluation_window"][0]
    assert 0 < meta["operating_point"]["flags_per_day"] <= 200
    # the score calibration the monitor estimates recall with, fitted on the evaluation slice
    assert meta["calibration"]["fitted_on"] == meta["eval_rows"] and meta["calibration"]["slope"] > 0
    assert "hour_of_day" in meta["drift_reference"] and meta["drift_reference"]["hour_of_day"]["discrete_values"]

    listed = runner.invoke(app, ["models", "list", "--home", str(tmp_path)], env={"COLUMNS": "200"})
    assert listed.exit_code == 0 and "xgb-0001" in listed.output and "champion" in listed.output
    refused = runner.invoke(app, ["models", "canary", "xgb-0001", "--home", str(tmp_path)])
    assert refused.exit_code == 1 and "refused" in refused.output and "champion already" in refused.output
    not_due = runner.invoke(app, ["retrain", "--if-due", "--home", str(tmp_path)])
    assert not_due.exit_code == 0 and "not due" in not_due.output
    assert ModelRegistry(tmp_path / "registry").versions() == ["xgb-0001"]


def test_bench_refuses_an_unknown_mode_and_bad_rates_naming_the_option():
    bad_mode = runner.invoke(app, ["bench", "--mode", "carrier-pigeon"])
    assert bad_mode.exit_code != 0 and "--mode" in bad_mode.output
    bad_rates = runner.invoke(app, ["bench", "--rates", "1000,fast"])
    assert bad_rates.exit_code != 0 and "--rates" in bad_rates.output


def test_monitor_check_detector_prints_its_setup_and_error_rates_without_services(tmp_path):
    result = runner.invoke(
        app, ["monitor", "--check-detector", "--windows", "400", "--home", str(tmp_path)], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    assert "cores" in result.output and "false-alarm rate 0.01" in result.output and "sustain 3" in result.output
    (row,) = [line for line in result.output.splitlines() if line.strip("│ ").startswith("400")]
    assert "0.00%" in row  # with the default 0.1 nats threshold no feature-window goes over without drift


def test_monitor_without_a_model_says_to_train_one(tmp_path):
    result = runner.invoke(app, ["monitor", "--home", str(tmp_path)], env={"KAFKA_BOOTSTRAP": "127.0.0.1:1"})
    assert result.exit_code != 0 and "train one first" in result.output


@pytest.mark.parametrize("sizes", ["399,400", "100", "0,5"])
def test_bench_path_only_refuses_batch_sizes_it_cannot_fit_before_starting_anything(tmp_path, sizes):
    result = runner.invoke(
        app, ["bench", "--path-only", "--batch-sizes", sizes, "--home", str(tmp_path)], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 2 and "--batch-sizes" in result.output
    assert not (tmp_path / "bench").exists()  # no services, no world
