"""Read PyTorch state dicts into NumPy without torch and without running pickled code.

`read_state_dict` reads `.pt`/`.pth`/`.ckpt` files written by `torch.save` (the
zip format of torch >= 1.6 and the older non-zip format), `.safetensors` and
`.npz`. Pickles are read by an unpickler that resolves only the globals a state
dict needs (`collections.OrderedDict`, torch's tensor/parameter rebuilders,
storage types and dtypes), each mapped to a NumPy stand-in; any other global
raises `CheckpointError` before anything is called, so a malicious checkpoint
cannot execute code.

References:
  pytorch/pytorch `torch/serialization.py` (`_save`, `_legacy_save`, `_load`),
  `torch/_utils.py` (`_rebuild_tensor_v2`, `_rebuild_tensor_v3`).
  huggingface/safetensors format (8-byte header length, JSON header, raw data).
"""
from __future__ import annotations

import collections
import dataclasses
import io
import json
import os
import pickle
import struct
import zipfile
from typing import Any, Mapping

import ml_dtypes
import numpy as np

from jaxir.errors import CheckpointError

__all__ = ["read_state_dict", "write_safetensors", "unwrap_state_dict"]

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "DoubleStorage": np.float64,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
    "UntypedStorage": np.uint8,
}
_TORCH_DTYPES = {
    "float32": np.float32, "float": np.float32, "float16": np.float16, "half": np.float16,
    "bfloat16": ml_dtypes.bfloat16, "float64": np.float64, "double": np.float64,
    "int64": np.int64, "long": np.int64, "int32": np.int32, "int": np.int32,
    "int16": np.int16, "short": np.int16, "int8": np.int8, "uint8": np.uint8,
    "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64, "bool": np.bool_,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
# Container keys unwrapped, in this order of preference.
_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "ema", "ema_model", "params",
                   "net")
_PREFIXES = ("module.", "_orig_mod.")


@dataclasses.dataclass(frozen=True)
class _StorageType:
  dtype: Any


@dataclasses.dataclass(frozen=True)
class _DType:
  dtype: Any


@dataclasses.dataclass(frozen=True)
class _Storage:
  key: str
  dtype: Any
  numel: int
  byte_offset: int = 0  # legacy views into a root storage


@dataclasses.dataclass(frozen=True)
class _LazyTensor:
  storage: _Storage
  offset: int
  size: tuple
  stride: tuple
  dtype: Any


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  return _LazyTensor(storage, int(storage_offset), tuple(size), tuple(stride), storage.dtype)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       dtype, metadata=None):
  return _LazyTensor(storage, int(storage_offset), tuple(size), tuple(stride), dtype.dtype)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
  return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):
  """Resolves only state-dict globals; storages become `_Storage` placeholders."""

  def __init__(self, file):
    super().__init__(file)
    self.itemsizes = {}  # storage key -> element size in bytes

  def find_class(self, module, name):
    if (module, name) in _ALLOWED:
      return _ALLOWED[(module, name)]
    if module in ("torch", "torch.storage") and name in _STORAGE_DTYPES:
      return _StorageType(_STORAGE_DTYPES[name])
    if module == "torch" and name in _TORCH_DTYPES:
      return _DType(_TORCH_DTYPES[name])
    raise CheckpointError(f"refusing to execute pickled code: {module}.{name} (a state dict "
                          "holds only tensors and containers; re-save the checkpoint with "
                          "torch.save(model.state_dict()) or convert it to .safetensors).")

  def persistent_load(self, pid):
    if not isinstance(pid, tuple) or not pid or pid[0] not in ("storage", b"storage"):
      raise CheckpointError(f"unknown persistent id {pid!r:.80} in the checkpoint pickle.")
    stype, key, _location, numel = pid[1:5]
    if not isinstance(stype, _StorageType):
      raise CheckpointError(f"storage type {stype!r} is not a torch storage type.")
    key = key.decode() if isinstance(key, bytes) else str(key)
    view = pid[5] if len(pid) > 5 else None
    itemsize = np.dtype(stype.dtype).itemsize
    self.itemsizes.setdefault(key, itemsize)
    if view is not None:  # legacy view: (view_key, offset, size) into the root storage
      _vkey, off, vsize = view
      return _Storage(key, stype.dtype, int(vsize), int(off) * itemsize)
    return _Storage(key, stype.dtype, int(numel))


def _unpickle(data: bytes):
  return _RestrictedUnpickler(io.BytesIO(data)).load()


