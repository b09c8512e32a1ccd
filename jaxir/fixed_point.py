"""Batched fixed-point solvers (Picard, Anderson) with implicit and phantom gradients.

A piece usable on its own, outside jaxir: `fixed_point(f, x0, *args)` solves
x = f(x, *args) for any pytree x of real float arrays, in one `lax.while_loop`,
so it runs under `jax.jit` and `jax.vmap` (each vmapped problem stops on its
own residual: JAX's batched while_loop keeps running only while some problem is
unfinished and leaves finished ones frozen). jaxopt's `AndersonAcceleration` is
unmaintained and optimistix has no Anderson; this module has no dependency
beyond JAX.

Solvers (both stop when the relative residual
  r(X) = ||f(X) - X|| / (1e-5 + ||f(X)||)
(Euclidean norms over every leaf of one problem) drops below `tol`, or after
their iteration budget; both return an iterate X whose f(X) they have
evaluated, so `info.residual` is the residual of the returned value):

* `Picard`: X <- (1 - beta) X + beta f(X), from X0 = x0; one map evaluation to
  start, then one per iteration (evaluations = 1 + iterations).
* `Anderson`: the official DeqIR loop (caojiezhang/DeqIR,
  `functions/ddim_anderson.py`, `anderson`), reproduced operation by
  operation. History (ring buffers of m slots): X0 = x0, F0 = f(X0) in slot 0,
  X1 = F0, F1 = f(X1) in slot 1 (two evaluations to start). Iteration
  k = 2, 3, ... uses the n = min(k, m) filled slots: G = F - X (n rows),
  solves the bordered system

      [[0, 1^T], [1, G G^T + lam I]] [mu; alpha] = [1; 0],

  mixes X_k = beta sum_i alpha_i F_i + (1 - beta) sum_i alpha_i X_i, evaluates
  F_k = f(X_k), stores both in slot k % m and returns X_k (not F_k) on exit.
  `max_iter` is the official loop bound `range(2, max_iter)`: at most
  max_iter - 2 iterations, so at most max_iter map evaluations.

`Anderson(per_row=True)` gives every index along the leading axis of the
leaves its own mixing weights (one small system per row) while the residual
and the stopping test stay global. That is what the official DeqIR code does:
its `X` has shape (bsz, m, d) with bsz = the T timestep slots, so each slot is
mixed with its own alpha. Pass slots stacked on the leading axis to reproduce
it; the default (False) is classical Anderson with one weight vector. Per-row
weights break Anderson's linear model when the rows are coupled (row i's map
output depends on row i-1's mixed state): on DeqIR's joint map they stall
where one weight vector converges (`experiments/deqir_convergence.py`).

Gradients (`grad=`):
* "implicit": a `jax.custom_vjp`; at x* the cotangent u solves
  u = (df/dx)^T u + v by `grad_solver` (default: `solver`), and the gradient
  to the arguments is (df/dargs)^T u. Values f closes over that are being
  differentiated are hoisted into arguments (`jax.closure_convert`).
* "phantom" (Geng et al. 2021): the backward pass differentiates
  `phantom_steps` damped steps x <- (1 - tau) x + tau f(x, *args) started at
  the (stopped-gradient) x*; the forward value is x* unchanged.
* "unrolled": plain reverse-mode autodiff through the iterations, run as a
  `lax.scan` over the whole budget with finished iterations masked (the same
  arithmetic as the while_loop); for reference tests.
* None: no gradient (stop_gradient on x0 and args).
No mode but "unrolled" passes a gradient to x0.

"implicit" and "phantom" are `custom_vjp`s: reverse mode only (jax.grad,
jax.vjp); use "unrolled" where forward mode (jax.jvp) is needed. "unrolled"
evaluates f for the whole budget (finished steps are computed and discarded).

Notes on the official Anderson: `lam` is an absolute ridge, not scaled by the
Gram matrix, so once ||F_i - X_i||^2 falls well below lam the weights tend to
a plain average of the history and progress slows; for tolerances far below
the official 1e-3 lower lam (the tests use 1e-10 for 1e-5) or pass
`lam_relative=True` (ridge lam * trace(G G^T) / n). The official
code needs m >= 2 (it writes X1 to slot 1); here slot 1 % m is used, so m = 1
is plain Picard with the official start and counting.

Differences from the official loop, none of them touching a finite run: the
loop also stops on a NaN residual (the official one keeps iterating), and the
small system is solved at a fixed (m+1)x(m+1) size with the unfilled slots
made an identity block (their weights are exactly 0), so the loop has static
shapes. Checked against the official DeqIR fixture
(`../shared/fixtures/deqir/deqir_sr4_avgpool.npz`, through
`jaxir.solvers.deqir`): per_row=True reproduces `anderson_x0` (max error
1e-6 of its range) and `anderson_calls`; per_row=False misses by 3e-4.

References:
  Anderson, "Iterative procedures for nonlinear integral equations", J. ACM
  12(4), 1965.
  Walker, Ni, "Anderson acceleration for fixed-point iterations", SIAM J.
  Numer. Anal. 49(4), 2011.
  Bai, Kolter, Koltun, "Deep Equilibrium Models", NeurIPS 2019 (the bordered
  least-squares form used here).
  Geng, Zhang, Bai, Wang, Lin, "On Training Implicit Models", NeurIPS 2021
  (phantom gradients).
  Cao et al., "Deep Equilibrium Diffusion Restoration with Parallel Sampling"
  (DeqIR), CVPR 2024. Official code:
  caojiezhang/DeqIR, `functions/ddim_anderson.py`, `main.py`.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxir.errors import ConfigError, ShapeError

__all__ = ["Picard", "Anderson", "FixedPointInfo", "anderson_weights", "relative_residual",
           "fixed_point"]

_HIGHEST = jax.lax.Precision.HIGHEST
_GRADS = ("implicit", "phantom", "unrolled", None)


def _check_common(name, tol, max_iter, beta, min_iter):
  if not (isinstance(tol, numbers.Real) and math.isfinite(tol) and tol > 0):
    raise ConfigError(f"{name} needs a finite tol > 0 (relative residual); got tol={tol!r}.")
  if not isinstance(max_iter, (int, np.integer)) or max_iter < min_iter:
    raise ConfigError(f"{name} needs an integer max_iter >= {min_iter}; got max_iter={max_iter!r}.")
  if not (isinstance(beta, numbers.Real) and math.isfinite(beta) and beta > 0):
    raise ConfigError(f"{name} needs a finite mixing beta > 0 (1: no damping); got beta={beta!r}.")


@dataclasses.dataclass(frozen=True)
class Picard:
  """Damped Picard iteration X <- (1 - beta) X + beta f(X).

  Attributes:
    tol: stop when the relative residual of the current iterate is below it
      (DeqIR's tolerance, `functions/ddim_anderson.py`: 1e-3).
    max_iter: most iterations (DeqIR's `--max_anderson_iters`, `main.py`: 15);
      evaluations of f are 1 + iterations.
    beta: mixing weight of f(X) (1: plain iteration X <- f(X), as in DeqIR's
      T-step Picard anchor).
  """
  tol: float = 1e-3  # DeqIR functions/ddim_anderson.py (hard-coded tol=1e-3)
  max_iter: int = 15  # DeqIR main.py --max_anderson_iters default
  beta: float = 1.0  # plain Picard; DeqIR ddim_anderson.py beta=1.0

  def __post_init__(self):
    _check_common("Picard", self.tol, self.max_iter, self.beta, 1)


@dataclasses.dataclass(frozen=True)
class Anderson:
  """Anderson acceleration as the official DeqIR code runs it (see the module doc).

  Attributes:
    m: history size (ring-buffer slots) (DeqIR `main.py` `--m`: 5).
    lam: ridge added to the Gram matrix G G^T (DeqIR `ddim_anderson.py`
      `fp_implicit_iters_anderson`: lam=1e-3).
    beta: mixing, X_k = beta sum alpha F + (1 - beta) sum alpha X
      (DeqIR `ddim_anderson.py`: beta=1.0).
    tol: relative-residual tolerance (DeqIR `ddim_anderson.py`: tol=1e-3,
      hard-coded; its `--tol` flag is ignored).
    max_iter: the official loop bound `for k in range(2, max_iter)`: at most
      max_iter - 2 iterations and max_iter evaluations of f (DeqIR `main.py`
      `--max_anderson_iters`: 15). At least 3.
    per_row: one set of mixing weights per index of the leaves' leading axis
      (the official DeqIR layout, whose `X` is (slots, m, d)); the residual
      stays global. False: one weight vector for the whole problem.
    lam_relative: scale the ridge by the history's mean squared residual,
      lam * trace(G G^T) / n (per row when per_row), so the weights do not
      depend on the scale of the residuals (an absolute ridge turns the
      weights into a plain average of the history once ||F_i - X_i||^2 falls
      below lam). False: the official absolute ridge.
    triangular: with per_row, row r's weights minimize the residual of rows
      0..r together (Tang et al.'s triangular Anderson acceleration, ParaTAA,
      ICML 2024): for a map whose row r depends only on rows before it, as
      DeqIR's joint map with slots ordered from x_T down. False: each row's
      own residual (the official DeqIR code).
  """
  m: int = 5  # DeqIR main.py --m default
  lam: float = 1e-3  # DeqIR functions/ddim_anderson.py fp_implicit_iters_anderson
  beta: float = 1.0  # DeqIR functions/ddim_anderson.py fp_implicit_iters_anderson
  tol: float = 1e-3  # DeqIR functions/ddim_anderson.py (hard-coded, --tol ignored)
  max_iter: int = 15  # DeqIR main.py --max_anderson_iters default
  per_row: bool = False  # classical Anderson; True reproduces DeqIR's per-slot weights
  lam_relative: bool = False  # official absolute ridge (ddim_anderson.py); True: lam*tr(GG^T)/n
  triangular: bool = False  # official per-slot systems; True: ParaTAA's cumulative (triangular)

  def __post_init__(self):
    if not isinstance(self.m, (int, np.integer)) or self.m < 1:
      raise ConfigError(f"Anderson needs an integer history size m >= 1; got m={self.m!r}.")
    if not (isinstance(self.lam, numbers.Real) and math.isfinite(self.lam) and self.lam >= 0):
      raise ConfigError(f"Anderson needs a finite ridge lam >= 0; got lam={self.lam!r}.")
    if not isinstance(self.lam_relative, (bool, np.bool_)):
      raise ConfigError(f"Anderson lam_relative must be True or False; got "
                        f"{self.lam_relative!r}.")
    if self.triangular and not self.per_row:
      raise ConfigError("Anderson(triangular=True) mixes rows: set per_row=True as well "
                        "(rows on the leading axis, ordered so that row r depends on rows < r).")
    _check_common("Anderson", self.tol, self.max_iter, self.beta, 3)


class FixedPointInfo(NamedTuple):
  """Diagnostics of a fixed-point solve (per problem; vmapped solves stack them).

  Attributes:
    iterations: int32, solver iterations done.
    evaluations: int32, calls of f (Picard: 1 + iterations; Anderson:
      2 + iterations, the official count).
    residual: float32, relative residual ||f(x) - x|| / (1e-5 + ||f(x)||) of
      the returned x.
    residuals: float32 (max_iter,), the residual after each iteration, NaN
      after the stop (Anderson fills at most max_iter - 2 entries).
    converged: bool, residual < tol.
  """
  iterations: jax.Array
  evaluations: jax.Array
  residual: jax.Array
  residuals: jax.Array
  converged: jax.Array


# ----------------------------------------------------------------- flattening

class _Spec(NamedTuple):
  treedef: Any
  shapes: tuple
  dtypes: tuple
  rows: int           # leading rows (1 unless per_row)
  sizes: tuple        # entries per row of each leaf
  dtype: Any          # common float dtype of the flat form


def _spec(x0, per_row: bool) -> _Spec:
  leaves, treedef = jax.tree.flatten(x0)
  if not leaves:
    raise ShapeError("x0 has no array leaves; pass the initial iterate as a pytree of float "
                     "arrays.")
  shapes, dtypes = [], []
  for i, leaf in enumerate(leaves):
    dt = jnp.result_type(leaf)
    if not jnp.issubdtype(dt, jnp.floating):
      raise ConfigError(f"x0 leaf {i} has dtype {dt}; fixed-point iterates must be real floats "
                        "(cast with x.astype(jnp.float32)).")
    shapes.append(tuple(jnp.shape(leaf)))
    dtypes.append(dt)
  if per_row:
    if any(len(s) == 0 for s in shapes) or len({s[0] for s in shapes}) != 1:
      raise ShapeError(f"Anderson(per_row=True) needs every leaf of x0 to share its leading "
                       f"(row) axis; got shapes {shapes}. Stack the rows on axis 0 or use "
                       "per_row=False.")
    rows = shapes[0][0]
    sizes = tuple(int(np.prod(s[1:])) for s in shapes)
  else:
    rows = 1
    sizes = tuple(int(np.prod(s)) for s in shapes)
  return _Spec(treedef, tuple(shapes), tuple(dtypes), rows, sizes, jnp.result_type(*dtypes))


def _ravel(spec: _Spec, tree):
  """Pytree -> (rows, D) array of the common dtype."""
  leaves = spec.treedef.flatten_up_to(tree)
  parts = [jnp.reshape(jnp.asarray(l, spec.dtype), (spec.rows, n))
           for l, n in zip(leaves, spec.sizes)]
  return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=1)


def _unravel(spec: _Spec, flat):
  """(rows, D) array -> pytree with x0's structure, shapes and dtypes."""
  splits = np.cumsum(spec.sizes)[:-1].tolist()
  parts = jnp.split(flat, splits, axis=1) if splits else [flat]
  leaves = [jnp.reshape(p, s).astype(d) for p, s, d in zip(parts, spec.shapes, spec.dtypes)]
  return spec.treedef.unflatten(leaves)


def _check_map(f, x0, args):
  out = jax.eval_shape(f, x0, *args)
  want = jax.eval_shape(lambda x: x, x0)
  if jax.tree.structure(out) != jax.tree.structure(want):
    raise ShapeError(f"f must return the structure of x0: got {jax.tree.structure(out)}, "
                     f"expected {jax.tree.structure(want)}. Return the next iterate, not a "
                     "tuple with extras (close over or drop auxiliary outputs).")
  for i, (o, w) in enumerate(zip(jax.tree.leaves(out), jax.tree.leaves(want))):
    if o.shape != w.shape or o.dtype != w.dtype:
      raise ShapeError(f"f returned leaf {i} as {o.shape} {o.dtype}, but x0 has {w.shape} "
                       f"{w.dtype}; f must map an iterate to one of the same shapes and "
                       "dtypes (cast its output).")


# ----------------------------------------------------------------- building blocks

def relative_residual(x, fx):
  """The official stopping measure ||fx - x|| / (1e-5 + ||fx||) over all entries.

  Computed in the arrays' dtype, returned as a float32 scalar.
  """
  x, fx = jnp.asarray(x), jnp.asarray(fx)
  num = jnp.sqrt(jnp.sum(jnp.square(fx - x)))
  return (num / (1e-5 + jnp.sqrt(jnp.sum(jnp.square(fx))))).astype(jnp.float32)


def anderson_weights(G, n, lam, relative=False, triangular=False):
  """Mixing weights alpha of the bordered Anderson system, one set per row.

  Solves [[0, 1^T], [1, G G^T + lam I]] [mu; alpha] = [1; 0] over the first n
  history slots (G: the residuals F - X); the other slots get weight 0.

  Args:
    G: (m, R, D) residual history (slot, row, entries).
    n: number of filled slots (1 <= n <= m; may be traced).
    lam: ridge on the Gram matrix.
    relative: use the ridge lam * trace(G G^T) / n of each row instead (the
      Gram matrix is divided by trace / n, which leaves alpha unchanged, and
      lam added; a row whose residuals are all zero gets equal weights).
    triangular: row r's weights minimize the residual of rows 0..r together
      (the per-row Gram matrices summed cumulatively along the rows), for maps
      whose row r depends only on rows < r (ParaTAA's triangular Anderson).

  Returns:
    (R, m) weights; each row's first n entries sum to 1.
  """
  m, R = G.shape[0], G.shape[1]
  dt = G.dtype
  gram = jnp.einsum("ird,jrd->rij", G, G, precision=_HIGHEST)
  if triangular:
    gram = jnp.cumsum(gram, axis=0)
  active = jnp.arange(m) < n
  if relative:
    diag = jnp.where(active[None, :], jnp.diagonal(gram, axis1=1, axis2=2), 0)
    scale = jnp.sum(diag, axis=1) / jnp.asarray(n, dt)
    gram = gram / jnp.maximum(scale, jnp.finfo(dt).tiny)[:, None, None]
  both = active[:, None] & active[None, :]
  eye = jnp.eye(m, dtype=dt)
  inner = jnp.where(both, gram + jnp.asarray(lam, dt) * eye, eye)
  border = jnp.broadcast_to(active.astype(dt), (R, m))
  top = jnp.concatenate([jnp.zeros((R, 1), dt), border], axis=1)[:, None, :]
  low = jnp.concatenate([border[:, :, None], inner], axis=2)
  H = jnp.concatenate([top, low], axis=1)
  rhs = jnp.zeros((R, m + 1, 1), dt).at[:, 0, 0].set(1)
  sol = jnp.linalg.solve(H, rhs)[:, 1:, 0]
  return jnp.where(active[None, :], sol, 0)


class _State(NamedTuple):
  it: jax.Array
  x: jax.Array
  fx: jax.Array
  res: jax.Array
  residuals: jax.Array
  X: Any
  F: Any


def _budget(solver) -> int:
  return solver.max_iter - 2 if isinstance(solver, Anderson) else solver.max_iter


def _init(g, x0, solver) -> _State:
  nan = jnp.full((solver.max_iter,), jnp.nan, jnp.float32)
  inf = jnp.asarray(jnp.inf, jnp.float32)
  zero = jnp.asarray(0, jnp.int32)
  f0 = g(x0)
  if isinstance(solver, Picard):
    return _State(zero, x0, f0, inf, nan, None, None)
  m = solver.m
  X = jnp.zeros((m,) + x0.shape, x0.dtype).at[0].set(x0)
  F = jnp.zeros((m,) + x0.shape, x0.dtype).at[0].set(f0)
  x1 = f0
  f1 = g(x1)
  X = X.at[1 % m].set(x1)
  F = F.at[1 % m].set(f1)
  return _State(zero, x1, f1, inf, nan, X, F)


def _step(g, s: _State, solver) -> _State:
  beta = solver.beta
  if isinstance(solver, Picard):
    x = s.fx if beta == 1.0 else (1 - beta) * s.x + beta * s.fx
    fx = g(x)
    X = F = None
  else:
    m = solver.m
    k = s.it + 2
    alpha = anderson_weights(s.F - s.X, jnp.minimum(k, m), solver.lam, solver.lam_relative,
                             solver.triangular)
    x = beta * jnp.einsum("ri,ird->rd", alpha, s.F, precision=_HIGHEST)
    if beta != 1.0:  # at beta = 1 the official (1 - beta) term adds exactly zero
      x = x + (1 - beta) * jnp.einsum("ri,ird->rd", alpha, s.X, precision=_HIGHEST)
    fx = g(x)
    slot = k % m
    X = s.X.at[slot].set(x)
    F = s.F.at[slot].set(fx)
  res = jax.lax.stop_gradient(relative_residual(x, fx))
  return _State(s.it + 1, x, fx, res, s.residuals.at[s.it].set(res), X, F)


def _running(s: _State, solver):
  return (s.it < _budget(solver)) & (s.res >= solver.tol)


def _iterate(g, x0, solver, unrolled: bool):
  """Runs the solver on flat (R, D) iterates; returns (x, info)."""
  s = _init(g, x0, solver)
  if unrolled:
    def body(s, _):
      new = _step(g, s, solver)
      keep = _running(s, solver)
      return jax.tree.map(lambda a, b: jnp.where(keep, a, b), new, s), None
    s, _ = jax.lax.scan(body, s, None, length=_budget(solver))
  else:
    s = jax.lax.while_loop(lambda s: _running(s, solver), lambda s: _step(g, s, solver), s)
  start = 2 if isinstance(solver, Anderson) else 1
  info = FixedPointInfo(iterations=s.it, evaluations=s.it + start, residual=s.res,
                        residuals=s.residuals, converged=s.res < solver.tol)
  return s.x, info


def _solve(f, x0, args, solver, unrolled=False):
  spec = _spec(x0, isinstance(solver, Anderson) and solver.per_row)
  g = lambda z: _ravel(spec, f(_unravel(spec, z), *args))
  x, info = _iterate(g, _ravel(spec, x0), solver, unrolled)
  return _unravel(spec, x), info


def _with_vjp(fc, solver, cotangent_rule):
  """`_solve` as a custom_vjp: `cotangent_rule(x_star, args, v)` gives the args' cotangents."""
  @jax.custom_vjp
  def run(x0, args):
    return _solve(fc, x0, args, solver)

  def fwd(x0, args):
    out = _solve(fc, x0, args, solver)
    return out, (out[0], args)

  def bwd(res, cts):
    x, args = res
    return jax.tree.map(jnp.zeros_like, x), cotangent_rule(x, args, cts[0])

  run.defvjp(fwd, bwd)
  return run


def _implicit_rule(fc, grad_solver):
  def rule(x, args, v):
    _, vjp_x = jax.vjp(lambda z: fc(z, *args), x)

    def adjoint_map(u):  # u -> (df/dx)^T u + v, whose fixed point is the adjoint
      return jax.tree.map(jnp.add, vjp_x(u)[0], v)

    u, _ = _solve(adjoint_map, v, (), grad_solver)
    _, vjp_a = jax.vjp(lambda *a: fc(x, *a), *args)
    return vjp_a(u)
  return rule


def _phantom_rule(fc, steps, tau):
  def rule(x, args, v):
    def unroll(*a):
      def body(_, z):
        return jax.tree.map(lambda zi, fi: (1 - tau) * zi + tau * fi, z, fc(z, *a))
      return jax.lax.fori_loop(0, steps, body, x)

    _, vjp_a = jax.vjp(unroll, *args)
    return vjp_a(v)
  return rule


def _check_solver(solver, name):
  if not isinstance(solver, (Picard, Anderson)):
    raise ConfigError(f"{name} must be a jaxir.fixed_point.Picard or Anderson instance; got "
                      f"{type(solver).__name__}.")


def fixed_point(f: Callable, x0, *args, solver=Anderson(), grad="implicit", grad_solver=None,
                phantom_steps: int = 5, phantom_tau: float = 0.1):
  """Solve x = f(x, *args) from x0.

  Args:
    f: the map, f(x, *args) -> a pytree with x's structure, shapes and dtypes.
    x0: initial iterate, any pytree of real float arrays (one problem; vmap
      for a batch, each problem then stops on its own residual).
    *args: pytrees f takes after x; gradients flow to them (not to x0) in
      "implicit" and "phantom" modes.
    solver: `Picard(...)` or `Anderson(...)`.
    grad: "implicit", "phantom", "unrolled" or None (see the module doc).
    grad_solver: solver of the adjoint fixed point u = (df/dx)^T u + v in
      "implicit" mode (default: `solver`).
    phantom_steps: damped steps the phantom gradient differentiates.
    phantom_tau: their damping tau, x <- (1 - tau) x + tau f(x).

  Returns:
    (x_star, info): the solution (x0's structure) and a `FixedPointInfo`.

  Raises:
    ConfigError: a bad solver, gradient mode or non-float x0.
    ShapeError: f does not map x0 to the same structure, shapes and dtypes,
      or per_row leaves do not share their leading axis.

  References:
    Cao et al., DeqIR, CVPR 2024 (official `anderson`); Geng et al., "On
    Training Implicit Models", NeurIPS 2021 (phantom gradient).
  """
  _check_solver(solver, "solver")
  if grad not in _GRADS:
    raise ConfigError(f"grad must be one of {_GRADS}; got {grad!r}.")
  grad_solver = solver if grad_solver is None else grad_solver
  _check_solver(grad_solver, "grad_solver")
  if not isinstance(phantom_steps, (int, np.integer)) or phantom_steps < 1:
    raise ConfigError(f"phantom_steps must be an integer >= 1; got {phantom_steps!r}.")
  if not (isinstance(phantom_tau, numbers.Real) and 0 < phantom_tau <= 1):
    raise ConfigError(f"phantom_tau must lie in (0, 1]; got {phantom_tau!r}.")
  _spec(x0, isinstance(solver, Anderson) and solver.per_row)  # validates x0
  if grad == "implicit":
    _spec(x0, isinstance(grad_solver, Anderson) and grad_solver.per_row)
  x0 = jax.tree.map(jnp.asarray, x0)
  _check_map(f, x0, args)

  if grad == "unrolled":
    return _solve(f, x0, args, solver, unrolled=True)
  # Differentiated values f closes over become explicit arguments.
  fc, consts = jax.closure_convert(lambda x, *a: f(x, *a), x0, *args)
  all_args = (*args, *consts)
  x0 = jax.lax.stop_gradient(x0)
  if grad is None:
    return _solve(fc, x0, jax.lax.stop_gradient(all_args), solver)
  if grad == "implicit":
    rule = _implicit_rule(fc, grad_solver)
  else:
    rule = _phantom_rule(fc, int(phantom_steps), float(phantom_tau))
  return _with_vjp(fc, solver, rule)(x0, all_args)
