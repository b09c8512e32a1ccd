"""Image I/O against Pillow-written files, round trips and the error messages."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxir import io
from jaxir.errors import ConfigError, JaxirError, NaNError, ShapeError


def _rand_u8(shape, seed=0):
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_round_trip_within_one_level(tmp_path):
  x = np.random.default_rng(0).uniform(-1, 1, (24, 40, 3)).astype(np.float32)
  path = io.write_image(tmp_path / "sub" / "x.png", x)
  back = io.read_image(path)
  assert back.dtype == np.float32 and back.shape == (24, 40, 3)
  # 8-bit quantisation: half a level of 1/255 in [0, 1] is 1/255 in [-1, 1].
  assert np.max(np.abs(back - x)) <= 1 / 255 + 1e-6
  # A file written by Pillow reads as u8 / 127.5 - 1 exactly.
  u8 = _rand_u8((16, 20, 3))
  Image.fromarray(u8).save(tmp_path / "u8.png")
  np.testing.assert_allclose(io.read_image(tmp_path / "u8.png"), u8 / 127.5 - 1, atol=1e-6)
  # ... and writing that back reproduces the same bytes.
  io.write_image(tmp_path / "u8b.png", io.read_image(tmp_path / "u8.png"))
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "u8b.png")), u8)


def test_write_clips_batches_and_gray(tmp_path):
  x = np.zeros((4, 4, 3), np.float32)
  x[0, 0], x[0, 1] = 1.7, -3.0
  io.write_image(tmp_path / "c.png", jnp.asarray(x))
  u8 = np.asarray(Image.open(tmp_path / "c.png"))
  assert tuple(u8[0, 0]) == (255,) * 3 and tuple(u8[0, 1]) == (0,) * 3
  assert tuple(u8[1, 1]) == (128,) * 3   # 0.0 -> 127.5 rounds to even 128
  io.write_image(tmp_path / "one.png", x[None])
  assert np.asarray(Image.open(tmp_path / "one.png")).shape == (4, 4, 3)
  io.write_image(tmp_path / "strip.png", np.stack([x, -x]))
  assert np.asarray(Image.open(tmp_path / "strip.png")).shape == (4 + 8, 3 * 4 + 2 * 4, 3)
  io.write_image(tmp_path / "g.png", x[..., :1])  # one channel: a grey (mode L) file
  with Image.open(tmp_path / "g.png") as im:
    assert im.mode == "L"
    g = np.asarray(im)
  assert g.shape == (4, 4) and g[0, 0] == 255 and g[0, 1] == 0 and g[1, 1] == 128


def test_write_errors(tmp_path):
  x = np.zeros((8, 8, 3), np.float32)
  bad = x.copy()
  bad[2, 3, 1] = np.nan
  with pytest.raises(NaNError, match="nan.png"):
    io.write_image(tmp_path / "nan.png", bad)
  with pytest.raises(ShapeError, match="C = 1 or 3"):
    io.write_image(tmp_path / "a.png", np.zeros((8, 8, 4)))
  with pytest.raises(ShapeError, match="NCHW"):
    io.write_image(tmp_path / "a.png", np.zeros((1, 3, 8, 8)))
  with pytest.raises(ConfigError, match="suffix"):
    io.write_image(tmp_path / "noext", x)


def test_read_modes(tmp_path):
  u8 = _rand_u8((12, 10, 3))
  ref = u8 / 127.5 - 1
  # RGBA: alpha dropped, colour kept.
  rgba = np.concatenate([u8, _rand_u8((12, 10, 1), 1)], axis=-1)
  Image.fromarray(rgba).save(tmp_path / "rgba.png")
  np.testing.assert_allclose(io.read_image(tmp_path / "rgba.png"), ref, atol=1e-6)
  # Palette image: decoded to its RGB colours.
  Image.fromarray(u8).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "p.png")
  want = np.asarray(Image.open(tmp_path / "p.png").convert("RGB")) / 127.5 - 1
  np.testing.assert_allclose(io.read_image(tmp_path / "p.png"), want, atol=1e-6)
  # Grayscale (8 and 16 bit): repeated to 3 channels, or refused on request.
  g = u8[..., 0]
  Image.fromarray(g).save(tmp_path / "g.png")
  x = io.read_image(tmp_path / "g.png")
  assert x.shape == (12, 10, 3)
  np.testing.assert_allclose(x, np.repeat(g[..., None] / 127.5 - 1, 3, -1), atol=1e-6)
  with pytest.raises(ShapeError, match="grayscale"):
    io.read_image(tmp_path / "g.png", allow_gray=False)
  g16 = np.random.default_rng(2).integers(0, 65536, (6, 7)).astype(np.uint16)
  Image.fromarray(g16).save(tmp_path / "g16.png")
  np.testing.assert_allclose(io.read_image(tmp_path / "g16.png")[..., 2],
                             g16 / 65535 * 2 - 1, atol=1e-6)
  # JPEG reads with the decoder's values.
  Image.fromarray(u8).save(tmp_path / "j.jpg", quality=95)
  want = np.asarray(Image.open(tmp_path / "j.jpg")) / 127.5 - 1
  np.testing.assert_allclose(io.read_image(tmp_path / "j.jpg"), want, atol=1e-6)


def test_read_size_and_multiple_of(tmp_path):
  u8 = _rand_u8((40, 60, 3))
  Image.fromarray(u8).save(tmp_path / "w.png")
  # Same aspect after a centre crop: an exact crop, no resampling.
  np.testing.assert_allclose(io.read_image(tmp_path / "w.png", size=40),
                             u8[:, 10:50] / 127.5 - 1, atol=1e-6)
  np.testing.assert_allclose(io.read_image(tmp_path / "w.png", size=(20, 60)),
                             u8[10:30] / 127.5 - 1, atol=1e-6)
  small = io.read_image(tmp_path / "w.png", size=(16, 24))
  assert small.shape == (16, 24, 3) and small.min() >= -1 and small.max() <= 1
  # A constant image stays constant through crop and bicubic resize.
  Image.fromarray(np.full((30, 50, 3), 200, np.uint8)).save(tmp_path / "c.png")
  np.testing.assert_allclose(io.read_image(tmp_path / "c.png", size=32), 200 / 127.5 - 1,
                             atol=1e-6)
  with pytest.raises(ShapeError, match=r"multiples of 32.*size=\(32, 32\)"):
    io.read_image(tmp_path / "w.png", multiple_of=32)
  assert io.read_image(tmp_path / "w.png", size=32, multiple_of=32).shape == (32, 32, 3)
  with pytest.raises(ConfigError, match="size"):
    io.read_image(tmp_path / "w.png", size=(1, 2, 3))


def test_read_errors_name_the_path(tmp_path):
  missing = tmp_path / "nope.png"
  with pytest.raises(io.ImageReadError, match="nope.png") as e:
    io.read_image(missing)
  assert isinstance(e.value, JaxirError) and isinstance(e.value, OSError)
  (tmp_path / "text.png").write_text("not an image")
  with pytest.raises(io.ImageReadError, match="text.png"):
    io.read_image(tmp_path / "text.png")
  Image.fromarray(_rand_u8((64, 64, 3))).save(tmp_path / "full.png")
  raw = (tmp_path / "full.png").read_bytes()
  (tmp_path / "cut.png").write_bytes(raw[: len(raw) // 2])
  with pytest.raises(io.ImageReadError, match="cut.png"):
    io.read_image(tmp_path / "cut.png")


def test_read_folder(tmp_path):
  imgs = [_rand_u8((8, 12, 3), s) for s in range(3)]
  for name, u8 in zip(["b.png", "a.png", "c.jpg"], imgs):
    Image.fromarray(u8).save(tmp_path / name, **({"quality": 100} if name.endswith("jpg") else {}))
  (tmp_path / "notes.txt").write_text("skip me")
  batch = io.read_folder(tmp_path)
  assert batch.shape == (3, 8, 12, 3)
  assert [p.name for p in io.list_images(tmp_path)] == ["a.png", "b.png", "c.jpg"]
  np.testing.assert_allclose(batch[0], imgs[1] / 127.5 - 1, atol=1e-6)
  np.testing.assert_allclose(batch[1], imgs[0] / 127.5 - 1, atol=1e-6)
  Image.fromarray(_rand_u8((10, 12, 3))).save(tmp_path / "d.png")
  with pytest.raises(ShapeError, match="differ in size"):
    io.read_folder(tmp_path)
  assert io.read_folder(tmp_path, size=8).shape == (4, 8, 8, 3)
  (tmp_path / "empty").mkdir()
  with pytest.raises(io.ImageReadError, match="no image files"):
    io.read_folder(tmp_path / "empty")
  with pytest.raises(io.ImageReadError, match="missing"):
    io.read_folder(tmp_path / "missing")


def test_side_by_side():
  a = np.random.default_rng(0).uniform(-1, 1, (16, 16, 3)).astype(np.float32)
  low = np.random.default_rng(1).uniform(-1, 1, (8, 8, 1)).astype(np.float32)
  pad = 4
  out = io.side_by_side([a, low], pad=pad)
  assert out.dtype == np.uint8 and out.shape == (16 + 2 * pad, 3 * pad + 32, 3)
  np.testing.assert_array_equal(out[pad:pad + 16, pad:pad + 16],
                                np.round((a + 1) * 127.5).astype(np.uint8))
  # The 8x8 grayscale image is shown at 16x16 with each pixel repeated 2x2.
  low_u8 = np.round((low[..., 0] + 1) * 127.5).astype(np.uint8)
  tile = out[pad:pad + 16, 2 * pad + 16:2 * pad + 32]
  np.testing.assert_array_equal(tile[..., 1], np.kron(low_u8, np.ones((2, 2), np.uint8)))
  assert np.all(out[:pad] == 255)
  labelled = io.side_by_side([a, low], ["input", "x4"], pad=pad, label_height=14)
  assert labelled.shape == (out.shape[0] + 14, out.shape[1], 3)
  # Only the label band (rows pad .. pad + 14) differs.
  np.testing.assert_array_equal(labelled[pad + 14:], out[pad:])
  assert np.all(labelled[:pad] == 255)
  assert np.any(labelled[pad:pad + 14] < 128)         # some text was drawn
  with pytest.raises(ConfigError, match="one label per image"):
    io.side_by_side([a, low], ["only one"])


def test_to_unit_from_unit():
  x = np.array([-1.5, -1.0, 0.0, 0.5, 1.0, 2.0], np.float32)
  np.testing.assert_allclose(io.to_unit(x), [0, 0, 0.5, 0.75, 1, 1])
  np.testing.assert_allclose(io.to_unit(x, clip=False), (x + 1) / 2)
  np.testing.assert_allclose(io.from_unit(io.to_unit(x[1:5])), x[1:5])
  assert isinstance(io.to_unit(x), np.ndarray)
  j = jax.jit(io.to_unit)(jnp.asarray(x))
  assert isinstance(j, jax.Array)
  np.testing.assert_allclose(j, io.to_unit(x))
