"""The live progress (pipeline/search/progress.py): the line inside a trial (epoch or sweep k of n,
every trial of a stack), the ETA from each family's measured cost, the finish's steps, one line
per event without a terminal; driven by a fake clock, then once through a two-trial search."""

import re

import optuna
import pytest
from optuna.trial import TrialState

from conftest import Workspace
from pipeline import search
from pipeline.search.progress import Plan, Progress, Steps, clock_text, eta_seconds, future_epochs


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _asked(n: int) -> tuple[optuna.Study, list]:
    study = optuna.create_study()
    return study, [study.ask() for _ in range(n)]


def _told(study: optuna.Study, asked: list, number: int, value: float | None, state=TrialState.COMPLETE):
    """Tell trial `number`; the frozen trial the batch hands its callbacks."""
    study.tell(asked[number], value, state=state)
    return study.trials[number]


def test_the_eta_arithmetic_on_hand_made_numbers():
    # 10 mf epochs at 0.5 s and 100 bayes sweeps at 3 s
    assert eta_seconds({"mf": 0.5, "bayes": 3.0}, {"mf": 10, "bayes": 100}) == 305.0
    assert eta_seconds({"mf": 0.5}, {"mf": 10, "bayes": 100}) is None  # a sweep not measured yet: no guess
    assert eta_seconds({"mf": 0.5}, {"mf": 10, "bayes": 0}) == 5.0  # nothing left of an unmeasured family
    # 4 trials to come, two families: 2 each; mf's ran 8 and 12 epochs (mean 10), bayes none yet (planned 200)
    assert future_epochs(4, ("bayes", "mf"), 200, {"mf": [8, 12]}) == {"bayes": 400.0, "mf": 20.0}
    assert [clock_text(s) for s in (None, 0, 61.9, 3723)] == ["?", "0:00", "1:01", "1:02:03"]


def test_the_eta_counts_each_trial_s_epochs_left_at_the_measured_cost(capsys):
    clock = Clock()
    progress = Progress(total=3, done=0, quiet=False, plan=Plan(("mf",), epochs=10), clock=clock, tty=False)
    progress.begin([(0, "mf", 10)])
    assert progress.eta() is None
    clock.now = 2.0  # the first epoch, set-up included: what is known until a second one
    progress.epoch(0, 1, 0.95)
    assert progress.eta() == pytest.approx(2.0 * (9 + 2 * 10))
    clock.now = 3.0  # one second an epoch from now on
    progress.epoch(0, 2, 0.94)
    assert progress.eta() == pytest.approx(8 + 2 * 10)
    assert capsys.readouterr().err.splitlines()[1] == "trial 0 epoch 1/10 valid 0.9500 (best 0.9500) | 0:02 elapsed, ETA 0:58"
    for epoch in range(3, 11):
        clock.now += 1.0
        progress.epoch(0, epoch, 0.93)
    study, asked = _asked(1)
    clock.now += 0.5  # its record, run and tell; then 0.5 s more to the next start: 1 s outside epochs a trial
    progress(study, _told(study, asked, 0, 0.93))
    clock.now += 0.5
    progress.begin([(1, "mf", 10)])
    assert progress.eta() == pytest.approx(1.0 * (10 + 10) + 1.0)  # its 10 epochs, trial 2's 10 (as 0 ran) and 1 s


def test_no_eta_before_a_bayes_sweep_is_measured():
    """Trials of mf measured, a Bayesian trial starting: its sweeps have no cost yet, so no number
    (the search once said "ETA 0:21" before a 9-minute Bayesian trial)."""
    clock = Clock()
    progress = Progress(total=4, done=0, quiet=False, plan=Plan(("bayes", "mf"), epochs=200), clock=clock, tty=False)
    study, asked = _asked(2)
    progress.begin([(0, "mf", 20)])
    for epoch in (1, 2):
        clock.now += 0.1
        progress.epoch(0, epoch, 0.95)
    progress(study, _told(study, asked, 0, 0.95))
    progress.begin([(1, "bayes", 200)])
    assert progress.eta() is None
    clock.now += 2.7
    progress.epoch(1, 1, 0.93)
    # left: its 199 sweeps; 2 trials to come, one of each family: 200 sweeps, and 2 epochs (what trial 0 ran)
    assert progress.eta() == pytest.approx(2.7 * (199 + 200) + 0.1 * 2)


