"""The model folder: what a trained model is on disk, and how it is read back.

``export`` writes ``DIR/params`` (orbax; parameters only, no optimizer state),
``DIR/featurizer_idf.npy`` for text models with idf weights, and ``DIR/model.json``::

    {"format_version": 2, "hash_spec": {...}, "num_features": D, "num_classes": K,
     "config": {...}, "featurizer": {...} | null, "versions": {...},
     "calibration": {"method": "platt" | "isotonic", ...} | null,   # experiments.calibrate
     "table_storage": "float32" | "int8",                           # quantize
     "files": {"params/...": {"bytes": n, "sha256": "..."}, ...}}   # checked by load

so a folder explains itself and can be served on its own. ``read_info`` migrates the
``model.json`` of older folders (format 1: no ``format_version``, the featurizer settings at
``config.featurizer``) once, at load time, and fills fields added since from
``default_config()``. ``quantize`` writes a copy whose input table is stored as int8 with
one scale per row (a quarter of its bytes); ``load`` reads it back as float32.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import jax
import ml_collections
import numpy as np

from mach_jax import (
  array_store,
  calibration as calibration_lib,
  config as config_lib,
  file_digests,
  model as model_lib,
  provenance,
  quantize as quantize_lib,
  whole_file,
)
from mach_jax.data.text import TextFeaturizer
from mach_jax.hashing import HashSpec

BUNDLE_DIR = "model"  # A run's model folder: WORKDIR/model.
IDF_FILE = "featurizer_idf.npy"
FORMAT_VERSION = 2
TABLE_STORAGE = ("float32", "int8")


def folder_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def export(path: str, params: Any, spec: HashSpec, config, num_features: int,
           featurizer: TextFeaturizer | None = None, table_storage: str = "float32",
           calibration: dict | None = None) -> int:
  """Write the model folder to ``path``, atomically; returns its size in bytes.

  The folder is written beside ``path`` (``path.partial``, ``model.json`` last) and renamed
  into place when complete, so a run killed while exporting leaves either the previous
  folder or none at ``path``, never a half-written one that loads. A write that fails (a
  full disk) leaves the same and raises OSError naming the folder and why.

  Args:
    params: the trained parameters (any sharding; orbax gathers them).
    featurizer: the text featurizer of models trained on text, else None.
    table_storage: "int8" when ``params`` hold the input table quantized (``quantize``).
    calibration: a fitted calibration to keep (``set_calibration``'s), or None.
  """
  path = os.path.abspath(path)
  partial, old = path + ".partial", path + ".old"
  main = jax.process_index() == 0
  if main:
    for leftover in (partial, old):  # From an export that was killed.
      shutil.rmtree(leftover, ignore_errors=True)
  try:
    array_store.save_tree(os.path.join(partial, "params"), params)
    if main:
      if featurizer is not None and featurizer.idf is not None:
        np.save(os.path.join(partial, IDF_FILE), featurizer.idf, allow_pickle=False)
      info = {"format_version": FORMAT_VERSION, "hash_spec": spec.to_dict(),
              "num_features": num_features, "num_classes": spec.K,
              "config": json.loads(config.to_json()),
              "featurizer": featurizer.to_dict() if featurizer is not None else None,
              "versions": provenance.library_versions(), "table_storage": table_storage,
              "calibration": calibration,
              "files": file_digests.record(partial)}  # Every file but model.json.
      with whole_file.replacing(os.path.join(partial, "model.json")) as f:
        json.dump(info, f, indent=2)
      if os.path.exists(path):
        os.rename(path, old)
      os.rename(partial, path)
      shutil.rmtree(old, ignore_errors=True)
  except Exception as e:  # A full disk, a lost mount: nothing half-written stays.
    if main:
      shutil.rmtree(partial, ignore_errors=True)
      if os.path.exists(old):  # Moved aside, and the new one not in place.
        os.rename(old, path)
    code, words = array_store.write_failure(e)
    raise OSError(code, f"the model folder {path} could not be written ({words}); "
                  "nothing half-written was left: free space and write it again (a "
                  "training run: rerun the same command)") from e
  return folder_bytes(path)


def _merge(into: ml_collections.ConfigDict, saved: dict, where: str) -> None:
  """Set ``into``'s fields from ``saved`` (JSON), refusing fields the library does not know."""
  for key, value in saved.items():
    if key not in into:
      raise ValueError(f"{where}: unknown config field {key!r}; this model folder was not "
                       "written by a compatible mach_jax")
    if isinstance(into[key], ml_collections.ConfigDict):
      _merge(into[key], value, f"{where}.{key}")
    elif isinstance(into[key], tuple) and isinstance(value, list):
      into[key] = tuple(tuple(v) if isinstance(v, list) else v for v in value)
    else:
      into[key] = value


def migrate(info: dict, where: str) -> dict:
  """``model.json`` of any known format, as the current format (a new dict)."""
  info = json.loads(json.dumps(info))
  version = info.get("format_version", 1)
  if version not in (1, FORMAT_VERSION):
    raise ValueError(f"{where}: format_version {version}; this mach_jax reads 1 and "
                     f"{FORMAT_VERSION}")
  if version == 1 and "featurizer" in info["config"]:
    info["config"].setdefault("data", {})["featurizer"] = info["config"].pop("featurizer")
  config = config_lib.default_config()
  _merge(config, info["config"], f"{where}: config")
  info.update(format_version=FORMAT_VERSION, config=config.to_dict())
  info.setdefault("featurizer", None)
  info.setdefault("calibration", None)
  info.setdefault("table_storage", "float32")
  info.setdefault("files", None)  # Folders exported before the record: not checked.
  if info["table_storage"] not in TABLE_STORAGE:
    raise ValueError(f"{where}: table_storage {info['table_storage']!r}; expected one of "
                     f"{TABLE_STORAGE}")
  return info


def read_info(path: str) -> dict:
  """The (migrated) ``model.json`` of the model folder ``path``."""
  info_path = os.path.join(path, "model.json")
  if not os.path.exists(info_path):
    raise FileNotFoundError(f"{info_path}: not a model folder (bundle.export writes one)")
  with open(info_path, "rb") as f:
    try:
      info = json.loads(f.read().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise ValueError(f"{info_path}: not valid JSON ({e})") from None
  if not isinstance(info, dict):
    raise ValueError(f"{info_path}: expected a JSON object, found {type(info).__name__}")
  for key in ("hash_spec", "num_features", "config"):
    if key not in info:
      raise ValueError(f"{info_path}: no {key!r} field")
  try:
    HashSpec.from_dict(info["hash_spec"])
    if type(info["num_features"]) is not int or info["num_features"] < 1:
      raise ValueError(f"num_features {info['num_features']!r} is not a positive integer")
    calibration_lib.Calibration.from_json(info.get("calibration"))
    file_digests.validate(info.get("files"), info_path)
    return migrate(info, info_path)
  except (TypeError, KeyError, AttributeError, ValueError) as e:
    if str(e).startswith(info_path):
      raise
    raise ValueError(f"{info_path}: {type(e).__name__}: {e}; the file is damaged or was not "
                     "written by bundle.export") from None


def load(path: str) -> tuple[dict, ml_collections.ConfigDict, Any]:
  """(info, config, params on the first device) of the model folder ``path``; a folder
  whose files differ from its export's record is refused (``file_digests.check``)."""
  import orbax.checkpoint as ocp
  path = os.path.abspath(path)
  info = read_info(path)
  file_digests.check(path, info["files"])  # Before any array is read.
  with ocp.Checkpointer(array_store.arrays_handler()) as ckptr:
    meta = ckptr.metadata(os.path.join(path, "params"))
    tree = meta.item_metadata if hasattr(meta, "item_metadata") else meta
    check_shapes(tree, info, ml_collections.ConfigDict(info["config"]), path)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          tree)
    params = ckptr.restore(os.path.join(path, "params"),
                           args=array_store.restore_args(target))
  config = ml_collections.ConfigDict(info["config"])
  if info["table_storage"] == "int8":
    params = _with_table(params, info, config, lambda reps, name: {
        **{k: v for k, v in reps.items() if k != quantize_lib.SCALE},
        name: jax.device_put(quantize_lib.dequantize_rows(reps[name], reps[quantize_lib.SCALE]),
                             device)})
  return info, config, params


def _with_table(params: dict, info: dict, config, change) -> dict:
  """``params`` with the dict that holds the input table replaced by ``change(that dict,
  the table's name in it)``."""
  *outer, name = next(iter(expected_shapes(info, config))).split("/")
  def go(tree, keys):
    return change(tree, name) if not keys else {**tree, keys[0]: go(tree[keys[0]], keys[1:])}
  return go(params, outer)


def quantize(path: str, out: str) -> tuple[int, int]:
  """Copy the model folder ``path`` to ``out`` with its input table stored as int8, one
  float32 scale per row (``mach_jax.quantize``): about a quarter of the folder's bytes,
  read back as float32 by ``load``; the rest is copied. Returns both folders' sizes.

  Raises:
    ValueError: the folder is int8 already, or its input layer is dense (no table).
    FileExistsError: ``out`` exists.
  """
  if os.path.exists(out):
    raise FileExistsError(f"{out}: exists; pass a new folder")
  info, config, params = load(path)
  if info["table_storage"] != "float32":
    raise ValueError(f"{path}: its table is stored as {info['table_storage']} already")
  if config.model.dense_input:
    raise ValueError(f"{path}: a dense input layer has no embedding table to quantize")

  def to_int8(reps, name):
    q, scale = quantize_lib.quantize_rows(np.asarray(reps[name]))
    return {**reps, name: q, quantize_lib.SCALE: scale}

  export(out, _with_table(params, info, config, to_int8), HashSpec.from_dict(info["hash_spec"]),
         config, int(info["num_features"]), load_featurizer(path, info), table_storage="int8",
         calibration=info["calibration"])  # In the folder as it appears: none without it.
  return folder_bytes(path), folder_bytes(out)


def widen(path: str, out: str, num_classes: int, catalogue: str | None = None) -> None:
  """Copy the model folder ``path`` to ``out`` over a catalogue grown to ``num_classes``
  (``catalogue``: its titles' file, then the folder's ``config.data.catalogue``).

  Nothing is retrained: the parameters are the same, every old id keeps its buckets
  (``HashSpec.widened``), and a new id is scored from the buckets it hashes to: it ranks by
  what the model learned of its buckets' other members until trained on queries for it.
  Written whole, or not at all (OSError).
  """
  spec = HashSpec.from_dict(read_info(path)["hash_spec"]).widened(num_classes)
  if os.path.exists(out):
    raise FileExistsError(f"{out}: exists; pass a new folder")
  shutil.rmtree(partial := os.path.abspath(out) + ".partial", ignore_errors=True)  # A killed one's.
  try:
    shutil.copytree(path, partial)
    with open(os.path.join(path, "model.json")) as f:  # As written (read_info migrates).
      raw = {**json.load(f), "hash_spec": spec.to_dict(), "num_classes": spec.K}
    raw["config"]["data"]["catalogue"] = catalogue or raw["config"]["data"].get("catalogue", "")
    with whole_file.replacing(os.path.join(partial, "model.json")) as f:
      json.dump(raw, f, indent=2)
    os.rename(partial, out)
  except OSError as e:  # (copytree's shutil.Error lists its files' errors, errno None.)
    shutil.rmtree(partial, ignore_errors=True)
    code, words = array_store.write_failure(e)
    raise OSError(code, f"the model folder {out} could not be written ({words}); nothing "
                  "half-written was left: free space and widen again") from e


def load_params_like(path: str, target: Any, spec: HashSpec, num_features: int) -> Any:
  """The parameters of the model folder ``path``, placed as ``target`` is (a run's own
  initial parameters), to start a run whose hash spec is ``spec`` over D = num_features.

  The folder's catalogue may be smaller than the run's (``HashSpec.widened``: old ids
  keep their buckets); everything else must match.

  Raises:
    ValueError: naming the folder and what differs (hash spec, D, or an array's shape).
  """
  import orbax.checkpoint as ocp
  path = os.path.abspath(path)
  info = read_info(path)
  if info["table_storage"] != "float32":
    raise ValueError(f"{path}: its table is stored as {info['table_storage']}, for serving; "
                     "start a run from the float32 folder it was quantized from")
  saved = HashSpec.from_dict(info["hash_spec"])
  try:
    fits = (saved if saved.K == spec.K else saved.widened(spec.K)) == spec
  except ValueError:
    fits = False
  if not fits or int(info["num_features"]) != num_features:
    raise ValueError(f"{path}: its model (hash spec {saved.to_dict()}, D={info['num_features']})"
                     f" cannot start this run (hash spec {spec.to_dict()}, D={num_features}); "
                     "only a larger catalogue K may differ: match model.R, model.B, the hash "
                     "family and seed, the input hash and the featurizer")
  file_digests.check(path, info["files"])
  with ocp.Checkpointer(array_store.arrays_handler()) as ckptr:
    meta = ckptr.metadata(os.path.join(path, "params"))
    tree = meta.item_metadata if hasattr(meta, "item_metadata") else meta
    got = {jax.tree_util.keystr(k): tuple(v.shape)
           for k, v in jax.tree_util.tree_leaves_with_path(tree)}
    want = {jax.tree_util.keystr(k): tuple(v.shape)
            for k, v in jax.tree_util.tree_leaves_with_path(target)}
    if got != want:
      diff = sorted(set(got.items()) ^ set(want.items()))[:4]
      raise ValueError(f"{path}: its arrays differ from this run's ({diff}); match "
                       "model.hidden and the model's other sizes")
    return ckptr.restore(os.path.join(path, "params"), args=array_store.restore_args(
        array_store.abstract_like(target)))


def set_calibration(path: str, calibration: dict) -> None:
  """Save a fitted calibration (``mach_jax.calibration.Calibration.to_json()``) in the
  folder's ``model.json`` (rewritten whole or not at all: ``whole_file``)."""
  with open(info_path := os.path.join(path, "model.json")) as f:
    info = {**json.load(f), "calibration": calibration}
  with whole_file.replacing(info_path) as f:
    json.dump(info, f, indent=2)


def expected_shapes(info: dict, config) -> dict[str, tuple[int, ...]]:
  """The shapes ``model.json`` implies for the input table and the output layer (keyed by
  the path below ``params``; a shared input table has no repetition axis)."""
  spec = HashSpec.from_dict(info["hash_spec"])
  hidden = tuple(config.model.hidden)
  D = spec.input_dim or int(info["num_features"])
  if config.model.get("shared_input", False):
    first = (f"{model_lib.SHARED}/{model_lib.TABLE}", (D, hidden[0]))
  else:
    first = ("reps/" + ("input_dense/kernel" if config.model.dense_input else model_lib.TABLE),
             (spec.R, D, hidden[0]))
  return {first[0]: first[1], "reps/output/kernel": (spec.R, hidden[-1], spec.B),
          "reps/output/bias": (spec.R, spec.B)}


def check_shapes(tree: Any, info: dict, config, path: str) -> None:
  """Refuse a folder whose arrays disagree with its ``model.json`` (R, B, D or H).

  Raises:
    ValueError: naming the folder, the array, its shape and the expected one.
  """
  flat = {"/".join(str(getattr(k, "key", k)) for k in keys): leaf.shape
          for keys, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}
  spec = HashSpec.from_dict(info["hash_spec"])
  for name, shape in flat.items():
    if name.startswith(model_lib.SHARED + "/"):
      continue
    if not shape or shape[0] != spec.R:
      raise ValueError(f"{path}: array {name} has shape {tuple(shape)}, without the leading "
                       f"axis R={spec.R} of model.json's hash spec; the folder is inconsistent")
  for name, want in expected_shapes(info, config).items():
    got = flat.get(name)
    if got is None or tuple(got) != want:
      raise ValueError(f"{path}: array {name} has shape {None if got is None else tuple(got)},"
                       f" and model.json (hash spec {spec.to_dict()}, hidden "
                       f"{tuple(config.model.hidden)}) implies {want}; the folder is "
                       "inconsistent: export it again")


def load_featurizer(path: str, info: dict) -> TextFeaturizer | None:
  """The text featurizer a model folder was trained with (None for feature-vector models)."""
  if not info["featurizer"]:
    return None
  idf = None
  if info["featurizer"].get("idf", False):
    idf_path = os.path.join(path, IDF_FILE)
    if not os.path.exists(idf_path):
      raise FileNotFoundError(f"{idf_path}: the model's featurizer uses idf weights, and "
                              "their file is missing from the model folder")
    idf = np.load(idf_path, allow_pickle=False)
  return TextFeaturizer.from_dict(info["featurizer"], idf=idf)
