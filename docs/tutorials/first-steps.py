# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # First steps: from a world to exact KLDPO and Algorithm 2
#
# This tutorial builds a finite log-linear preference world, solves KLDPO exactly on a
# sample from it, runs the paper's Algorithm 2 at the exact dual multiplier
# `tau = lam*`, and checks that the two agree, as the theory says they must
# (`docs/theory.md#algorithm-2-kldpo`). It ends with a figure of the link between the
# temperature `tau` and the KL radius `rho`. It runs in about a minute on a laptop CPU and
# is executed by CI on every change.

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
import numpy as np

from rdpo_theory import World, approx, exact

# %% [markdown]
# ## A world with an exact population
#
# `World.random` draws features for 8 contexts and 4 actions in dimension 3 and a true
# parameter `theta*`; labels follow Bradley-Terry on the realizable reward. The data space
# Z (every context, pair of actions and label) is small, so the population law P0 is known
# exactly and population DPO recovers `theta*`.

# %%
world = World.random(n_contexts=8, n_actions=4, dim=3, seed=1)
pop = world.population.data
print(f"|Z| = {pop.n} points, beta = {world.beta}, B = {world.B}")
dpo_pop = exact.dpo(pop, beta=world.beta)
print("population DPO:", np.round(dpo_pop.theta, 6), " theta*:", np.round(world.theta_star, 6))

# %% [markdown]
# ## Exact KLDPO on a sample
#
# `world.empirical(n)` draws n pairs and aggregates them over Z (weights = counts / n), so
# every exact solve costs O(|Z|) whatever n is. `exact.kldpo` solves the min-max problem
# through its dual (`docs/theory.md#kl-dual`) and returns the dual multiplier `lam*`, the
# worst-case distribution and a certificate `gap` (the dual value minus an independently
# computed adversary value).

# %%
sample = world.empirical(n=2000, seed=2)
rho = 0.01
kl = exact.kldpo(sample, rho=rho, beta=world.beta, radius=world.B)
print(kl.status, kl.regime)
print(f"robust value {kl.value:.6f} nats, lam* = {kl.dual:.4f}, gap = {kl.gap:.1e}")
q, p = kl.worst_case, sample.weights
print(f"KL(q || p) = {np.sum(q * np.log(q / p)):.6f} (the radius rho = {rho})")

# %% [markdown]
# ## Algorithm 2 at tau = lam*
#
# Algorithm 2 reweights the per-pair losses by `q ∝ p exp(l / tau)`, holds the weights
# constant and descends. Its gradient is that of the KL dual at the fixed multiplier
# `lam = tau`, so at `tau = lam*` full-batch training lands on the exact KLDPO optimum, and
# the radius implied by its final weights is `rho`.

# %%
alg2 = approx.kldpo(sample, tau=kl.dual, beta=world.beta)
print(f"converged: {alg2.converged} after {alg2.steps} steps")
print(f"max |theta_alg2 - theta_exact| = {np.abs(alg2.theta - kl.theta).max():.2e}")
print(f"implied rho = {alg2.implied_rho:.6f}")

# %% [markdown]
# ## The tau-rho link
#
# For a few radii, solve KLDPO exactly, run Algorithm 2 at the exact multiplier, and plot
# the implied radius against the target radius (the diagonal means they agree) and the
# temperature against the radius (one-to-one and decreasing while `lam* > 0`).

# %%
rhos = [0.002, 0.005, 0.01, 0.02]
taus, implied = [], []
for r in rhos:
    ex = exact.kldpo(sample, rho=r, beta=world.beta, radius=world.B)
    fit = approx.kldpo(sample, tau=ex.dual, beta=world.beta)
    taus.append(ex.dual)
    implied.append(fit.implied_rho)

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3.2))
ax1.plot(rhos, rhos, color="0.7", lw=1, label="implied = target")
ax1.plot(rhos, implied, "o", label="Algorithm 2 at tau = lam*")
ax1.set_xlabel("target radius rho (nats)")
ax1.set_ylabel("implied radius KL(q || p)")
ax1.legend(fontsize=8)
ax2.plot(rhos, taus, "o-")
ax2.set_xlabel("radius rho (nats)")
ax2.set_ylabel("tau = lam*(rho)")
fig.tight_layout()
plt.show()

# %% [markdown]
# Next: the [theory](../theory.md), the [exact solvers](../exact-solvers.md) and the
# [algorithms](../algorithms.md).
