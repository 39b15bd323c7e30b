"""Builds a `Language` from the ``data`` section of an experiment config.

``config.data.language`` names the generator; its own sub-section
(``config.data.<language>``) holds the generator's knobs, and
``config.data.seed`` its seed (the language itself, not the sample stream).
"""
from typing import Any, Mapping

from data_gen.language import Language
from data_gen.markov import MarkovChain


def _section(data: Mapping[str, Any], name: str) -> dict:
  sec = data.get(name)
  return dict(sec) if sec is not None else {}


def _markov(data):
  return MarkovChain(seed=int(data.get("seed", 0)), **_section(data, "markov"))


BUILDERS = {"markov": _markov}


def register(name: str, builder) -> None:
  """Adds a language: ``builder(data_config) -> Language`` (for user extensions)."""
  BUILDERS[name] = builder


def make_language(data: Mapping[str, Any]) -> Language:
  name = data.get("language")
  if name not in BUILDERS:
    raise ValueError(f"data.language: unknown language {name!r}; choose one of "
                     f"{sorted(BUILDERS)}")
  try:
    return BUILDERS[name](data)
  except TypeError as e:  # an unknown knob in the language's config section
    raise ValueError(f"data.{name}: {e}") from e
