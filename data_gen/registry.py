"""Builds a `Language` from the ``data`` section of an experiment config.

``config.data.language`` names the generator; its own sub-section
(``config.data.<language>``) holds the generator's knobs (the fields of
`MarkovChain`, `RandomGrammarConfig` plus ``grammar_file`` / ``min_length`` /
``max_length``, `HMMConfig`, `TeacherConfig`), and ``config.data.seed`` seeds
the generator itself (not the sample stream). `data_gen.sections` holds the knobs
and the default sub-sections (without JAX, for config files and launchers).
"""
import dataclasses
from typing import Any, Mapping

from data_gen.hmm import HMM
from data_gen.language import Language
from data_gen.markov import MarkovChain
from data_gen.pcfg.language import PCFG
from data_gen.pcfg.random_grammar import RandomGrammarConfig, random_grammar
from data_gen.pcfg.rule_file import load_rule_file
from data_gen.sections import HMMConfig, TeacherConfig
from data_gen.teacher import Teacher


def _section(data: Mapping[str, Any], name: str) -> dict:
  sec = data.get(name)
  return dict(sec) if sec is not None else {}


def _markov(data, seed):
  return MarkovChain(seed=seed, **_section(data, "markov"))


def _pcfg(data, seed):
  sec = _section(data, "pcfg")
  path = sec.pop("grammar_file", "")
  lengths = dict(min_length=sec.pop("min_length", 1), max_length=sec.pop("max_length", 31))
  if path:
    return PCFG(load_rule_file(path), description=dict(grammar_file=path), **lengths)
  cfg = RandomGrammarConfig(**sec)
  return PCFG(random_grammar(cfg, seed), description=dict(dataclasses.asdict(cfg), seed=seed),
              **lengths)


def _hmm(data, seed):
  sec = _section(data, "hmm")
  sec["task_positions"] = tuple(sec.get("task_positions", (6, 10)))
  return HMM.random(HMMConfig(**sec), seed=seed)


def _teacher(data, seed):
  return Teacher(TeacherConfig(**_section(data, "teacher")), seed=seed)


BUILDERS = {"markov": _markov, "pcfg": _pcfg, "hmm": _hmm, "teacher": _teacher}


def register(name: str, builder) -> None:
  """Adds a language: ``builder(data_config, seed) -> Language`` (for user extensions)."""
  BUILDERS[name] = builder


def make_language(data: Mapping[str, Any]) -> Language:
  name = data.get("language")
  if name not in BUILDERS:
    raise ValueError(f"data.language: unknown language {name!r}; choose one of "
                     f"{sorted(BUILDERS)}")
  try:
    return BUILDERS[name](data, int(data.get("seed", 0)))
  except TypeError as e:  # an unknown knob in the language's config section
    raise ValueError(f"data.{name}: {e}") from e
