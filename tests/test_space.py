import json
import math

import optuna
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.space import SEARCH_SPACES, SpaceError, default_space, default_stack, load_space, suggest
from pipeline.training import TrainConfig

BASE = {"params": {"factors": {"type": "int", "low": 4, "high": 64}}}


def _write(tmp_path, content, name="space.yaml"):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return path


@pytest.mark.parametrize("name", ["mf", "mf-cuda", "sgd", "quick", "scale", "wide", "bayes"])
def test_the_shipped_spaces_load(name):
    space = load_space(SEARCH_SPACES / f"{name}.yaml")
    assert space.name == name and space.trials >= 1
    config = suggest(optuna.create_study(sampler=space.make_sampler(0)).ask(), space)
    assert isinstance(config, TrainConfig) and config.epochs == space.epochs


def test_the_objective_sets_the_directions_and_turns_pruning_off_when_not_rmse(tmp_path):
    default = load_space(_write(tmp_path, BASE))
    assert (default.objective, default.directions(), default.metric_names(), default.prunes()) == (
        ["rmse"], ["minimize"], ["valid_rmse"], True)
    # the default objective leaves the digest as it was before the key existed
    assert load_space(_write(tmp_path, {**BASE, "objective": "rmse"})).digest() == default.digest()
    ndcg = load_space(_write(tmp_path, {**BASE, "objective": "ndcg@10"}))
    assert (ndcg.directions(), ndcg.metric_names(), ndcg.prunes()) == (["maximize"], ["valid_ndcg_at_10"], False)
    assert isinstance(ndcg.make_pruner(), optuna.pruners.NopPruner) and ndcg.digest() != default.digest()
    both = load_space(_write(tmp_path, {**BASE, "objective": ["rmse", "ndcg@10"], "pruner": {"type": "none"}}))
    assert both.directions() == ["minimize", "maximize"] and not both.prunes()
    # the comparison view in `mlflow ui` sorts by the first objective, best first
    from pipeline.trials_view import view_tags

    for space, order in ((default, ("metrics.`best_valid_rmse`", True)), (both, ("metrics.`best_valid_rmse`", True)),
                         (ndcg, ("metrics.`valid_ndcg_at_10`", False))):
        (state,) = [json.loads(v) for k, v in view_tags("s", "p", [], space.view_order()).items() if "View" in k]
        assert (state["orderByKey"], state["orderByAsc"]) == order


