"""Every built-in language's knobs and their config sections; imports no JAX.

Config files and launchers load this module (not `data_gen.registry`, which
imports the generators and with them JAX): a sweep can be expanded and launched
on a machine without JAX. The dataclasses check their fields on construction;
`sections()` gives the default ``config.data.<language>`` sub-sections, so
config files list every knob, and `pcfg_section` a PCFG's.
"""
import dataclasses

import ml_collections

from data_gen.pcfg.random_grammar import RandomGrammarConfig

LANGUAGES = ("markov", "pcfg", "hmm", "teacher")


@dataclasses.dataclass(frozen=True)
class HMMConfig:
  """The knobs of `data_gen.hmm.HMM.random` (the paper's HMM shape by default)."""
  num_states: int = 100
  vocab_size: int = 200
  length: int = 16
  transitions_per_state: int = 10     # 0: dense
  words_per_state: int = 20           # 0: dense
  transition_concentration: float = 1.0
  emission_concentration: float = 1.0
  task_positions: tuple = (6, 10)

  def __post_init__(self):
    for name in ("num_states", "vocab_size", "length"):
      if getattr(self, name) <= 0:
        raise ValueError(f"hmm.{name} must be positive, got {getattr(self, name)}")
    if not 0 <= self.transitions_per_state <= self.num_states:
      raise ValueError("hmm.transitions_per_state must lie in [0, num_states]")
    if not 0 <= self.words_per_state <= self.vocab_size:
      raise ValueError("hmm.words_per_state must lie in [0, vocab_size]")
    for k in self.task_positions:
      if not 0 <= k < self.length:
        raise ValueError(f"hmm.task_positions: position {k} is outside sentences of "
                         f"{self.length} words")


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
  """The knobs of `data_gen.teacher.Teacher` (a random causal transformer)."""
  vocab_size: int = 64
  num_classes: int = 4
  min_length: int = 4
  max_length: int = 16
  hidden_size: int = 64
  num_layers: int = 2
  num_heads: int = 2
  mlp_dim: int = 256
  init_std: float = 0.2           # larger than BERT's 0.02: a teacher with peaked predictions
  temperature: float = 1.0

  def __post_init__(self):
    for name in ("vocab_size", "num_classes", "min_length", "max_length", "hidden_size",
                 "num_layers", "num_heads", "mlp_dim"):
      if getattr(self, name) <= 0:
        raise ValueError(f"teacher.{name} must be positive, got {getattr(self, name)}")
    if self.min_length > self.max_length:
      raise ValueError("teacher.min_length must not exceed teacher.max_length")
    if self.temperature <= 0:
      raise ValueError(f"teacher.temperature must be positive, got {self.temperature}")


def pcfg_section(base: RandomGrammarConfig = RandomGrammarConfig()) -> ml_collections.ConfigDict:
  """Config section of a PCFG: a grammar file, or the knobs of a random grammar."""
  return ml_collections.ConfigDict(dict(
      grammar_file="",          # a rule file in the paper's format; overrides the knobs below
      min_length=1, max_length=31,          # the paper's pre-training filter: length < 32
      **dataclasses.asdict(base)))


def sections() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      markov=dict(num_words=16, length=10, concentration=0.3),
      pcfg=pcfg_section(),
      hmm=dict(dataclasses.asdict(HMMConfig()), task_positions=(6, 10)),
      teacher=dataclasses.asdict(TeacherConfig()),
  ))