def _materialize(obj, storage_bytes, big_endian: bool):
  """Replace every `_LazyTensor` in nested containers with a NumPy array."""
  if isinstance(obj, _LazyTensor):
    st = obj.storage
    raw = storage_bytes(st.key)
    dtype = np.dtype(obj.dtype)
    if big_endian:
      dtype = dtype.newbyteorder(">")
    need = st.byte_offset + st.numel * np.dtype(st.dtype).itemsize
    if len(raw) < need:
      raise CheckpointError(f"storage {st.key} holds {len(raw)} bytes; expected {need} "
                            "(truncated checkpoint?).")
    flat = np.frombuffer(raw, dtype=dtype, offset=st.byte_offset,
                         count=(need - st.byte_offset) // dtype.itemsize)
    if any(s < 0 for s in obj.stride) or obj.offset < 0:
      raise CheckpointError("negative stride or offset in a tensor of the checkpoint.")
    last = obj.offset + sum((n - 1) * s for n, s in zip(obj.size, obj.stride)) \
        if all(obj.size) else obj.offset - 1
    if last >= flat.size:
      raise CheckpointError(f"tensor of shape {obj.size} (offset {obj.offset}, stride "
                            f"{obj.stride}) reads past its storage of {flat.size} elements.")
    if not all(obj.size):
      return np.zeros(obj.size, dtype.newbyteorder("="))
    arr = np.lib.stride_tricks.as_strided(flat[obj.offset:], shape=obj.size,
                                          strides=tuple(s * dtype.itemsize for s in obj.stride))
    return np.array(arr, dtype=dtype.newbyteorder("="))
  if isinstance(obj, dict):
    out = collections.OrderedDict() if isinstance(obj, collections.OrderedDict) else {}
    for k, v in obj.items():
      out[k] = _materialize(v, storage_bytes, big_endian)
    return out
  if isinstance(obj, (list, tuple)):
    return type(obj)(_materialize(v, storage_bytes, big_endian) for v in obj)
  return obj


def _load_zip(path) -> Any:
  with zipfile.ZipFile(path) as z:
    names = z.namelist()
    pkl = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
    if len(pkl) != 1:
      raise CheckpointError(f"{path} is a zip archive without a single data.pkl "
                            "(not a torch.save checkpoint).")
    prefix = pkl[0][:-len("data.pkl")]
    big = False
    if prefix + "byteorder" in names:
      big = z.read(prefix + "byteorder").decode().strip() == "big"
    obj = _unpickle(z.read(pkl[0]))
    cache = {}

    def storage_bytes(key):
      if key not in cache:
        try:
          cache[key] = z.read(f"{prefix}data/{key}")
        except KeyError:
          raise CheckpointError(f"{path} lacks the storage data/{key}.") from None
      return cache[key]

    return _materialize(obj, storage_bytes, big)


def _load_legacy(path) -> Any:
  with open(path, "rb") as f:
    data = f.read()
  buf = io.BytesIO(data)
  try:
    magic = _RestrictedUnpickler(buf).load()
  except pickle.UnpicklingError as e:
    raise CheckpointError(f"{path} is neither a torch zip checkpoint nor a legacy one: {e}") \
        from None
  if magic != _LEGACY_MAGIC:
    raise CheckpointError(f"{path} is a pickle but not a torch checkpoint (bad magic number).")
  _RestrictedUnpickler(buf).load()  # protocol version
  sys_info = _RestrictedUnpickler(buf).load()
  big = isinstance(sys_info, dict) and not sys_info.get("little_endian", True)
  main = _RestrictedUnpickler(buf)
  obj = main.load()
  elem = main.itemsizes
  keys = _RestrictedUnpickler(buf).load()
  # Storages follow in `keys` order: int64 element count, then the raw bytes.
  pos, blobs = buf.tell(), {}
  for key in keys:
    key = key.decode() if isinstance(key, bytes) else str(key)
    (numel,) = struct.unpack(">q" if big else "<q", data[pos:pos + 8])
    nbytes = numel * elem.get(key, 1)
    blobs[key] = data[pos + 8:pos + 8 + nbytes]
    pos += 8 + nbytes

  def storage_bytes(key):
    if key not in blobs:
      raise CheckpointError(f"{path} lacks the data of storage {key}.")
    return blobs[key]

  return _materialize(obj, storage_bytes, big)


_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
              "BF16": ml_dtypes.bfloat16, "I64": np.int64, "I32": np.int32, "I16": np.int16,
              "I8": np.int8, "U8": np.uint8, "U16": np.uint16, "U32": np.uint32,
              "U64": np.uint64, "BOOL": np.bool_}


def _load_safetensors(path) -> dict:
  with open(path, "rb") as f:
    (n,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(n))
  if any(v.get("dtype") == "BF16" for k, v in header.items() if k != "__metadata__"):
    with open(path, "rb") as f:  # safetensors.numpy has no bfloat16: read the raw layout
      f.seek(8 + n)
      body = f.read()
    out = {}
    for k, v in header.items():
      if k == "__metadata__":
        continue
      a, b = v["data_offsets"]
      out[k] = np.frombuffer(body[a:b], dtype=_ST_DTYPES[v["dtype"]]).reshape(v["shape"]).copy()
    return out
  from safetensors.numpy import load_file
  return dict(load_file(str(path)))


