"""Blind degradations: forward models with unknown parameters eta, estimated jointly.

A blind degradation is a small `jaxir.pytree` dataclass pytree with

* `init(key) -> eta`: the starting parameters (a pytree of float arrays);
* `operator(eta) -> Operator`: the forward model for those parameters (one
  (H, W, C) image per call, as every jaxir operator);
* `kernel(eta)`: the blur kernel (k, k) where there is one, else None;
* `loss(eta, x, y)`: the data term a blind solver minimizes (default: the mean
  squared error of `operator(eta).A(x)` against y, as BIRD's official code);
* `lr`: the Adam learning rate the family was tuned for (static).

so BIRD, and any later blind solver, asks nothing else of it. `NonBlind` wraps
a known operator (no parameters: the degenerate case).

Kernel families (`MLPKernel`, `LogitsKernel`, `GaussianKernel`,
`LinearMotionKernel`) map eta to a non-negative (k, k) kernel summing to one;
`BlindBlur` and `BlindSR` put a family in front of a "same" blur (zero padding,
PyTorch cross-correlation as the official `F.conv2d(..., padding="same")`),
`BlindSR` then decimating. `BlindDenoise` estimates the noise level.

References:
  Chihaoui, Lemkhenter, Favaro, "Blind Image Restoration via Fast Diffusion
    Inversion" (BIRD), NeurIPS 2024; official code hamadichihaoui/BIRD
    (`utils.py`: `fcn`, `get_noise`; `blind_deblurring.py`).
  Ren et al., "Neural Blind Deconvolution Using Deep Priors" (SelfDeblur),
    CVPR 2020 (the MLP kernel generator BIRD reuses).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jaxir import pytree

from jaxir.errors import ConfigError, KernelError, ShapeError
from jaxir.operators.base import LinearOperator, Operator, check_in_shape
from jaxir.operators.blur import Blur
from jaxir.operators.denoise import Identity
from jaxir.operators.kernels import kernel_from_logits

__all__ = ["BlindDegradation", "NonBlind", "MLPKernel", "LogitsKernel", "GaussianKernel",
           "LinearMotionKernel", "BlindBlur", "BlurDecimate", "BlindSR", "BlindDenoise",
           "mlp_kernel", "mlp_eta_from_torch", "mse"]


def mse(a, b):
  """Mean squared error over all entries (torch `nn.MSELoss()`)."""
  r = a - b
  return jnp.mean(r * r)


def _check_size(size) -> int:
  if int(size) != size or size < 1 or size % 2 == 0:
    raise KernelError(f"kernel size {size!r} must be a positive odd integer (the kernel "
                      "needs a centre pixel); use e.g. size=41.")
  return int(size)


# ------------------------------------------------------------------ kernel families

class MLPKernel(pytree.PyTreeNode):
  """BIRD's kernel generator: softmax(W2 relu6(W1 code + b1) + b2) as a (k, k) kernel.

  The code is a fixed random input (official `get_noise(200, 'noise', (1, 1))`:
  uniform on [0, 0.1)); eta holds the weights in PyTorch `nn.Linear` layout,
  `{"w1": (hidden, code_dim), "b1": (hidden,), "w2": (k*k, hidden), "b2": (k*k,)}`.
  The flat softmax output is read row-major into (k, k) (`view(-1, 1, k, k)`).

  Attributes:
    code: (code_dim,) fixed input (pytree leaf: vmap gives each image its own).
    size: static odd kernel side k (official: 41 at 256x256).
    hidden: static hidden width (official `fcn`: 1000).
    lr: static Adam learning rate (official `lr_blur`: 0.0002).
  """
  code: jax.Array
  size: int = pytree.field(pytree_node=False, default=41)
  hidden: int = pytree.field(pytree_node=False, default=1000)
  lr: float = pytree.field(pytree_node=False, default=2e-4)

  def init(self, key):
    """PyTorch `nn.Linear` initialization: weights and biases U(-1/sqrt(fan_in), +)."""
    d_in, k2 = self.code.shape[-1], self.size * self.size
    k1, k2_, k3, k4 = jax.random.split(key, 4)
    b_1, b_2 = 1.0 / math.sqrt(d_in), 1.0 / math.sqrt(self.hidden)
    u = lambda k, s, b: jax.random.uniform(k, s, jnp.float32, -b, b)
    return {"w1": u(k1, (self.hidden, d_in), b_1), "b1": u(k2_, (self.hidden,), b_1),
            "w2": u(k3, (k2, self.hidden), b_2), "b2": u(k4, (k2,), b_2)}

  def kernel(self, eta):
    h = jnp.clip(eta["w1"] @ self.code + eta["b1"], 0.0, 6.0)  # ReLU6
    return kernel_from_logits(eta["w2"] @ h + eta["b2"], self.size)


def mlp_kernel(key, size: int = 41, code_dim: int = 200, hidden: int = 1000,
               lr: float = 2e-4) -> MLPKernel:
  """An `MLPKernel` whose fixed code is drawn from `key` (U[0, 0.1), as official)."""
  size = _check_size(size)
  if code_dim < 1 or hidden < 1:
    raise ConfigError(f"code_dim and hidden must be >= 1; got {code_dim}, {hidden}.")
  code = 0.1 * jax.random.uniform(key, (int(code_dim),), jnp.float32)
  return MLPKernel(code=code, size=size, hidden=int(hidden), lr=float(lr))


def mlp_eta_from_torch(state_dict) -> dict:
  """eta of an `MLPKernel` from the official `fcn`'s PyTorch weights.

  Args:
    state_dict: mapping with keys "0.weight", "0.bias", "2.weight", "2.bias"
      (`nn.Sequential(Linear, ReLU6, Linear, Softmax)`), arrays or tensors.

  Returns:
    `{"w1", "b1", "w2", "b2"}` float32 arrays in the same (out, in) layout.
  """
  names = {"w1": "0.weight", "b1": "0.bias", "w2": "2.weight", "b2": "2.bias"}
  missing = [v for v in names.values() if v not in state_dict]
  if missing:
    raise KernelError(f"kernel-MLP state dict lacks {missing}; expected the keys of "
                      f"nn.Sequential(Linear, ReLU6, Linear, Softmax): {sorted(names.values())}.")
  return {k: jnp.asarray(np.asarray(state_dict[v]), jnp.float32) for k, v in names.items()}


class LogitsKernel(pytree.PyTreeNode):
  """Direct parameterization: kernel = softmax of free (k, k) logits.

  `init` gives zero logits (the uniform kernel, close to where the official
  MLP starts); the key is not used.

  Attributes:
    size: static odd k.
    lr: static Adam learning rate (jaxir's choice: 0.05 moves a logit by a few
      units within 100 iterations).
  """
  size: int = pytree.field(pytree_node=False, default=41)
  lr: float = pytree.field(pytree_node=False, default=0.05)

  def init(self, key):
    del key
    return jnp.zeros((_check_size(self.size),) * 2, jnp.float32)

  def kernel(self, eta):
    return kernel_from_logits(eta, self.size)


def _grid(size: int):
  c = size // 2
  r = jnp.arange(size, dtype=jnp.float32) - c
  return r[:, None], r[None, :]  # rows, cols


class GaussianKernel(pytree.PyTreeNode):
  """Isotropic Gaussian family: exp(-r^2 / (2 sigma^2)) on the (k, k) grid, normalized.

  eta = {"log_sigma": ()} (sigma in pixels), so sigma stays positive.

  Attributes:
    size: static odd k.
    init_sigma: static starting sigma in pixels (key not used).
    lr: static Adam learning rate on log sigma.
  """
  size: int = pytree.field(pytree_node=False, default=41)
  init_sigma: float = pytree.field(pytree_node=False, default=1.0)
  lr: float = pytree.field(pytree_node=False, default=0.02)

  def init(self, key):
    del key
    if not self.init_sigma > 0:
      raise ConfigError(f"init_sigma={self.init_sigma!r} must be > 0 (pixels).")
    return {"log_sigma": jnp.asarray(math.log(self.init_sigma), jnp.float32)}

  def kernel(self, eta):
    rows, cols = _grid(_check_size(self.size))
    s2 = jnp.exp(2.0 * eta["log_sigma"])
    logits = -(rows ** 2 + cols ** 2) / (2.0 * s2)
    return kernel_from_logits(logits, self.size)


class LinearMotionKernel(pytree.PyTreeNode):
  """Linear (straight) motion family, rendered differentiably.

  A segment of length `length * size` pixels through the centre at `angle`
  radians (counter-clockwise from the column axis, rows pointing down) is
  sampled at 2k + 1 points, each splatted as a Gaussian of std `width` pixels;
  the sum is normalized. eta = {"length": () (fraction of k), "angle": ()}.

  Attributes:
    size: static odd k.
    init_length: static starting length as a fraction of k.
    width: static splat std in pixels (0.5: a one-pixel-wide line).
    lr: static Adam learning rate on (length, angle).
  """
  size: int = pytree.field(pytree_node=False, default=41)
  init_length: float = pytree.field(pytree_node=False, default=0.25)
  width: float = pytree.field(pytree_node=False, default=0.5)
  lr: float = pytree.field(pytree_node=False, default=0.02)

  def init(self, key):
    """Length `init_length`, angle uniform on [0, pi) from `key`."""
    return {"length": jnp.asarray(self.init_length, jnp.float32),
            "angle": jax.random.uniform(key, (), jnp.float32, 0.0, math.pi)}

  def kernel(self, eta):
    k = _check_size(self.size)
    rows, cols = _grid(k)
    s = (jnp.linspace(-0.5, 0.5, 2 * k + 1) * jnp.abs(eta["length"]) * k)
    px, py = s * jnp.cos(eta["angle"]), -s * jnp.sin(eta["angle"])
    d2 = (rows[..., None] - py) ** 2 + (cols[..., None] - px) ** 2
    img = jnp.sum(jnp.exp(-d2 / (2.0 * self.width ** 2)), axis=-1)
    return img / jnp.sum(img)


# ------------------------------------------------------------------ degradations

class BlindDegradation(pytree.PyTreeNode):
  """Interface of a blind degradation (see the module docstring)."""

  def init(self, key):
    raise NotImplementedError

  def operator(self, eta) -> Operator:
    raise NotImplementedError

  def kernel(self, eta):
    """The (k, k) kernel for eta, or None for degradations without one."""
    return None

  def loss(self, eta, x, y):
    """Data term for image x (H, W, C) and measurement y: mean squared error."""
    return mse(self.operator(eta).A(x), y)

  @property
  def lr(self) -> float:
    return 0.0


class NonBlind(BlindDegradation):
  """A known operator as a blind degradation with no parameters (eta = {}).

  Attributes:
    op: the jaxir operator.
  """
  op: Operator

  def init(self, key):
    del key
    return {}

  def operator(self, eta):
    return self.op

  def kernel(self, eta):
    return self.op.kernel if isinstance(self.op, Blur) else None


class BlindBlur(BlindDegradation):
  """Uniform blur by an unknown kernel: y = kernel (x) x, "same" size.

  The official loss convolves per channel with `F.conv2d(..., padding="same")`:
  zero padding and cross-correlation, which is `Blur(padding="zeros")`.

  Attributes:
    in_shape: static (H, W, C).
    family: a kernel family (`MLPKernel`, `LogitsKernel`, ...).
    padding: static `Blur` padding ("zeros" as official).
  """
  in_shape: tuple = pytree.field(pytree_node=False)
  family: pytree.PyTreeNode
  padding: str = pytree.field(pytree_node=False, default="zeros")

  def __post_init__(self):
    object.__setattr__(self, "in_shape", check_in_shape(self.in_shape, "BlindBlur"))

  def init(self, key):
    return self.family.init(key)

  def kernel(self, eta):
    return self.family.kernel(eta)

  def operator(self, eta):
    return Blur(self.in_shape, self.family.kernel(eta), self.padding)

  @property
  def lr(self) -> float:
    return self.family.lr


class BlurDecimate(LinearOperator):
  """Classical SR model: blur ("same", `padding`) then keep every `factor`-th pixel.

  y[i, j] = (kernel (x) x)[factor i, factor j], shape (H/factor, W/factor, C).

  Attributes:
    in_shape: static (H, W, C), H and W divisible by `factor`.
    kernel: (k, k) leaf.
    factor: static integer.
    padding: static `Blur` padding.
  """
  kernel: jax.Array
  factor: int = pytree.field(pytree_node=False, default=4)
  padding: str = pytree.field(pytree_node=False, default="zeros")

  def __post_init__(self):
    shape = check_in_shape(self.in_shape, "BlurDecimate")
    if int(self.factor) != self.factor or self.factor < 1 or shape[0] % self.factor \
        or shape[1] % self.factor:
      raise ShapeError(f"BlurDecimate: image size {shape[:2]} must be divisible by the "
                       f"integer factor {self.factor!r}; crop the image.")
    object.__setattr__(self, "in_shape", shape)

  def A(self, x):
    s = int(self.factor)
    return Blur(self.in_shape, self.kernel, self.padding).A(x)[::s, ::s]


class BlindSR(BlindDegradation):
  """Blind super-resolution: unknown downsampling kernel, then decimation by `factor`.

  Attributes:
    in_shape: static (H, W, C).
    family: a kernel family.
    factor: static integer scale.
    padding: static `Blur` padding.
  """
  in_shape: tuple = pytree.field(pytree_node=False)
  family: pytree.PyTreeNode
  factor: int = pytree.field(pytree_node=False, default=4)
  padding: str = pytree.field(pytree_node=False, default="zeros")

  def __post_init__(self):
    object.__setattr__(self, "in_shape", check_in_shape(self.in_shape, "BlindSR"))

  def init(self, key):
    return self.family.init(key)

  def kernel(self, eta):
    return self.family.kernel(eta)

  def operator(self, eta):
    return BlurDecimate(self.in_shape, self.family.kernel(eta), self.factor, self.padding)

  @property
  def lr(self) -> float:
    return self.family.lr


class BlindDenoise(BlindDegradation):
  """Denoising with an unknown noise level sigma (on the [-1, 1] scale).

  The operator is the identity; eta = {"log_sigma": ()}. The data term is the
  Gaussian negative log-likelihood per entry,
  mean((x - y)^2) / (2 sigma^2) + log sigma, whose minimizer in sigma is the
  RMS residual, so sigma is estimated jointly with the image. (BIRD's Adam is
  invariant to a constant scale of the image gradient, so the image path is
  the same as with the plain MSE while sigma is constant.)

  Attributes:
    in_shape: static (H, W, C).
    init_sigma: static starting sigma.
    lr_sigma: static Adam learning rate on log sigma.
  """
  in_shape: tuple = pytree.field(pytree_node=False)
  init_sigma: float = pytree.field(pytree_node=False, default=0.1)
  lr_sigma: float = pytree.field(pytree_node=False, default=0.02)

  def __post_init__(self):
    object.__setattr__(self, "in_shape", check_in_shape(self.in_shape, "BlindDenoise"))
    if not self.init_sigma > 0:
      raise ConfigError(f"init_sigma={self.init_sigma!r} must be > 0.")

  def init(self, key):
    del key
    return {"log_sigma": jnp.asarray(math.log(self.init_sigma), jnp.float32)}

  def operator(self, eta):
    return Identity(self.in_shape)

  def loss(self, eta, x, y):
    ls = eta["log_sigma"]
    return mse(x, y) * 0.5 * jnp.exp(-2.0 * ls) + ls

  @property
  def lr(self) -> float:
    return self.lr_sigma
