"""Super-resolution, inpainting, colorization and identity operators.

References: DPS fixtures (`../shared/fixtures/operators/dps_operators.npz`),
dense matrices of each operator checked with numpy's SVD / pinv, torch's
antialiased bicubic `interpolate`, numpy reshape-means.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jaxir.errors import ConfigError, JaxirError, RangeError, ShapeError
from jaxir.operators.color import DDRM_GRAY_WEIGHTS, Colorization
from jaxir.operators.denoise import Identity
from jaxir.operators.inpaint import Inpaint, box_mask, random_mask
from jaxir.operators.superres import AvgPoolSR, BicubicSR
from references import FIXTURES
from svd_contract import (check_adjoint, check_factors_orthonormal, check_generic_forms,
                          check_pinv_identities, check_vmap_equals_loop, rel, svd_probe)

FIXTURE_FILE = f"{FIXTURES}/operators/dps_operators.npz"
# rbg keys: the generators and adjoint_error take any key; threefry's CPU compile
# costs seconds per shape, which dominated this file's runtime.
KEY = jax.random.key(0, impl="rbg")
RNG = np.random.default_rng(0)


def _channel_mask():
  rng = np.random.default_rng(0)
  return (rng.random((8, 8, 3)) > 0.4).astype(np.float32)


OPERATORS = {
    "bicubic_x4": lambda: BicubicSR((24, 16, 3), 4),
    "bicubic_x3": lambda: BicubicSR((18, 12, 3), 3),
    "bicubic_x4_ragged": lambda: BicubicSR((22, 18, 2), 4),
    "avgpool_x4": lambda: AvgPoolSR((16, 8, 3), 4),
    "inpaint_random": lambda: Inpaint((8, 8, 3), random_mask(KEY, (8, 8, 3), 0.7)),
    "inpaint_box": lambda: Inpaint((10, 10, 3), box_mask(KEY, (10, 10, 3), box=4, margin=(2, 2))),
    "inpaint_channel": lambda: Inpaint((8, 8, 3), _channel_mask()),
    "color_mean": lambda: Colorization((8, 8, 3)),
    "color_ddrm": lambda: Colorization((8, 8, 3), DDRM_GRAY_WEIGHTS),
    "identity": lambda: Identity((6, 6, 3)),
}
FULL_ROW_RANK = [k for k in OPERATORS if not k.startswith("inpaint")]
# jit-vs-eager, one operator per class (eager dispatch compiles every primitive)
EAGER = ["bicubic_x4_ragged", "avgpool_x4", "inpaint_channel", "color_ddrm", "identity"]


@pytest.fixture(params=list(OPERATORS), scope="module")
def probe(request):
  op = OPERATORS[request.param]()
  return request.param, op, svd_probe(op, KEY)


def test_adjoint(probe):
  check_adjoint(probe[2])


def test_direct_forms_match_svd(probe):
  """A, AT, pinv overrides equal SVDOperator's generic SVD-form methods."""
  check_generic_forms(probe[2])


def test_svd_factors_orthonormal(probe):
  check_factors_orthonormal(probe[2])


def test_singulars_and_pinv_match_numpy(probe):
  _, _, r = probe
  a = r["dense_a"].astype(np.float64).reshape(-1, r["x"].size)
  u, sv_ref, vt = np.linalg.svd(a, full_matrices=False)
  s = np.sort(r["s"].astype(np.float64))[::-1]
  assert s.shape == sv_ref.shape
  np.testing.assert_allclose(s, sv_ref, atol=1e-6)
  inv = np.where(sv_ref > 1e-6, 1 / np.maximum(sv_ref, 1e-6), 0.0)
  ref = vt.T @ (inv * (u.T @ r["y"].reshape(-1).astype(np.float64)))  # numpy pinv
  assert rel(r["pinv_y"].reshape(-1), ref) <= 1e-5


def test_pinv_identities(probe):
  name, _, r = probe
  check_pinv_identities(r, full_row_rank=name in FULL_ROW_RANK)


def test_vmap_equals_loop_and_jit_equals_eager(probe):
  name, op, r = probe
  check_vmap_equals_loop(op, r, eager=name in EAGER)


# ----------------------------------------------------------------- bicubic (DPS)


@pytest.mark.parametrize("xkey,ykey,scale", [("x256", "sr4_256", 4), ("x256", "sr8_256", 8),
                                             ("x64", "sr4_64", 4)])