def unwrap_state_dict(obj, select: str | int | None = None) -> dict:
  """The state dict inside a loaded checkpoint object.

  Args:
    obj: what the checkpoint holds: a state dict, a dict wrapping one under
      one of "state_dict", "model_state_dict", "model", "ema", "ema_model",
      "params", "net" (first found wins), or a list/tuple (ermongroup's
      `[model, optimizer, epoch, step(, ema)]`: the first element).
    select: a key (dict) or index (list) to pick instead of the default.

  Returns:
    dict name -> np.ndarray, with a `module.` (DataParallel) or `_orig_mod.`
    (torch.compile) prefix shared by all keys removed.
  """
  seen = 0
  while True:
    seen += 1
    if seen > 8:
      raise CheckpointError("checkpoint containers nest too deeply; pass select=.")
    if select is not None:
      try:
        obj = obj[select]
      except (KeyError, IndexError, TypeError):
        raise CheckpointError(f"the checkpoint has no entry {select!r}; its top level holds "
                              f"{_describe(obj)}.") from None
      select = None
      continue
    if isinstance(obj, (list, tuple)):
      if not obj:
        raise CheckpointError("the checkpoint holds an empty list.")
      obj = obj[0]
      continue
    if not isinstance(obj, Mapping):
      raise CheckpointError(f"the checkpoint holds a {type(obj).__name__}, not a state dict.")
    if obj and all(isinstance(v, np.ndarray) for v in obj.values()):
      break
    inner = next((k for k in _CONTAINER_KEYS if isinstance(obj.get(k), (Mapping, list, tuple))),
                 None)
    if inner is None:
      bad = [k for k, v in obj.items() if not isinstance(v, np.ndarray)][:5]
      raise CheckpointError(f"the checkpoint dict is not a state dict (entries {bad} are not "
                            f"tensors) and has none of the keys {_CONTAINER_KEYS}; pass "
                            "select=<key> to pick the state dict.")
    obj = obj[inner]
  sd = {str(k): v for k, v in obj.items()}
  for p in _PREFIXES:
    if sd and all(k.startswith(p) for k in sd):
      sd = {k[len(p):]: v for k, v in sd.items()}
  return sd


def _describe(obj) -> str:
  if isinstance(obj, Mapping):
    return f"keys {list(obj)[:8]}"
  if isinstance(obj, (list, tuple)):
    return f"a {type(obj).__name__} of {len(obj)}"
  return f"a {type(obj).__name__}"


def read_state_dict(path: str | os.PathLike, select: str | int | None = None
                    ) -> dict[str, np.ndarray]:
  """Read a checkpoint's state dict as NumPy arrays, never executing pickled code.

  Args:
    path: `.pt`/`.pth`/`.ckpt`/`.bin` (torch.save, zip or legacy format),
      `.safetensors` or `.npz`.
    select: see `unwrap_state_dict` (key or index of the wrapped state dict).

  Returns:
    dict name -> np.ndarray (float16/bfloat16 tensors keep their dtype;
    bfloat16 is `ml_dtypes.bfloat16`).

  Raises:
    CheckpointError: the file is missing, of an unknown format, truncated,
      or its pickle names any global besides the state-dict ones.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise CheckpointError(f"checkpoint {path} does not exist.")
  low = path.lower()
  if low.endswith(".safetensors"):
    obj = _load_safetensors(path)
  elif low.endswith(".npz"):
    with np.load(path, allow_pickle=False) as z:
      obj = {k: z[k] for k in z.files}
  elif zipfile.is_zipfile(path):
    obj = _load_zip(path)
  else:
    with open(path, "rb") as f:
      head = f.read(2)
    if head[:1] != b"\x80":
      raise CheckpointError(f"{path}: unknown checkpoint format; expected a torch.save file "
                            "(.pt/.pth/.ckpt), .safetensors or .npz.")
    obj = _load_legacy(path)
  return unwrap_state_dict(obj, select)


def write_safetensors(path: str | os.PathLike, state_dict: Mapping[str, Any],
                      metadata: Mapping[str, str] | None = None) -> None:
  """Write {name: array} as a .safetensors file (loadable by `safetensors.torch`)."""
  from safetensors.numpy import save_file
  arrays = {}
  for k, v in state_dict.items():
    a = np.asarray(v)
    if a.dtype == ml_dtypes.bfloat16:
      raise CheckpointError(f"{k} is bfloat16; cast to float32 before writing safetensors.")
    arrays[k] = np.ascontiguousarray(a)
  save_file(arrays, os.fspath(path), metadata=dict(metadata) if metadata else None)
