"""Fault injection for the search's once-only steps and signals (issue 10): a process killed at
the worst moment leaves nothing that a rerun cannot finish, and nothing RUNNING that is not."""

import signal
import subprocess
import sys
import textwrap

import optuna
import pytest

from conftest import Workspace

pytestmark = pytest.mark.slow

# Runs the search with one function ("module:attribute.path") replaced by a SIGKILL of the process.
_KILLED_AT = textwrap.dedent("""
    import functools, importlib, os, signal, sys
    module, path = sys.argv[1].split(":")
    *owners, name = path.split(".")
    owner = functools.reduce(getattr, owners, importlib.import_module(module))
    setattr(owner, name, lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL))
    from pipeline.search import main
    sys.exit(main(sys.argv[2:]))
""")


def _killed_at(where: str, ws) -> None:
    killed = subprocess.run([sys.executable, "-c", _KILLED_AT, where, *ws.argv("--n-trials", "2")], cwd=ws.root,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr


def _nothing_running(ws) -> None:
    assert [r.info.run_name for r in ws.runs() if r.info.status == "RUNNING"] == []


def _journal(ws) -> optuna.storages.BaseStorage:
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(ws.root / "optuna.journal")))


def _only_the_study(ws) -> None:
    """The once-only steps (init, parent, finish, retries) left no study of their own behind."""
    assert optuna.get_all_study_names(_journal(ws)) == ["ratings-quick"]


@pytest.mark.parametrize("method", ["log_model_artifacts", "set_registered_model_alias"])
def test_a_finish_killed_half_way_is_finished_by_the_rerun_once(tmp_path, monkeypatch, method):
    ws = Workspace(tmp_path)
    _killed_at(f"mlflow:MlflowClient.{method}", ws)  # mid-log, or registered without its alias
    monkeypatch.chdir(tmp_path)
    assert ws.search("--n-trials", "2", "--grace", "1") == 0  # the dead holder's lease lapses after 1 s
    versions = ws.client.search_model_versions("name = 'mf-movielens-quick'")
    assert len(versions) == 1
    assert ws.client.get_model_version_by_alias("mf-movielens-quick", "champion").version == versions[0].version
    (parent,) = ws.parents()
    assert parent.info.status == "FINISHED"
    logged = ws.client.search_logged_models([parent.info.experiment_id])
    assert [str(m.status) for m in logged] == ["READY"]  # the half-logged one is gone, or reused
    _nothing_running(ws)
    assert ws.search("--n-trials", "2") == 0  # a rerun of the finished study changes nothing
    assert len(ws.client.search_model_versions("name = 'mf-movielens-quick'")) == 1
    assert ws.parents()[0].info.status == "FINISHED"
    _only_the_study(ws)  # the dead holder's claim was swept by the one that took over


def test_a_worker_killed_mid_trial_is_retried_by_the_rerun(tmp_path, monkeypatch):
    """SIGKILL during trial 0 on the journal storage (no heartbeat): the rerun fails the dead
    trial, runs it again, closes its run and reaches the cap."""
    ws = Workspace(tmp_path)
    _killed_at("pipeline.search.objective:fit_stack", ws)
    monkeypatch.chdir(tmp_path)
    assert ws.search("--n-trials", "2") == 0
    study = optuna.load_study(study_name="ratings-quick", storage=_journal(ws))
    states = [t.state.name for t in study.trials]
    assert states[0] == "FAIL" and "died" in study.trials[0].user_attrs["fail_reason"]
    assert sum(s in ("COMPLETE", "PRUNED") for s in states) == 2  # the cap, reached
    assert study.trials[1].user_attrs == {**study.trials[1].user_attrs, "reference": "d2l", "retry_of": 0}
    _nothing_running(ws)
    assert ws.parents()[0].info.status == "FINISHED"
    _only_the_study(ws)


def test_processes_opening_a_fresh_sqlite_store_together_all_succeed(tmp_path):
    script = "from pipeline.tracking import Tracker; print(Tracker.connect('sqlite:///mlflow.db', 'pipeline').experiment_id)"
    processes = [subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [(p.wait(120), *p.communicate()) for p in processes]
    assert [code for code, _, _ in results] == [0] * 4, [err[-300:] for _, _, err in results]
    assert len({out for _, out, _ in results}) == 1  # one experiment


def test_two_searches_started_together_in_one_folder_share_one_study(tmp_path):
    ws = Workspace(tmp_path)
    argv = [sys.executable, "-m", "pipeline.search", *ws.argv("--n-trials", "3")]
    processes = [subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
    results = [(p.wait(300), p.communicate()[1]) for p in processes]
    assert [code for code, _ in results] == [0, 0], [err[-500:] for _, err in results]
    assert len(ws.parents()) == 1 and ws.parents()[0].info.status == "FINISHED"
    assert len(ws.client.search_model_versions("name = 'mf-movielens-quick'")) == 1
    _nothing_running(ws)
    _only_the_study(ws)  # the default-like search, twice at once: no marker study left
