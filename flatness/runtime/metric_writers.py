"""Scalars to TensorBoard event files and to ``metrics.jsonl``, from process 0 only.

TensorBoard files are written by tensorboardX (no TensorFlow) under
``<workdir>/tensorboard``; every write is also appended as one JSON object
``{"step": s, "<tag>": value, ...}`` per line to ``<workdir>/metrics.jsonl``,
which `experiments.analyze` reads. The training, measurement and downstream
scripts all write to the same two places, each under its own tag prefix
(``train/``, ``eval/``, ``curvature/``, ``downstream/``, ``perf/``).
"""
import json
import math
import os
from typing import Iterable, Mapping

import jax
import numpy as np

JSONL = "metrics.jsonl"
TB_DIR = "tensorboard"


def _to_float(v) -> float:
  return float(np.asarray(v))


class MetricWriter:

  def __init__(self, workdir: str, *, enabled: bool | None = None):
    self.workdir = os.fspath(workdir)
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._tb = None
    if self.enabled:
      os.makedirs(self.workdir, exist_ok=True)
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(logdir=os.path.join(self.workdir, TB_DIR), flush_secs=30)

  @property
  def jsonl_path(self) -> str:
    return os.path.join(self.workdir, JSONL)

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled or not scalars:
      return
    values = {k: _to_float(v) for k, v in scalars.items()}
    for tag, value in values.items():
      self._tb.add_scalar(tag, value, global_step=int(step))
    record = {"step": int(step)}
    record.update({k: (v if math.isfinite(v) else str(v)) for k, v in values.items()})
    with open(self.jsonl_path, "a") as f:
      f.write(json.dumps(record) + "\n")

  def write_text(self, tag: str, text: str, step: int = 0) -> None:
    if self.enabled:
      self._tb.add_text(tag, text, global_step=step)

  def drop_after(self, step: int) -> None:
    """Removes JSONL records past ``step`` (steps a resumed run will redo)."""
    if not self.enabled or not os.path.exists(self.jsonl_path):
      return
    kept = [r for r in read_jsonl(self.jsonl_path) if r["step"] <= step]
    tmp = self.jsonl_path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in kept)
    os.replace(tmp, self.jsonl_path)

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def read_jsonl(path: str) -> list[dict]:
  """All records of a metrics file (non-finite values come back as floats)."""
  out = []
  with open(path) as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      rec = json.loads(line)
      out.append({k: (float(v) if isinstance(v, str) and v in ("nan", "inf", "-inf") else v)
                  for k, v in rec.items()})
  return out


def series(records: Iterable[dict], tag: str) -> list[tuple[int, float]]:
  """[(step, value)] of one tag, in file order."""
  return [(r["step"], r[tag]) for r in records if tag in r]
