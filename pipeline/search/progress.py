"""What the search shows while it works: one line that moves inside a trial (epoch or sweep k of
n, the valid RMSE so far of every trial of a stack), an ETA from the measured cost of an epoch of
each family, and the finish's steps as they happen.

On a terminal (stderr a tty) the line is redrawn in place. Otherwise one line per event, never a
carriage return: a trial's start, every tenth of its epochs (at most one line per `GAP` s per
trial, or stack), its end, each finish step. `quiet`: nothing (the summary is printed elsewhere)."""

from __future__ import annotations

import math
import shutil
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import optuna
from optuna.trial import TrialState

from pipeline.objectives import champion, metric_names, valid_rmse

__all__ = ["Plan", "Progress", "Steps", "clock_text", "eta_seconds", "future_epochs"]

GAP = 5.0  # seconds between two epoch lines of one trial (or stack), without a terminal
REDRAW = 0.1  # seconds between two redraws of the live line on a terminal


def unit(family: str) -> str:
    return "sweep" if family == "bayes" else "epoch"


def clock_text(seconds: float | None) -> str:
    """0:42, 12:03, 1:02:03; None (nothing measured yet): "?"."""
    if seconds is None:
        return "?"
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


def eta_seconds(per_epoch: Mapping[str, float], left: Mapping[str, float]) -> float | None:
    """Seconds that the epochs `left` (by family: epochs or sweeps still to run, of the trials
    running and of those to come) take at each family's measured cost `per_epoch` (seconds per
    trial-epoch); None while a family with epochs left has no measurement: "ETA ?", not a guess."""
    if any(n > 0 and family not in per_epoch for family, n in left.items()):
        return None
    return sum(per_epoch[family] * n for family, n in left.items() if n > 0)


def future_epochs(trials: float, families: Sequence[str], planned: int, ran: Mapping[str, Sequence[int]]
                  ) -> dict[str, float]:
    """The epochs (by family) that `trials` trials not started yet will run: each family of the
    space an equal share of them (which one the sampler picks is not known in advance), each trial
    of a family the mean epochs its finished trials ran (pruning and patience included), else
    `planned` (the space's epochs)."""
    share = trials / len(families)
    return {f: share * (sum(ran[f]) / len(ran[f]) if ran.get(f) else planned) for f in families}


@dataclass(frozen=True)
class Plan:
    """The trials to come: the space's families and epochs; the processes that share them."""

    families: tuple[str, ...] = ("mf",)
    epochs: int = 20
    workers: int = 1