def test_bicubic_matches_dps_fixture(xkey, ykey, scale):
  d = np.load(FIXTURE_FILE)
  x = d[xkey].transpose(0, 2, 3, 1)
  want = d[ykey].transpose(0, 2, 3, 1)
  op = BicubicSR(x.shape[1:], scale)
  got = jax.jit(jax.vmap(op.A))(jnp.asarray(x))
  assert got.shape == want.shape
  assert rel(got, want) <= 1e-5


def _torch_bicubic_aa(x_nhwc, scale):
  t = torch.from_numpy(np.asarray(x_nhwc, np.float64)).permute(2, 0, 1)[None]
  h, w = t.shape[-2] // scale, t.shape[-1] // scale
  out = F.interpolate(t, size=(h, w), mode="bicubic", antialias=True, align_corners=False)
  return out[0].permute(1, 2, 0).numpy()


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_bicubic_matches_torch_antialias(scale):
  """torch's antialiased bicubic (Keys a = -0.5, support scaled by `scale`, as
  PIL) is the same filter; it truncates the kernel at the border and
  renormalises, while the Resizer reflects the image (half-sample symmetric).
  Hence: the two agree exactly after symmetric padding by 2*scale pixels (the
  kernel radius), and without padding only on the outputs whose support stays
  inside the image (all but the first and last 2 rows / columns)."""
  x = RNG.uniform(-1, 1, (64, 48, 3)).astype(np.float32)
  ours = np.asarray(jax.jit(BicubicSR(x.shape, scale).A)(jnp.asarray(x)))
  p = 2 * scale
  xp = np.pad(x, ((p, p), (p, p), (0, 0)), mode="symmetric")
  padded = _torch_bicubic_aa(xp, scale)[2:-2, 2:-2]
  assert rel(ours, padded) <= 1e-5
  plain = _torch_bicubic_aa(x, scale)
  assert rel(ours[2:-2, 2:-2], plain[2:-2, 2:-2]) <= 1e-5
  assert np.max(np.abs(ours[:2] - plain[:2])) > 1e-3  # the boundary rule differs


# -------------------------------------------------------------- average pooling


def test_avgpool_matches_numpy_and_ddrm_layout():
  x = RNG.standard_normal((16, 24, 3), np.float32)
  s = 4
  op = AvgPoolSR(x.shape, s)
  want = x.reshape(4, s, 6, s, 3).mean(axis=(1, 3))
  assert rel(op.A(jnp.asarray(x)), want) <= 1e-6
  np.testing.assert_allclose(op.singulars(), np.full(want.size, 1.0 / s), rtol=1e-7)
  # DDRM layout: first m coefficients are s * block means in (c, i, j) order.
  coef = np.asarray(op.VT(jnp.asarray(x)))
  assert rel(coef[: want.size], s * want.transpose(2, 0, 1).reshape(-1)) <= 1e-5
  np.testing.assert_allclose(op.UT(jnp.asarray(want)), want.transpose(2, 0, 1).reshape(-1))
  np.testing.assert_allclose(op.pinv(jnp.asarray(want)),
                             np.repeat(np.repeat(want, s, 0), s, 1), rtol=1e-6)


# ------------------------------------------------------------------ colorization


def test_colorization_closed_form():
  x = RNG.standard_normal((8, 8, 3), np.float32)
  op = Colorization(x.shape)
  np.testing.assert_allclose(op.A(jnp.asarray(x)), x.mean(-1, keepdims=True), atol=1e-6)
  np.testing.assert_allclose(op.singulars(), np.full(64, np.sqrt(3) / 3), rtol=1e-6)
  # first H W coefficients: the gray component w.x / |w| per pixel
  coef = np.asarray(op.VT(jnp.asarray(x)))
  np.testing.assert_allclose(coef[:64], x.sum(-1).reshape(-1) / np.sqrt(3), atol=1e-6)
  ddrm = Colorization(x.shape, DDRM_GRAY_WEIGHTS)
  np.testing.assert_allclose(ddrm.A(jnp.asarray(x))[..., 0], x @ np.array(DDRM_GRAY_WEIGHTS),
                             atol=1e-6)


# --------------------------------------------------------------------- inpainting


def test_inpaint_layout_and_convention():
  op = OPERATORS["inpaint_channel"]()
  mask = _channel_mask()
  x = RNG.standard_normal((8, 8, 3), np.float32)
  np.testing.assert_array_equal(op.A(jnp.asarray(x)), x * mask)  # y = x * mask, image shape
  kept = mask.reshape(-1) == 1
  k = int(kept.sum())
  coef = np.asarray(op.VT(jnp.asarray(x)))
  np.testing.assert_array_equal(coef[:k], x.reshape(-1)[kept])  # observed first, HWC order
  np.testing.assert_array_equal(coef[k:], x.reshape(-1)[~kept])
  np.testing.assert_array_equal(op.singulars(), np.r_[np.ones(k), np.zeros(mask.size - k)])


