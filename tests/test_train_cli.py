import json


import pytest
import torch

from pipeline import ingest
from pipeline.train import main


@pytest.fixture
def ratings_csv(tmp_path):
    r = ingest.synthetic(200, 100, 6000, seed=2)
    path = tmp_path / "ratings.csv"
    r.frame.to_csv(path, index=False)
    return path


def test_json_output(ratings_csv, capsys):
    assert main(["--dataset", str(ratings_csv), "--epochs", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("valid_rmse", "test_rmse", "test_mae", "examples_per_second", "device", "epochs"):
        assert key in out
    assert out["epochs"] == 3 and out["device"] == "cpu" and out["test_rmse"] < 1.5


def test_text_output_prints_each_epoch(ratings_csv, capsys):
    assert main(["--dataset", str(ratings_csv), "--epochs", "2", "--refit"]) == 0
    out = capsys.readouterr().out
    assert "epoch   1" in out and "epoch   2" in out and "test  rmse" in out and "examples/s" in out


def test_defaults_are_the_seed_configuration():
    from pipeline.train import parser
    args = parser().parse_args([])
    assert (args.factors, args.optimizer, args.lr, args.weight_decay, args.epochs, args.batch_size) == (
        30, "adam", 0.002, 1e-5, 20, 512)


def test_every_config_field_is_a_flag_with_its_docstring_as_help():
    from pipeline.train import parser
    from pipeline.training import TrainConfig

    p = parser()
    actions = {a.dest: a for a in p._actions}
    docs = TrainConfig.help()
    for name in TrainConfig.model_fields:
        assert actions[name].option_strings == ["--" + name.replace("_", "-")]
        assert actions[name].help == docs[name] and len(docs[name]) > 10
    args = p.parse_args(["--l2-bias", "none", "--patience", "4", "--factors", "7"])
    assert (args.l2_bias, args.patience, args.factors) == (None, 4, 7)


def test_refit_trains_for_the_best_epoch_count_whatever_the_patience(ratings_csv, capsys):
    # Patience stops the first fit 3 epochs after its best; the refit has no valid data to be
    # patient about and must run all best_epoch epochs (it used to stop after 3).
    assert main(["--dataset", str(ratings_csv), "--optimizer", "sparse_sgd", "--weight-decay", "0", "--lr", "0.01",
                 "--l2", "0.05", "--epochs", "40", "--patience", "3", "--refit", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["best_epoch"] > 3 and out["epochs"] == out["best_epoch"] + 3
    assert out["refit_epochs"] == out["best_epoch"]


@pytest.mark.parametrize("argv,message", [
    (["--bogus"], "unrecognized arguments"),
    (["--epochs", "0"], "epochs=0: expected >= 1"),
    (["--epochs", "x"], "--epochs: 'x': expected int"),
    (["--device", "cuda:99" if torch.cuda.is_available() else "cuda"], "device 'cuda"),
    (["--optimizer", "lbfgs"], "invalid choice"),
    (["--lr", "-1", "--dataset", "synthetic"], "lr=-1.0"),
    (["--dataset", "nowhere.csv"], "nowhere.csv: cannot read"),
])
def test_bad_flags_fail_with_usage(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and message in err


def test_divergence_is_reported(ratings_csv, capsys):
    assert main(["--dataset", str(ratings_csv), "--optimizer", "sgd", "--lr", "1e7", "--epochs", "2"]) == 1
    assert "diverged at epoch 1" in capsys.readouterr().err


@pytest.mark.real_data
def test_the_seed_configuration_reaches_its_bar_on_ml100k(capsys):
    assert main(["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["test_rmse"] <= 0.93
    assert out["baselines"]["biases_only"]["test_rmse"] > out["test_rmse"]


def _no_nan(text: str) -> dict:
    def refuse(constant):
        raise AssertionError(f"not JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


def test_json_has_null_where_a_score_is_undefined(ratings_csv, capsys):
    assert main(["--dataset", str(ratings_csv), "--valid", "0", "--epochs", "2", "--json"]) == 0
    out = _no_nan(capsys.readouterr().out)
    assert out["valid_rmse"] is None and out["valid_mae"] is None and out["test_rmse"] > 0


def test_too_little_data_fails_with_usage_naming_the_empty_part(tmp_path, capsys):
    path = tmp_path / "two.csv"
    path.write_text("user,item,rating\n1,2,3\n2,3,4\n")
    with pytest.raises(SystemExit) as exit_:
        main(["--dataset", str(path), "--epochs", "2", "--json"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "two: split random: the test part would be empty (2 rows)" in err and "needs at least 6 rows" in err


def _scaled_csv(tmp_path, bad_line=7):
    rows = [f"{u},{i},{1 + (u * i) % 5}" for u in range(1, 9) for i in range(1, 9)]
    rows[bad_line - 2] = rows[bad_line - 2].rsplit(",", 1)[0] + ",55"
    path = tmp_path / "scaled.csv"
    path.write_text("user,item,rating\n" + "\n".join(rows) + "\n")
    return path


def test_a_declared_rating_scale_rejects_a_rating_outside_it(tmp_path, capsys):
    path = _scaled_csv(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["--dataset", str(path), "--rating-scale", "1,5", "--epochs", "1"])
    assert exit_.value.code == 2
    assert "scaled.csv: line 7, column 'rating': 55 is outside the rating scale: expected 1 <= rating <= 5" in (
        capsys.readouterr().err)


def test_the_reader_flags(tmp_path, capsys):
    rows = [f"{i};{u};{1 + (u * i) % 5}" for u in range(30) for i in range(20)]
    path = tmp_path / "raw.txt"
    path.write_text("\n".join(rows) + "\n")
    assert main(["--dataset", str(path), "--no-header", "--sep", ";", "--columns", "item_id,user_id,rating",
                 "--rating-scale", "1,5", "--epochs", "1", "--json"]) == 0
    out = _no_nan(capsys.readouterr().out)
    assert out["split"]["users"] == 30 and out["split"]["items"] == 20
    headed = tmp_path / "headed.csv"
    headed.write_text("who,what,stars\n" + "\n".join(r.replace(";", ",") for r in rows) + "\n")
    assert main(["--dataset", str(headed), "--columns", "user_id=who,item_id=what,rating=stars", "--epochs", "1",
                 "--json"]) == 0
    assert _no_nan(capsys.readouterr().out)["split"]["users"] == 20


@pytest.mark.parametrize("argv,message", [
    (["--rating-scale", "5"], "argument --rating-scale: rating_scale ['5']: expected two numbers"),
    (["--rating-scale", "5,1"], "expected finite numbers with low <= high"),
    (["--columns", "user=who"], "argument --columns: columns: unknown name(s) ['user']"),
    (["--sep", ""], "argument --sep: sep ''"),
    (["--no-header"], "ml-100k: reader option(s) header are for ratings files"),
])
def test_bad_reader_flags_fail_with_usage(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def _no_training(*args, **kwargs):
    raise AssertionError("the memory check must refuse before any training")


def test_a_model_too_large_for_the_device_is_refused_before_any_training(ratings_csv, capsys, monkeypatch):
    import pipeline.train

    monkeypatch.setattr(pipeline.train, "fit", _no_training)
    with pytest.raises(SystemExit) as exit_:
        main(["--dataset", str(ratings_csv), "--family", "bayes", "--factors", "100000"])
    assert exit_.value.code == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if "error:" in x]
    assert "--factors 100000: a bayes model on" in line and "GiB, more than the" in line
    assert "lower --factors" in line and "--epochs" in line


def test_the_memory_check_compares_the_estimate_with_the_device_memory(ratings_csv, capsys, monkeypatch):
    import pipeline.train

    monkeypatch.setattr(pipeline.train, "device_memory", lambda device: 2**16)  # a 64 KiB device
    monkeypatch.setattr(pipeline.train, "fit", _no_training)
    with pytest.raises(SystemExit) as exit_:
        main(["--dataset", str(ratings_csv), "--factors", "30"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--factors 30: a mf model on" in err and "more than the 0.0 GiB of cpu; lower --factors\n" in err
    monkeypatch.undo()
    assert main(["--dataset", str(ratings_csv), "--factors", "30", "--epochs", "1", "--json"]) == 0  # it fits here