def test_without_a_terminal_one_line_per_event_in_order_and_no_carriage_return(capsys):
    clock = Clock()
    progress = Progress(total=4, done=0, quiet=False, plan=Plan(("mf",), epochs=8), clock=clock, tty=False)
    study, asked = _asked(4)
    progress.begin([(0, "mf", 20)])
    for epoch in range(1, 21):  # a second an epoch: a line at each tenth, at most one per 5 s
        clock.now += 1.0
        progress.epoch(0, epoch, 1 - epoch / 100)
    progress(study, _told(study, asked, 0, 0.8))
    progress.begin([(1, "mf", 8), (2, "mf", 8), (3, "mf", 8)])
    for epoch in range(1, 9):
        clock.now += 3.0
        for number in (1, 2, 3):
            if number != 2 or epoch <= 3:
                progress.epoch(number, epoch, 0.9 + number / 100)
        if epoch == 3:  # trial 2 pruned: the stack goes on without it
            progress(study, _told(study, asked, 2, None, TrialState.PRUNED))
    progress.close()
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert lines[0] == "trial 0 begins: mf, 20 epochs"
    assert [re.match(r"trial 0 epoch (\d+)/20 valid ", line)[1] for line in lines[1:5]] == ["2", "7", "12", "17"]
    assert lines[1].startswith("trial 0 epoch 2/20 valid 0.9800 (best 0.9800) | 0:02 elapsed, ETA ")
    assert lines[5].startswith("[######..................] 1/4 trials | best valid RMSE 0.8000 (trial 0) | 0:20 elapsed")
    assert lines[5].endswith("| trial 0 complete")
    assert lines[6] == "trials 1-3 begin: a stack of 3 mf, 8 epochs"
    assert lines[7].startswith("trials 1-3 epoch 1/8 valid 0.9100/0.9200/0.9300 | 0:23 elapsed, ETA ")
    assert lines[8].startswith("trials 1-3 epoch 3/8 ")  # 3 s an epoch: every other epoch, 6 s apart
    assert lines[9].startswith("[############............] 2/4 trials | ") and lines[9].endswith("| trial 2 pruned")
    assert lines[10].startswith("trials 1, 3 epoch 5/8 valid 0.9100/0.9300 | 0:35 elapsed, ETA ")
    assert len(lines) == 12 and lines[11].startswith("trials 1, 3 epoch 7/8 ")  # the last epoch: no line


def test_a_large_stack_shows_its_best_and_a_terminal_redraws_one_line(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # the line is cut to the terminal's width
    clock = Clock()
    progress = Progress(total=8, done=0, quiet=False, plan=Plan(("mf",), epochs=5), clock=clock, tty=True)
    progress.begin([(n, "mf", 5) for n in range(8)])
    for epoch in (1, 2):
        clock.now += 1.0
        for n in range(8):
            progress.epoch(n, epoch, 0.9 + abs(n - 5) / 100)
    frames = capsys.readouterr().err.split("\r")[1:]
    assert len(frames) == 3 and "\n" not in "".join(frames)  # begin, two epochs: redrawn in place
    assert "| trials 0-7 epoch 2/5 best valid 0.9000 (trial 5) of 8 | 0:02 elapsed, ETA 0:03" in frames[-1]
    progress.close()
    assert capsys.readouterr().err == "\n"


def test_the_finish_steps_and_the_refit_s_sweeps(capsys):
    clock = Clock()
    steps = Steps(quiet=False, clock=clock, tty=False)
    on_epoch = steps.epochs("refit trial 7", 200, "bayes")
    for sweep in range(1, 201):
        clock.now += 2.0
        on_epoch(sweep, 0.7, float("nan"))
    steps("scoring trial 7 on test")
    steps.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "finish: refit trial 7: 200 sweeps"
    assert lines[1] == "finish: refit trial 7 sweep 20/200 | ETA 6:00"  # 40 s for 20: 2 s each, 180 left
    assert len(lines) == 11 and lines[9] == "finish: refit trial 7 sweep 180/200 | ETA 0:40"
    assert lines[10] == "finish: scoring trial 7 on test"


def test_quiet_prints_nothing(capsys):
    study, asked = _asked(1)
    progress = Progress(total=2, done=0, quiet=True, tty=False)
    progress.begin([(0, "mf", 2)])
    progress.epoch(0, 1, 0.9)
    progress(study, _told(study, asked, 0, 0.9))
    progress.close()
    steps = Steps(quiet=True, tty=False)
    assert steps.epochs("refit trial 0", 2, "mf") is None
    steps("registering")
    steps.close()
    assert capsys.readouterr().err == ""


@pytest.mark.slow
def test_a_two_trial_search_prints_its_events_in_order_and_quiet_none(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ws = Workspace(tmp_path)
    argv = [a for a in ws.argv("--n-trials", "2") if a != "--quiet"]
    assert search.main(argv) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    expected = [r"trial 0 begins: mf, \d+ epochs", r"trial 0 epoch \d+/\d+ valid ", r"1/2 trials \|.*\| trial 0 ",
                r"trial 1 begins: mf, \d+ epochs", r"trial 1 epoch \d+/\d+ valid ", r"2/2 trials \|.*\| trial 1 ",
                r"finish: refit trial \d: \d+ epochs", r"finish: scoring trial \d on test", r"finish: figures",
                r"finish: logging the model", r"finish: registering as "]
    lines, at = err.splitlines(), 0
    for pattern in expected:  # each in turn, after the one before
        at = next((i for i in range(at, len(lines)) if re.search(pattern, lines[i])), None)
        assert at is not None, f"{pattern!r} not found in order in:\n{err}"
    assert ws.search("--n-trials", "3") == 0  # --quiet: trial 2 and maybe a finish, none of it shown
    err = capsys.readouterr().err
    assert not re.search(r"begins|epoch \d|trials \||finish:", err), err
