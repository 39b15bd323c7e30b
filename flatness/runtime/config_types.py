"""Config sections into frozen dataclasses, once, at the boundary.

The experiment configs (``experiments/configs``) are the one place where fields
get their defaults. The library takes typed sections: `from_section` converts a
``ConfigDict`` (or a mapping) into the dataclass, requiring every field that has
no default in the dataclass and refusing unknown ones, so that a typo or a
missing field is one clear error at start, not a silent second default deep in
the library.
"""
import dataclasses
import numbers
from typing import Any, Mapping, TypeVar

import numpy as np

T = TypeVar("T")

_CASTS = {"int": int, "float": float, "str": str, "bool": bool}


def from_section(cls: type[T], section: "Mapping[str, Any] | T", name: str, *,
                 ignore: tuple[str, ...] = (), strict: bool = True) -> T:
  """``section`` as a ``cls``; ``name`` is the section's dotted config path for errors.

  Fields whose annotation is int, float, str or bool are cast (a ConfigDict may hold
  ``1`` for a float), fields whose annotation is a dataclass are converted in turn (a
  nested section); ``ignore`` lists section keys that are not fields of ``cls`` (read
  elsewhere). ``strict``: every field must be in the section, also those with a
  default in ``cls`` (that default serves direct library callers, not configs, so a
  config that lacks a field fails instead of silently taking a second default); else
  only the fields without one. Raises ValueError naming the missing or unknown fields.
  """
  if isinstance(section, cls):
    return section
  fields = {f.name: f for f in dataclasses.fields(cls)}
  given = {k: v for k, v in dict(section).items() if k not in ignore}
  unknown = sorted(set(given) - set(fields))
  missing = [k for k, f in fields.items() if k not in given and (
      strict or (f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING))]
  if unknown or missing:
    raise ValueError(f"{name}: " + "; ".join(
        ([f"unknown fields {unknown} (it has {sorted(fields)})"] if unknown else [])
        + ([f"missing fields {missing}"] if missing else []))
        + "; the experiment config files under experiments/configs set every field")
  out = {}
  for k, v in given.items():
    ftype = fields[k].type
    if dataclasses.is_dataclass(ftype) and not isinstance(v, ftype):
      out[k] = from_section(ftype, v, f"{name}.{k}")      # a nested section
      continue
    kind = ftype if isinstance(ftype, str) else getattr(ftype, "__name__", "")
    out[k] = _cast(kind, v, f"{name}.{k}") if kind in _CASTS and v is not None else v
  return cls(**out)


def _cast(kind: str, v, name: str):
  """``v`` as ``kind`` when that loses nothing (an int for a float, an integral float for an
  int); a value of another type is an error, not a conversion (``str(("A",))`` is no task
  list, ``int(0.5)`` no count)."""
  number = isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))
  ok = {"int": number and float(v).is_integer(),
        "float": number,
        "str": isinstance(v, str),
        "bool": isinstance(v, (bool, np.bool_))}[kind]
  if not ok:
    raise ValueError(f"{name}: {v!r} is not {'an' if kind == 'int' else 'a'} {kind}")
  return _CASTS[kind](v)
