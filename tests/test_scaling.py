"""Scaling-law fits recover known parameters; held-out MAD favours the true form."""
import numpy as np
import pytest

from prompt_tuning.analysis import scaling


def grid_points():
  x = np.array([1e3, 4e3, 1.6e4, 6.4e4, 2.56e5])
  d = np.array([100, 300, 1000, 3000, 10000])
  xx, dd = np.meshgrid(x, d)
  return xx.ravel(), dd.ravel()


def test_multiplicative_fit_recovers_parameters():
  x, d = grid_points()
  true = dict(A=300.0, alpha=0.3, beta=0.5, E=1.5)
  loss = true["A"] / (x ** true["alpha"] * d ** true["beta"]) + true["E"]
  f = scaling.fit(x, d, loss, "multiplicative")
  assert f.params["alpha"] == pytest.approx(0.3, abs=0.01)
  assert f.params["beta"] == pytest.approx(0.5, abs=0.01)
  assert f.params["E"] == pytest.approx(1.5, rel=0.02)
  assert f.params["A"] == pytest.approx(300.0, rel=0.1)
  np.testing.assert_allclose(f.predict(x, d), loss, rtol=1e-3)


def test_additive_fit_and_form_comparison():
  x, d = grid_points()
  rng = np.random.RandomState(0)
  loss = 50.0 / x ** 0.4 + 20.0 / d ** 0.3 + 1.0
  loss = loss * np.exp(rng.normal(0, 1e-4, loss.shape))
  f = scaling.fit(x, d, loss, "additive")
  assert f.params["alpha"] == pytest.approx(0.4, abs=0.02)
  assert f.params["beta"] == pytest.approx(0.3, abs=0.02)
  held = (d == d.max())  # extrapolate to the largest finetuning set
  cmp = scaling.compare_forms(x, d, loss, held)
  assert cmp["additive"]["held_out_mad"] < 1e-2
  assert cmp["additive"]["held_out_mad"] < cmp["multiplicative"]["held_out_mad"]


def test_huber_and_errors():
  r = np.array([0.0, 5e-4, 1e-2])
  np.testing.assert_allclose(scaling.huber(r), [0.0, 0.5 * 25e-8, 1e-3 * (1e-2 - 5e-4)])
  with pytest.raises(ValueError, match="form"):
    scaling.fit([1, 2, 3, 4], [1, 2, 3, 4], [1, 1, 1, 1], "power")
  with pytest.raises(ValueError, match="at least 4"):
    scaling.fit([1, 2], [1, 2], [1, 1])


def test_analytic_gradient_matches_finite_differences():
  from scipy.optimize import check_grad
  x, d = grid_points()
  lx, ld = np.log(x), np.log(d)
  ll = np.log(10.0 / x ** 0.2 + 3.0 / d ** 0.4 + 1.2)
  rng = np.random.RandomState(0)
  for form, n in (("multiplicative", 4), ("additive", 5)):
    for _ in range(3):
      th = rng.normal(0, 1, n)
      f = lambda t: scaling._objective_and_grad(t, lx, ld, ll, form)[0]
      g = lambda t: scaling._objective_and_grad(t, lx, ld, ll, form)[1]
      assert check_grad(f, g, th, epsilon=1e-7) < 1e-4 * max(1.0, np.abs(g(th)).max())