class _Line:
    """stderr: redrawn in place on a terminal, one line per event otherwise."""

    def __init__(self, tty: bool | None, clock: Callable[[], float]) -> None:
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.clock, self.drawn, self.last = clock, False, -math.inf

    def event(self, text: str) -> None:
        if self.tty:
            self._draw(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def live(self, text: str) -> None:
        """A redraw on a terminal (at most one per REDRAW s); nothing otherwise."""
        if self.tty and self.clock() - self.last >= REDRAW:
            self._draw(text)

    def _draw(self, text: str) -> None:
        width = shutil.get_terminal_size((150, 24)).columns - 1  # a wrapped line could not be redrawn
        print("\r" + text[:width].ljust(width), end="", file=sys.stderr, flush=True)
        self.drawn, self.last = True, self.clock()

    def close(self) -> None:
        if self.drawn:
            print(file=sys.stderr, flush=True)
            self.drawn = False


@dataclass
class _Pace:
    """When an epoch line is due without a terminal: at each new tenth of the epochs, at most one
    line per GAP s (the first always); never at the last epoch (the end's line follows)."""

    printed: float | None = None
    tenth: int = 0

    def due(self, epoch: int, epochs: int, now: float) -> bool:
        tenth = epoch * 10 // max(epochs, 1)
        if epoch >= epochs or tenth <= self.tenth or (self.printed is not None and now - self.printed < GAP):
            return False
        self.printed, self.tenth = now, tenth
        return True


@dataclass
class _Trial:
    family: str
    epochs: int
    epoch: int = 0
    valid: float = math.nan
    best: float = math.inf


@dataclass
class _Group:
    """Trials that train together (a stack, or one trial alone): one family, one epoch at a time."""

    numbers: list[int]
    family: str
    epochs: int
    last: float  # when its last epoch ended (or it started)
    epoch: int = 0
    pace: _Pace = field(default_factory=_Pace)


def _names(numbers: Sequence[int]) -> str:
    """"trial 4", "trials 3-5", "trials 1, 3-4"."""
    runs: list[list[int]] = []
    for n in sorted(numbers):
        if runs and n == runs[-1][-1] + 1:
            runs[-1][1:] = [n]  # a run's first and last
        else:
            runs.append([n])
    return f"trial{'s' * (len(numbers) > 1)} " + ", ".join("-".join(map(str, r)) for r in runs)


class Progress:
    """The trials' progress. `begin` (a stack, or one trial, starts training), `epoch` (each trial's
    epoch callback: `Objective.fit`'s on_epoch), and the call with each told trial (`run_batch`'s
    callbacks, as Optuna's `optimize` calls them). total: the cap; done: the trials finished when
    this process started. clock and tty: for tests (default: time.monotonic, stderr.isatty())."""

    def __init__(self, total: int, done: int, quiet: bool, plan: Plan = Plan(), *,
                 clock: Callable[[], float] = time.monotonic, tty: bool | None = None) -> None:
        self.total, self.done, self.quiet, self.plan, self.clock = total, done, quiet, plan, clock
        self.start, self.line = clock(), _Line(tty, clock)
        self.trials: dict[int, _Trial] = {}  # training now
        self.groups: dict[int, _Group] = {}  # trial number -> its group
        self.cost: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])  # family -> seconds, trial-epochs
        self.first: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])  # first epochs: set-up included
        self.ran: dict[str, list[int]] = defaultdict(list)  # family -> epochs of each trial ended here
        self.around, self.told_at = [0.0, 0], None  # seconds outside epochs (runs, tells), trials ended
        self.best = ""

    def begin(self, members: Sequence[tuple[int, str, int]]) -> None:
        """members: (trial number, family, epochs) of the trials that start training together."""
        if self.quiet or not members:
            return
        numbers = [n for n, _, _ in members]
        family, epochs = members[0][1], max(e for _, _, e in members)
        group = _Group(numbers, family, epochs, self.clock())
        if self.told_at is not None:  # from the last tell to this start: asks, cap checks, runs started
            self.around[0] += group.last - self.told_at
        for number, fam, n in members:
            self.trials[number], self.groups[number] = _Trial(fam, n), group
        one = len(numbers) == 1
        self.line.event(f"{self._bar()} | {_names(numbers)} {unit(family)} 0/{epochs} | {self._timing()}"
                        if self.line.tty else f"{_names(numbers)} {'begins' if one else 'begin'}: "
                        f"{'' if one else f'a stack of {len(numbers)} '}{family}, {epochs} {unit(family)}s")

    def epoch(self, number: int, epoch: int, valid_rmse: float) -> None:
        """Trial `number` ended `epoch` with `valid_rmse`; a stack's line moves once all its trials
        still training have reported the epoch."""
        if self.quiet or number not in self.trials:
            return
        trial, group = self.trials[number], self.groups[number]
        trial.epoch, trial.valid, trial.best = epoch, valid_rmse, min(trial.best, valid_rmse)
        live = [n for n in group.numbers if n in self.trials]
        if any(self.trials[n].epoch != epoch for n in live):
            return
        now = self.clock()
        measured = self.first if epoch == 1 else self.cost
        measured[group.family][0] += now - group.last
        measured[group.family][1] += len(live)  # a stack's epoch costs each of its trials a share
        group.last, group.epoch = now, epoch
        doing = self._doing(group, live)
        if self.line.tty:
            self.line.live(f"{self._bar()} | {doing} | {self._timing()}")
        elif group.pace.due(epoch, group.epochs, now):
            self.line.event(f"{doing} | {self._timing()}")

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """A trial was told: the trials done, the best so far, how this one ended."""
        if self.quiet:
            return
        ended, self.told_at = self.trials.pop(trial.number, None), self.clock()
        if ended is not None:  # from its last epoch to its tell: its record, its run's end, the tell
            self.around[0] += self.told_at - self.groups.pop(trial.number).last
            self.around[1] += 1
            self.ran[ended.family].append(ended.epoch)
        self.done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
        try:
            best = champion(study)
            names = metric_names(study)
            score = f"valid RMSE {valid_rmse(best):.4f}" if len(names) > 1 or names == ["valid_rmse"] else \
                f"{names[0]} {best.value:.4f}"  # one objective other than valid RMSE: its best
            self.best = f"best {score} (trial {best.number})"
        except ValueError:
            self.best = "no complete trial yet"
        state = trial.state.name.lower()
        if trial.state == TrialState.FAIL:
            state += f": {trial.user_attrs.get('fail_reason', 'see the log')}"
        self.line.event(f"{self._bar()} | {self._timing()} | trial {trial.number} {state}")

    def close(self) -> None:
        self.line.close()

    def per_epoch(self) -> dict[str, float]:
        """Measured seconds per trial-epoch of each family (first epochs only where nothing else is)."""
        return {f: s / n for f, (s, n) in {**self.first, **self.cost}.items() if n}

    def eta(self) -> float | None:
        """Seconds left: the epochs the trials training now have left, and those of the trials to
        come (shared among the workers), at each family's measured cost, and each trial to come's
        measured time outside its epochs; None: not measured yet."""
        left: dict[str, float] = defaultdict(float)
        for t in self.trials.values():
            left[t.family] += max(t.epochs - t.epoch, 0)
        to_come = max(self.total - self.done - len(self.trials), 0)
        for family, n in future_epochs(to_come, self.plan.families, self.plan.epochs, self.ran).items():
            left[family] += n / self.plan.workers
        seconds, (outside, trials) = eta_seconds(self.per_epoch(), left), self.around
        return None if seconds is None else seconds + to_come * outside / max(trials, 1) / self.plan.workers

    def _bar(self) -> str:
        width, done = 24, min(self.done, self.total)
        filled = int(width * done / max(self.total, 1))
        bar = f"[{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} trials"
        return f"{bar} | {self.best}" if self.best else bar

    def _timing(self) -> str:
        return f"{clock_text(self.clock() - self.start)} elapsed, ETA {clock_text(self.eta())}"

    def _doing(self, group: _Group, live: list[int]) -> str:
        """"trial 4 epoch 4/20 valid 0.9120 (best 0.9100)", a stack's values side by side, or the best of
        more than four."""
        head = f"{_names(live)} {unit(group.family)} {group.epoch}/{group.epochs}"
        trials = [self.trials[n] for n in live]
        if len(trials) == 1:
            return f"{head} valid {trials[0].valid:.4f} (best {trials[0].best:.4f})"
        if len(trials) <= 4:
            return f"{head} valid " + "/".join(f"{t.valid:.4f}" for t in trials)
        value, number = min((t.valid, n) for t, n in zip(trials, live))
        return f"{head} best valid {value:.4f} (trial {number}) of {len(trials)}"


