"""Exact speculative sampling of the few-step sampler (continuous speculative decoding, arXiv 2411.11925 / 2501.05370).

Every re-noising step of the sampler is a Gaussian transition: from x_i the next state is x_{i+1} ~ N((1 - s) x0(x_i),
s^2 I), s = sigma(t_{i+1}); drafter and target differ only in the mean. The drafter proposes its whole trajectory;
the target computes its own x0 at each proposed state and accepts the drafter's next state with probability
min(1, p_target / p_draft). At the first rejection it draws the next state by reflection maximal coupling of the two
Gaussians (the drafter's noise reflected across the hyperplane between the two means), which has exactly the target's
distribution, and samples the rest itself. The last step is deterministic (x0), so the output is always the target's
x0 at the final state: the video is distributed exactly as target-only sampling.

Verification is ONE target forward over all the drafter's states, batched (`BlockModel.x0_batch`: each candidate
reads the cached context and attends to itself; nothing is written). After a rejection at step i the target samples
the remaining steps itself, so a block costs the target 1 + (num_steps - 1 - i) forwards instead of num_steps, plus
the drafter's. Whether that is faster depends on how much a batch of num_steps costs over one sample (on a GPU at
video sizes, nearly num_steps times: compute-bound) and on acceptance.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from sdvg.sampler import BlockModel, sigma_of
from sdvg.seeding import derive_seed


def _uniform(seed: int, block: int, step: int) -> float:
    g = torch.Generator().manual_seed(derive_seed("exact-accept", seed, block, step))
    return float(torch.rand((), generator=g, dtype=torch.float64))


def speculative_sample(drafter: BlockModel, target: BlockModel, block: int, noise: Tensor, step_noises: list[Tensor],
                       states: dict[int, tuple[Tensor, Tensor]], seed: int) -> tuple[Tensor, int]:
    """The target's block from the drafter's trajectory (`states[i] = (x_i, drafter's x0 at step i)`): returns the
    block's latents and how many drafter transitions the target accepted (of num_steps - 1)."""
    if not torch.equal(drafter.t_list, target.t_list):
        raise ValueError("exact speculative sampling needs the drafter and the target on the same schedule")
    k = target.num_steps
    x0s = target.x0_batch(block, [states[i][0] for i in range(k)], list(range(k)))  # one batched forward
    for i in range(k):
        x0_t = x0s[i:i + 1].double()
        if i == k - 1:
            return x0_t.float(), k - 1
        s = float(sigma_of(target.t_list[i + 1], target.table))
        mu_t, mu_d = (1 - s) * x0_t, (1 - s) * states[i][1].double().to(x0_t.device)
        xi = step_noises[i].double().to(x0_t.device)  # the drafter's next state is mu_d + s * xi
        z = (mu_d - mu_t) / s
        log_ratio = -(2 * (xi * z).sum() + (z * z).sum()) / 2  # log N(x; mu_t) - log N(x; mu_d) at x = mu_d + s xi
        if math.log(max(_uniform(seed, block, i), 1e-300)) <= float(log_ratio):
            continue
        e = z / z.norm()
        y = mu_t + s * (xi - 2 * (e * xi).sum() * e)  # reflection coupling: distributed as N(mu_t, s^2)
        return target.denoise(block, noise, step_noises, start_step=i + 1, x_init=y.float()), i
    raise AssertionError("unreachable")


__all__ = ["speculative_sample"]
