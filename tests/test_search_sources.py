"""The ratings source of a search: the shared source flags, the space's `dataset` section, and the
errors that stop a search before any work (no MLflow, no study)."""

import pytest
import yaml

from pipeline import search
from pipeline.search.options import SearchOptions
from pipeline.space import SEARCH_SPACES, SpaceError, load_space


def _ratings(folder, bad_line=None):
    rows = [f"{u},{i},{1 + (u * i) % 5}" for u in range(1, 11) for i in range(1, 11)]
    if bad_line:
        rows[bad_line - 2] = rows[bad_line - 2].rsplit(",", 1)[0] + ",55"
    path = folder / "ratings.csv"
    path.write_text("user,item,rating\n" + "\n".join(rows) + "\n")
    return path


def _space(folder, dataset):
    raw = yaml.safe_load((SEARCH_SPACES / "quick.yaml").read_text())
    raw["dataset"] = dataset
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _search(folder, *argv):
    return search.main(["--storage", str(folder / "optuna.journal"), "--tracking-uri",
                        f"sqlite:///{folder / 'mlflow.db'}", "--quiet", *argv])


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_source_flags_are_the_train_commands(here):
    options = SearchOptions.parse(["--rating-scale", "1,5", "--columns", "user_id=u,item_id=i", "--sep", ";",
                                   "--no-header"])
    assert (options.rating_scale, options.columns, options.sep, options.header) == (
        (1.0, 5.0), {"user_id": "u", "item_id": "i"}, ";", False)
    assert SearchOptions.parse([]).rating_scale is None


def test_a_declared_scale_on_the_command_line_stops_the_search_at_the_line(here, capsys):
    data = _ratings(here, bad_line=9)
    assert _search(here, "--config", "quick", "--dataset", str(data), "--rating-scale", "1,5") == 2
    assert "ratings.csv: line 9, column 'rating': 55 is outside the rating scale" in capsys.readouterr().err
    assert sorted(p.name for p in here.iterdir()) == ["ratings.csv"]  # no study, no MLflow database


def test_a_declared_scale_in_the_space_stops_the_search_at_the_line(here, capsys):
    data = _ratings(here, bad_line=4)
    config = _space(here, {"name": str(data), "rating_scale": [1, 5]})
    assert _search(here, "--config", str(config)) == 2
    assert "ratings.csv: line 4, column 'rating': 55 is outside the rating scale" in capsys.readouterr().err
    wide = _space(here, {"name": str(data), "rating_scale": [1, 100]})
    assert _search(here, "--config", str(wide), "--rating-scale", "1,5") == 2  # the flag wins
    assert "line 4, column 'rating'" in capsys.readouterr().err


def test_the_dataset_section_a_name_or_a_mapping(here):
    plain = load_space(_space(here, "ml-100k"))
    assert plain.dataset.name == "ml-100k" and plain.dataset.options() == {}
    assert plain.model_dump()["dataset"] == "ml-100k"  # so the digest of existing spaces is unchanged
    assert plain.digest() == load_space("quick").digest()
    declared = load_space(_space(here, {"name": "ml-100k", "rating_scale": [1, 5]}))
    assert declared.dataset.options() == {"rating_scale": (1.0, 5.0)} and declared.digest() != plain.digest()


@pytest.mark.parametrize("dataset,message", [
    ({"name": "ml-100k", "rating_scale": [5, 1]}, "dataset.rating_scale: Value error, rating_scale (5, 1)"),
    ({"name": "ml-100k", "scale": [1, 5]}, "dataset.scale: Extra inputs are not permitted"),
    ({"rating_scale": [1, 5]}, "dataset.name: Field required"),
])
def test_a_bad_dataset_section_names_the_file_and_key(here, dataset, message):
    with pytest.raises(SpaceError) as error:
        load_space(_space(here, dataset))
    assert "space.yaml: " + message in str(error.value)


def test_a_binary_config_is_one_clear_error(here, capsys):
    path = here / "space.yaml"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(SpaceError, match=r"space.yaml: not a text file \(byte 128 is not UTF-8\)"):
        load_space(path)
    assert _search(here, "--config", str(path)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "space.yaml: not a text file" in err and "Traceback" not in err