@pytest.mark.parametrize("content,message", [
    ({**BASE, "epochz": 3}, "epochz: Extra inputs are not permitted"),
    ({"params": {"factorz": {"type": "int", "low": 1, "high": 2}}}, "params.factorz: unknown parameter"),
    ({"params": {"factors": {"type": "int", "low": 9, "high": 2}}}, "low 9 > high 2"),
    ({"params": {"lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}}, "log scale needs positive bounds"),
    ({"params": {"optimizer": {"type": "categorical", "choices": []}}}, "params.optimizer.choices: List should have at least 1 item"),
    ({"params": {"factors": {"type": "int", "low": "many", "high": 2}}}, "params.factors.low: Input should be a valid integer"),
    ({"params": {"factors": {"type": "gaussian"}}}, "params.factors"),
    ({**BASE, "epochs": 0}, "epochs: Input should be greater than or equal to 1"),
    ({**BASE, "sampler": {"type": "cma"}}, "sampler.type"),
    ({**BASE, "sampler": {"type": "tpe", "options": {"n_startup": 3}}}, "sampler.options"),
    ({**BASE, "pruner": {"type": "median", "options": {"warmup": 3}}}, "pruner.options"),
    ({**BASE, "split": {"strategy": "kfold"}}, "split.strategy"),
    ({**BASE, "register_as": "team/model"}, "register_as: Value error, expected a registered model name without '/'"),
    ({**BASE, "register_as": ""}, "register_as: Value error, expected a registered model name (not empty)"),
    ({**BASE, "register_as": 7}, "register_as: Input should be a valid string (got 7)"),
    ({**BASE, "objective": "mae"}, "objective: Value error, 'mae': expected one of rmse, ndcg@10, or a list of them"),
    ({**BASE, "objective": ["rmse", "rmse"]}, "objective: Value error, ['rmse', 'rmse']: expected one objective or"),
    ({**BASE, "objective": []}, "objective: Value error, []: expected one objective or a list of different ones"),
    ({**BASE, "objective": "ndcg@10", "pruner": {"type": "median"}},
     "pruner 'median' with objective ['ndcg@10']: a pruner compares each epoch's valid RMSE"),
    ({"params": {"optimizer": {"type": "fixed", "value": "sparse_sgd"},
                 "weight_decay": {"type": "fixed", "value": 0.1}}}, "weight_decay=0.1"),
    ({"params": {"optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
                 "lr": {"by": "optimizer", "cases": {"adam": {"type": "fixed", "value": 0.01}}}}},
     "no case for ['sgd']"),
    ({"params": {"lr": {"by": "optimizer", "cases": {"adam": {"type": "fixed", "value": 0.01}}}}},
     "'optimizer' must be a categorical parameter"),
    ({"params": {"batch_size": {"type": "categorical", "choices": [1024, 0]}}}, "batch_size=0: expected >= 1"),
    ({"params": {"optimizer": {"type": "categorical", "choices": ["adam", "sparse_sgd"]},
                 "weight_decay": {"type": "float", "low": 0.01, "high": 0.1}}}, "weight_decay=0.01"),
    ({"params": {"init_std": {"type": "fixed", "value": "big"}}}, "init_std='big': expected float"),
    ({"params": {"factors": {"type": "fixed", "value": 2.5}}}, "factors=2.5: expected int"),
    ({**BASE, "epochs": True}, "epochs: Input should be a valid integer (got True)"),
    ({"params": {"factors": {"type": "int", "low": "3", "high": 9}}}, "params.factors.low: Input should be a valid"),
    ("params: {factors: {type: fixed, value: 3}}\ntrials: 3\ntrials: 4\n", "duplicate key 'trials'"),
    ("params: [1, 2", "not valid YAML"),
    ("- 1\n- 2\n", "expected a mapping"),
])
def test_bad_spaces_name_the_file_and_the_key(tmp_path, content, message):
    path = _write(tmp_path, content)
    with pytest.raises(SpaceError) as error:
        load_space(path)
    assert str(error.value).startswith(f"{path}: ")
    assert message in str(error.value)


def test_a_missing_file(tmp_path):
    with pytest.raises(SpaceError, match="nope.yaml: cannot read"):
        load_space(tmp_path / "nope.yaml")


# --- the translator, property-tested ---------------------------------------------------------

bounds = st.tuples(st.floats(1e-6, 1e3), st.floats(1e-6, 1e3)).map(sorted)
int_bounds = st.tuples(st.integers(1, 500), st.integers(1, 500)).map(sorted)


@st.composite
def spaces(draw):
    lo, hi = draw(bounds)
    ilo, ihi = draw(int_bounds)
    optimizers = draw(st.lists(st.sampled_from(["adam", "sgd", "adagrad", "rmsprop"]), min_size=1, unique=True))
    lr_cases = {o: {"type": "float", "low": lo, "high": hi, "log": draw(st.booleans())} for o in optimizers}
    return {
        "params": {
            "factors": {"type": "int", "low": ilo, "high": ihi, "log": draw(st.booleans())},
            "optimizer": {"type": "categorical", "choices": optimizers},
            "lr": {"by": "optimizer", "cases": lr_cases},
            "batch_size": {"type": "categorical", "choices": draw(st.lists(st.integers(1, 4096), min_size=1, max_size=4))},
            "l2": {"type": "fixed", "value": draw(st.floats(0, 1))},
        },
        "epochs": draw(st.integers(1, 50)),
    }


@settings(max_examples=60, deadline=None)
@given(raw=spaces(), seed=st.integers(0, 2**16))
def test_every_suggestion_lies_inside_its_declared_distribution(tmp_path_factory, raw, seed):
    path = _write(tmp_path_factory.mktemp("space"), raw)
    space = load_space(path)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    for _ in range(3):
        trial = study.ask()
        config = suggest(trial, space)
        p = raw["params"]
        assert p["factors"]["low"] <= config.factors <= p["factors"]["high"]
        assert config.optimizer in p["optimizer"]["choices"]
        case = p["lr"]["cases"][config.optimizer]
        assert case["low"] * (1 - 1e-9) <= config.lr <= case["high"] * (1 + 1e-9)
        assert config.batch_size in p["batch_size"]["choices"]
        assert config.l2 == p["l2"]["value"] and config.epochs == raw["epochs"]
        # one Optuna name per case: the lr of each optimizer is its own parameter
        assert set(trial.params) == {"factors", "optimizer", "batch_size", f"lr.{config.optimizer}"}
        study.tell(trial, 1.0)


@settings(max_examples=30, deadline=None)
@given(raw=spaces())
def test_fixed_trials_reproduce_their_parameters(tmp_path_factory, raw):
    space = load_space(_write(tmp_path_factory.mktemp("space"), raw))
    optimizer = raw["params"]["optimizer"]["choices"][0]
    lr = raw["params"]["lr"]["cases"][optimizer]["high"]
    params = {"factors": raw["params"]["factors"]["low"], "optimizer": optimizer, f"lr.{optimizer}": lr,
              "batch_size": raw["params"]["batch_size"]["choices"][-1]}
    config = suggest(optuna.trial.FixedTrial(params), space)
    assert (config.factors, config.optimizer, config.batch_size) == (params["factors"], optimizer, params["batch_size"])
    assert math.isclose(config.lr, lr)


def test_the_gpu_default_is_the_cpu_space_without_batch_1_and_with_stacked_trials():
    cpu, gpu = (load_space(default_space(torch.device(d))) for d in ("cpu", "cuda"))
    assert (cpu.name, gpu.name) == ("mf", "mf-cuda")
    assert 1 in cpu.params["batch_size"].cases["mf"].choices
    assert min(gpu.params["batch_size"].cases["mf"].choices) >= 64
    assert {k: v for k, v in gpu.params.items() if k != "batch_size"} == {k: v for k, v in cpu.params.items() if k != "batch_size"}
    assert (cpu.stack, gpu.stack) == (None, 8) and default_stack(torch.device("cpu")) == 1
    assert gpu.sampler.options["constant_liar"] is True


def test_stack_is_how_trials_run_not_what_is_searched(tmp_path):
    plain = load_space(_write(tmp_path, BASE, "a.yaml"))
    stacked = load_space(_write(tmp_path, {**BASE, "stack": 4}, "b.yaml"))
    assert stacked.stack == 4 and stacked.digest() == plain.digest()  # a study resumes with either
    with pytest.raises(SpaceError, match="stack"):
        load_space(_write(tmp_path, {**BASE, "stack": 0}, "c.yaml"))


def test_a_space_names_its_registered_model_and_the_command_line_wins(tmp_path):
    from pipeline.search.options import SearchOptions

    assert [load_space(n).register_as for n in ("mf", "mf-cuda", "quick")] == [
        "mf-movielens", "mf-movielens", "mf-movielens-quick"]  # the smoke test never registers as production
    plain = load_space(_write(tmp_path, BASE, "a.yaml"))
    named = load_space(_write(tmp_path, {**BASE, "register_as": "mf-mine"}, "b.yaml"))
    assert plain.register_as == "mf-movielens" and named.digest() == plain.digest()  # where it goes, not what
    assert SearchOptions().resolved(named).register_as == "mf-mine"
    assert SearchOptions(register_as="mf-flag").resolved(named).register_as == "mf-flag"


@pytest.mark.slow
def test_the_wheel_carries_the_search_spaces(tmp_path):
    """Built from the repo, the wheel holds every space under the package, where a bare name finds it."""
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(repo)], check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("pipeline-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"pipeline/search_spaces/{p.name}" for p in SEARCH_SPACES.glob("*.yaml")}
    assert {"pipeline/search_spaces/quick.yaml", "pipeline/search_spaces/mf.yaml"} <= shipped <= names
    unpacked = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(unpacked)  # the installed layout, away from the checkout
    found = subprocess.run([sys.executable, "-c", "from pipeline.space import space_file; print(space_file('quick'))"],
                           cwd=tmp_path, env={"PYTHONPATH": str(unpacked), "PATH": ""}, capture_output=True, text=True)
    assert found.stdout.strip() == str(unpacked / "pipeline" / "search_spaces" / "quick.yaml"), found.stderr
