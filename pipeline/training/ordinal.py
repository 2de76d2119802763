"""Ordinal output under the Gibbs sampler (`TrainConfig.output: ordinal`): an ordered probit on
the ratings' own scale (Albert & Chib 1993).

The training ratings' distinct values are the levels ℓ_0 < … < ℓ_{K−1}. A rating at level k is a
latent z = f + ε, ε ~ N(0, 1/α), f = μ + U_u·V_i the model's score, that fell between the
cutpoints c_{k−1} < z ≤ c_k (c_{−1} = −∞, c_{K−1} = +∞). Given z the model is the Gaussian
regression that `gibbs._Sampler` draws, α its noise precision (held or drawn alike). The outer
cutpoints are held at the midpoints of the outer levels (1.5 and 4.5 for 1-5 stars): they pin
the latent's scale to the ratings', so α means what it means for regression. (Free, with unit
noise, f and the cutpoints stretch together as the fit improves, as a drawn α rises: ml-100k
split 1, rank 22, the top cutpoint 0.81 -> 1.18 over 60 sweeps, test RMSE 0.886 against 0.880.)
The inner ones start at their midpoints too and are sampled. Per sweep, given f and α:
- the inner cutpoints, by Metropolis steps on their likelihood with z integrated out (Cowles
  1996: drawn given z, a cutpoint could only move within the gap between its two levels' nearest
  latents, a ~1/n step). Each cutpoint bounds two levels only, so the odd ones move together,
  then the even ones, each accepted on its own: two likelihood passes per parity, whatever K;
- then z, from its normal truncated to its level's interval (inverse CDF, in float64).

The prediction, the expected rating under the posterior, collapses into one scorer
(`OrdinalMF`): the kept samples' latent scores f_s average exactly into one MF's tables (as for
regression), their cutpoints into one set, and the spread of the f_s about their mean f̄ enters
as a variance: with f_s ~ N(f̄, v), mean_s Φ((f_s − c) / σ) = Φ((f̄ − c) / sqrt(σ² + v)), v the
posterior variance averaged over the fitted rows (`link`). Measured on ml-100k (split 1, rank 22,
115 samples, test rows): 0.87629 test RMSE against 0.87628 for the samples' own average, and
0.8809 for 16 of them kept; a scorer the size of the regression's, whatever the number of sweeps.
"""

from __future__ import annotations

import torch

from pipeline.model import MatrixFactorization, OrdinalMF, ordinal_mean

__all__ = ["MAX_LEVELS", "OrderedProbit", "link", "scorer"]

MAX_LEVELS = 20  # more distinct ratings than this are a continuous scale: use the regression output


