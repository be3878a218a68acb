"""Scaling-law fits for finetuning (Zhang et al. 2024, "When Scaling Meets LLM Finetuning").

Multiplicative joint law:  L(X, D) = A / (X^alpha * D^beta) + E
Additive law (comparison): L(X, D) = A / X^alpha + B / D^beta + E

X is the scaling factor under study (here: trainable parameters, e.g. prompt length x d_model or
a LoRA rank's parameter count), D the number of finetuning examples. As in Hoffmann et al. and
Zhang et al., the fit works in log space, with A = exp(a), E = exp(e), minimising the Huber loss
(delta = 1e-3) between predicted and observed log-loss with L-BFGS, started from every point of a
grid of initialisations; the best final objective wins.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Sequence

import numpy as np
from scipy.optimize import minimize
from scipy.special import logsumexp

HUBER_DELTA = 1e-3


def huber(r, delta=HUBER_DELTA):
  a = np.abs(r)
  return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


@dataclasses.dataclass
class Fit:
  form: str
  params: dict
  objective: float

  def predict(self, x, d):
    x, d = np.asarray(x, float), np.asarray(d, float)
    p = self.params
    if self.form == "multiplicative":
      return p["A"] / (x ** p["alpha"] * d ** p["beta"]) + p["E"]
    return p["A"] / x ** p["alpha"] + p["B"] / d ** p["beta"] + p["E"]


def _terms(theta, lx, ld, form):
  if form == "multiplicative":
    a, alpha, beta, e = theta
    return np.stack([a - alpha * lx - beta * ld, np.full_like(lx, e)])
  a, b, alpha, beta, e = theta
  return np.stack([a - alpha * lx, b - beta * ld, np.full_like(lx, e)])


def _log_pred(theta, lx, ld, form):
  return logsumexp(_terms(theta, lx, ld, form), axis=0)


def _objective_and_grad(theta, lx, ld, ll, form):
  t = _terms(theta, lx, ld, form)
  pred = logsumexp(t, axis=0)
  w = np.exp(t - pred)                                   # d pred / d term_k (softmax)
  r = pred - ll
  h = np.where(np.abs(r) <= HUBER_DELTA, r, HUBER_DELTA * np.sign(r))  # Huber'
  if form == "multiplicative":
    dp = np.stack([w[0], -w[0] * lx, -w[0] * ld, w[1]])  # d pred / d (a, alpha, beta, e)
  else:
    dp = np.stack([w[0], w[1], -w[0] * lx, -w[1] * ld, w[2]])  # (a, b, alpha, beta, e)
  return float(np.sum(huber(r))), dp @ h


def fit(x: Sequence[float], d: Sequence[float], loss: Sequence[float],
        form: str = "multiplicative", grid: dict | None = None) -> Fit:
  """Fits one law; returns the best of the L-BFGS runs over the initialisation grid."""
  if form not in ("multiplicative", "additive"):
    raise ValueError(f"form must be 'multiplicative' or 'additive', got {form!r}")
  lx, ld = np.log(np.asarray(x, float)), np.log(np.asarray(d, float))
  ll = np.log(np.asarray(loss, float))
  if not (len(lx) == len(ld) == len(ll)) or len(ll) < 4:
    raise ValueError("need equally long x, d, loss with at least 4 points")
  g = dict(a=(0.0, 5.0, 10.0), b=(0.0, 5.0, 10.0), alpha=(0.0, 0.5, 1.0), beta=(0.0, 0.5, 1.0),
           e=(-1.0, 0.0, 1.0))
  g.update(grid or {})
  names = ("a", "alpha", "beta", "e") if form == "multiplicative" else ("a", "b", "alpha", "beta", "e")

  best = None
  for init in itertools.product(*(g[n] for n in names)):
    r = minimize(_objective_and_grad, np.array(init, float), args=(lx, ld, ll, form), jac=True,
                 method="L-BFGS-B")
    if best is None or r.fun < best.fun:
      best = r
  th = dict(zip(names, best.x))
  params = {"A": float(np.exp(th["a"])), "alpha": float(th["alpha"]), "beta": float(th["beta"]),
            "E": float(np.exp(th["e"]))}
  if form == "additive":
    params["B"] = float(np.exp(th["b"]))
  return Fit(form, params, float(best.fun))


def held_out_mad(fit_: Fit, x, d, loss) -> float:
  """Mean absolute deviation between predicted and observed loss on held-out points."""
  return float(np.mean(np.abs(fit_.predict(x, d) - np.asarray(loss, float))))


def compare_forms(x, d, loss, held_out: np.ndarray) -> dict:
  """Fits both laws on the points not in ``held_out`` (a boolean mask); reports held-out MAD."""
  x, d, loss = (np.asarray(v, float) for v in (x, d, loss))
  tr = ~np.asarray(held_out, bool)
  out = {}
  for form in ("multiplicative", "additive"):
    f = fit(x[tr], d[tr], loss[tr], form)
    out[form] = {"params": f.params, "objective": f.objective,
                 "held_out_mad": held_out_mad(f, x[~tr], d[~tr], loss[~tr]) if (~tr).any() else None}
  return out