def test_inpaint_accepts_hw_and_bool_masks():
  m = _channel_mask()[..., 0] > 0
  op = Inpaint((8, 8, 2), m)
  assert op.mask.shape == (8, 8, 2)
  x = RNG.standard_normal((8, 8, 2), np.float32)
  np.testing.assert_array_equal(op.A(jnp.asarray(x)), x * m[..., None])
  assert Inpaint((8, 8, 2), m[..., None]).mask.shape == (8, 8, 2)


def test_inpaint_vmap_over_masks():
  shape = (8, 8, 3)
  masks = jax.jit(jax.vmap(lambda k: random_mask(k, shape, 0.5)))(jax.random.split(KEY, 4))
  xs = RNG.standard_normal((4,) + shape, np.float32)
  ys = jax.jit(jax.vmap(lambda m, x: Inpaint(shape, m).A(x)))(masks, xs)
  np.testing.assert_array_equal(ys, xs * masks)
  ops = jax.jit(jax.vmap(lambda m: Inpaint(shape, m)))(masks)
  assert ops.mask.shape == (4,) + shape


def test_random_mask():
  shape, missing = (32, 24, 3), 0.7
  keys = jax.random.split(KEY, 400)
  ms = np.asarray(jax.jit(jax.vmap(lambda k: random_mask(k, shape, missing)))(keys))
  m = ms[0]
  assert m.shape == shape and set(np.unique(ms)) <= {0.0, 1.0}
  np.testing.assert_array_equal(ms, ms[..., :1].repeat(3, -1))  # shared by channels
  # exactly int(H W missing) pixels dropped, as DPS's choice without replacement
  np.testing.assert_array_equal((ms[..., 0] == 0).sum(axis=(1, 2)), int(32 * 24 * missing))
  single = jax.jit(random_mask, static_argnums=(1, 2))
  np.testing.assert_array_equal(single(keys[0], shape, missing), m)  # reproducible by key
  assert np.any(ms[0] != ms[1])
  # every pixel is equally likely to be dropped (binomial sd 0.023 over 400 keys)
  assert np.max(np.abs(1 - ms[..., 0].mean(0) - missing)) < 0.12


def test_box_mask():
  shape, box, margin = (64, 48, 3), 16, (8, 4)
  keys = jax.random.split(KEY, 300)
  ms = np.asarray(jax.jit(jax.vmap(lambda k: box_mask(k, shape, box=box, margin=margin)))(keys))
  np.testing.assert_array_equal(ms, ms[..., :1].repeat(3, -1))
  single = jax.jit(lambda k: box_mask(k, shape, box=box, margin=margin))
  np.testing.assert_array_equal(single(keys[0]), ms[0])  # reproducible by key
  zeros = ms[..., 0] == 0
  np.testing.assert_array_equal(zeros.sum(axis=(1, 2)), box * box)
  tops = np.argmax(zeros.any(axis=2), axis=1)
  lefts = np.argmax(zeros.any(axis=1), axis=1)
  for z, t, left in zip(zeros[:20], tops, lefts):  # one solid box_h x box_w block
    assert z[t:t + box, left:left + box].all()
  # top-left ranges over [margin, size - margin - box), like numpy's randint
  assert tops.min() == 8 and tops.max() == 64 - 8 - box - 1
  assert lefts.min() == 4 and lefts.max() == 48 - 4 - box - 1


# ------------------------------------------------------------------------- errors


@pytest.mark.parametrize("make,err", [
    (lambda: Inpaint((8, 8, 3), np.ones((8, 7))), ShapeError),
    (lambda: Inpaint((8, 8, 3), np.ones((8, 8, 2))), ShapeError),
    (lambda: Inpaint((8, 8, 3), np.full((8, 8), 0.5)), RangeError),
    (lambda: Inpaint((8, 8), np.ones((8, 8))), ShapeError),
    (lambda: AvgPoolSR((10, 12, 3), 4), ShapeError),
    (lambda: BicubicSR((16, 16, 3), 2.5), ShapeError),
    (lambda: BicubicSR((16, 16, 3), 0), ShapeError),
    (lambda: Colorization((8, 8, 3), (0.5, 0.5)), ShapeError),
    (lambda: box_mask(KEY, (32, 32, 3), box=24, margin=(8, 8)), ConfigError),
    (lambda: random_mask(KEY, (8, 8, 3), 1.5), ConfigError),
])
def test_bad_input_raises(make, err):
  with pytest.raises(err) as info:
    make()
  assert isinstance(info.value, JaxirError)