class OrderedProbit:
    """The probit's state for the fitted rows: `levels` (K,) float32, `level` (N,) each row's level
    index, `cutpoints` (K − 1,) float64; `latents(f, alpha)` draws the sweep's new targets z."""

    def __init__(self, ratings: torch.Tensor, generator: torch.Generator) -> None:
        levels, self.level = torch.unique(ratings, sorted=True, return_inverse=True)
        if not 2 <= len(levels) <= MAX_LEVELS:
            raise ValueError(f"train config output='ordinal': the training ratings take {len(levels)} distinct "
                             f"value(s): expected 2 to {MAX_LEVELS} ordered levels (such as 1-5 stars); "
                             "use output='regression' for a continuous scale")
        self.levels, self.g = levels.float(), generator
        self.cutpoints = (levels[:-1] + levels[1:]).double() / 2
        counts = torch.bincount(self.level, minlength=len(levels)).double()
        # About 2x a cutpoint's posterior sd (~1.8 σ / sqrt(the rows of the two levels it bounds)).
        self.step = 4.0 / (counts[:-1] + counts[1:]).sqrt()

    def latents(self, f: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """New inner cutpoints given the rows' scores f (N,) and the noise precision α (), then
        z (N,) float32 given them."""
        f, sd = f.double(), alpha.double().rsqrt()
        self._move_cutpoints(f, sd)
        lo, hi = self._bounds(self.cutpoints)
        return (f + sd * _truncated_normal((lo - f) / sd, (hi - f) / sd, self.g)).float()

    def expected(self, f: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """The expected ratings, float64 (N,), of scores f (N,) under α and the cutpoints now."""
        return ordinal_mean(f.double(), self.cutpoints, alpha.double().sqrt(), self.levels.double())

    def _bounds(self, cutpoints: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inf = cutpoints.new_tensor([torch.inf])
        edges = torch.cat([-inf, cutpoints, inf])
        return edges[self.level], edges[self.level + 1]

    def _log_likelihood(self, cutpoints: torch.Tensor, f: torch.Tensor, sd: torch.Tensor) -> torch.Tensor:
        """log P(each row's level | f, cutpoints, σ), (N,) float64."""
        lo, hi = self._bounds(cutpoints)
        return _log_interval((lo - f) / sd, (hi - f) / sd)

    def _move_cutpoints(self, f: torch.Tensor, sd: torch.Tensor) -> None:
        index = torch.arange(len(self.cutpoints), device=f.device)
        for parity in (1, 0):
            moving = (index % 2 == parity) & (index > 0) & (index < len(index) - 1)  # the outer two are held
            if not moving.any():
                continue
            noise = torch.randn(len(index), generator=self.g, device=f.device, dtype=torch.float64)
            proposal = torch.where(moving, self.cutpoints + sd * self.step * noise, self.cutpoints)
            edges = torch.cat([proposal.new_tensor([-torch.inf]), proposal, proposal.new_tensor([torch.inf])])
            ordered = (edges[1:-1] > edges[:-2]) & (edges[1:-1] < edges[2:])
            change = self._log_likelihood(proposal, f, sd) - self._log_likelihood(self.cutpoints, f, sd)
            per_level = torch.zeros(len(index) + 1, dtype=torch.float64, device=f.device).index_add_(
                0, self.level, change)
            ratio = per_level[:-1] + per_level[1:]  # cutpoint k bounds levels k and k + 1 only
            uniform = torch.rand(len(index), generator=self.g, device=f.device, dtype=torch.float64)
            accept = moving & ordered & (uniform.log() < ratio)  # NaN (an unordered proposal): False
            self.cutpoints = torch.where(accept, proposal, self.cutpoints)


def link(cutpoints: torch.Tensor, noise: torch.Tensor, squares: torch.Tensor, fitted_mean: torch.Tensor
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """The posterior's ordinal link from S samples: their cutpoints (S, K − 1), noise variances 1/α
    (S,), mean squared latents over the fitted rows (S,), and the fitted rows' mean latent f̄ (N,) ->
    (the mean cutpoints (K − 1,), the scale 1 / sqrt(mean σ² + v)), v = mean_s mean_n f_sn² −
    mean_n f̄_n², the latents' posterior variance averaged over the fitted rows."""
    variance = (squares.double().mean() - fitted_mean.double().square().mean()).clamp_min(0)
    return cutpoints.double().mean(0), (noise.double().mean() + variance).rsqrt()


@torch.no_grad()
def scorer(latent: MatrixFactorization, cutpoints: torch.Tensor, noise: torch.Tensor, squares: torch.Tensor,
           fitted: tuple[torch.Tensor, torch.Tensor], levels: torch.Tensor) -> OrdinalMF:
    """The `OrdinalMF` over the posterior mean `latent` of samples with these cutpoints, noise
    variances and squares (`link`'s); fitted: the (users, items) rows the samples were drawn on
    (any device; rows of cold users or items, which the sampler leaves out, are left out)."""
    users, items = (t.to(latent.users.device) for t in fitted)
    known = (users < latent.n_users) & (items < latent.n_items)
    fitted_mean = latent(users[known], items[known])
    cuts, scale = link(cutpoints, noise, squares, fitted_mean)
    return OrdinalMF.over(latent, cuts, scale.item(), levels,
                          pooled=(noise.double().mean().item(), squares.double().mean().item()))


def _flipped(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(a, b) mirrored to (−b, −a) where a > 0, so that the interval's lower end is ≤ 0 and its
    normal probabilities are read in the accurate (lower) tail; returns the mask too."""
    flip = a > 0
    return torch.where(flip, -b, a), torch.where(flip, -a, b), flip


def _log_interval(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log(Φ(b) − Φ(a)) for a < b, float64, stable in both tails."""
    a, b, _ = _flipped(a, b)
    low, high = torch.special.log_ndtr(a), torch.special.log_ndtr(b)
    return high + torch.log1p(-torch.exp(low - high))


def _truncated_normal(a: torch.Tensor, b: torch.Tensor, generator) -> torch.Tensor:
    """One standard normal draw per row restricted to (a, b] (float64 (N,), a < b, ±inf allowed)."""
    a, b, flip = _flipped(a, b)
    low, high = torch.special.ndtr(a), torch.special.ndtr(b)
    u = torch.rand(a.shape, generator=generator, device=a.device, dtype=torch.float64)
    x = torch.special.ndtri(low + (high - low) * u)
    # An interval beyond float64's tail (both ends below ~-37 sd, where Φ underflows): there the
    # density is ~ exp(|b| (x − b)), an exponential from b down, truncated at a; drawn exactly.
    rate = b.abs().clamp_min(1.0)
    tail = b + torch.log1p(-u * -torch.expm1(-rate * (b - a))) / rate
    return torch.where(flip, -1.0, 1.0) * torch.where(torch.isfinite(x) & (x > a), x, tail)
