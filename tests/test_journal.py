"""The journal storage (pipeline.search.journal): a record cut short by a crash is removed and
kept aside before anything is written after it; a damaged or foreign file is named and left alone."""

import optuna
import pytest

from pipeline.search.journal import open_journal
from pipeline.search.options import SearchError
from pipeline.search.study import check_storage, open_storage


def _study_with_trials(path, n: int) -> None:
    study = optuna.create_study(storage=open_journal(path), study_name="s")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=n)


def test_a_torn_last_record_is_cut_off_kept_aside_and_the_study_goes_on(tmp_path, capsys):
    path = tmp_path / "optuna.journal"
    _study_with_trials(path, 3)
    whole = path.read_bytes()
    path.write_bytes(whole[:-30])  # the last record (trial 2's completion) cut short by a crash
    study = optuna.load_study(study_name="s", storage=open_storage(str(path)))
    assert "cut short by a crash" in capsys.readouterr().err
    assert path.read_bytes() == whole[:whole.rstrip(b"\n").rfind(b"\n") + 1]  # up to the last whole record
    (torn,) = tmp_path.glob("optuna.journal.torn-*")
    assert torn.read_bytes() == whole[len(path.read_bytes()):-30]
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "RUNNING"]
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)  # written after a clean line
    fresh = optuna.load_study(study_name="s", storage=open_journal(path))
    assert [t.state.name for t in fresh.trials] == ["COMPLETE", "COMPLETE", "RUNNING", "COMPLETE"]
    assert len(list(tmp_path.glob("optuna.journal.torn-*"))) == 1  # an intact file is not touched


def test_a_damaged_record_inside_the_journal_is_named_and_nothing_is_written(tmp_path):
    path = tmp_path / "optuna.journal"
    _study_with_trials(path, 2)
    lines = path.read_bytes().splitlines(keepends=True)
    lines[2] = b'{"op_co' + lines[2]  # what appending after a torn record used to leave
    damaged = b"".join(lines)
    path.write_bytes(damaged)
    with pytest.raises(SearchError, match=rf"--storage {path}: line 3 is not an Optuna journal record.*head -n 2"):
        open_storage(str(path))
    assert path.read_bytes() == damaged


def test_a_file_that_is_not_a_journal_or_a_folder_is_refused_untouched(tmp_path):
    ratings = tmp_path / "ratings.csv"
    ratings.write_bytes(b"user_id,item_id,rating\n1,2,5")  # no final newline: must not be "repaired"
    with pytest.raises(SearchError, match="not an Optuna journal"):
        open_storage(str(ratings))
    assert ratings.read_bytes() == b"user_id,item_id,rating\n1,2,5"
    with pytest.raises(SearchError, match=rf"--storage {tmp_path}: a folder; expected a journal file"):
        check_storage(str(tmp_path))


def test_a_damaged_last_line_is_refused_before_anything_is_written_after_it(tmp_path):
    path = tmp_path / "optuna.journal"
    _study_with_trials(path, 2)
    damaged = path.read_bytes() + b'{"op_co{"op_code":5}\n'  # old versions appended after a torn record
    path.write_bytes(damaged)
    last = len(damaged.splitlines())
    with pytest.raises(SearchError, match=rf"line {last} is not an Optuna journal record"):
        open_storage(str(path))
    assert path.read_bytes() == damaged


def test_a_first_record_torn_short_or_a_long_torn_tail_is_cut_too(tmp_path):
    path = tmp_path / "optuna.journal"
    path.write_bytes(b'{"op_co')  # the very first write, cut short
    optuna.create_study(storage=open_journal(path), study_name="s")
    assert optuna.get_all_study_names(open_journal(path)) == ["s"]
    path.write_bytes(path.read_bytes() + b'{"op_code":4,' + b"x" * 70_000)  # torn beyond one 64 KiB read
    assert optuna.get_all_study_names(open_journal(path)) == ["s"] and path.read_bytes().endswith(b"\n")