class Steps:
    """The finish's steps as they happen: `steps("registering")` says a step starts;
    `steps.epochs(what, n, family)` says a refit starts and returns its epoch callback (fit's
    `callback=`), "finish: refit trial 7 sweep 20/200 | ETA 0:40"; None when quiet."""

    def __init__(self, quiet: bool, *, clock: Callable[[], float] = time.monotonic, tty: bool | None = None) -> None:
        self.quiet, self.clock, self.line = quiet, clock, _Line(tty, clock)

    def __call__(self, text: str) -> None:
        if not self.quiet:
            self.line.event(f"finish: {text}")

    def epochs(self, what: str, n: int, family: str) -> Callable[[int, float, float], None] | None:
        if self.quiet:
            return None
        self(f"{what}: {n} {unit(family)}s")
        start, pace = self.clock(), _Pace()

        def on_epoch(epoch: int, train_mse: float, valid_rmse: float) -> None:
            now = self.clock()
            left = (now - start) / epoch * max(n - epoch, 0)
            text = f"finish: {what} {unit(family)} {epoch}/{max(n, epoch)} | ETA {clock_text(left)}"
            if self.line.tty:
                self.line.live(text)
            elif pace.due(epoch, n, now):
                self.line.event(text)

        return on_epoch

    def close(self) -> None:
        self.line.close()
