"""The interface every synthetic language implements.

A language is a distribution over sentences of word ids ``[0, V)`` whose
probabilities we can compute exactly. Sentences travel as `Sentences`: a
padded ``int32 [n, max_length]`` array plus lengths, plus whatever latent
variables the generator drew (hidden states, a class), which downstream tasks
use.
"""
import abc
import dataclasses

import numpy as np


@dataclasses.dataclass
class Sentences:
  tokens: np.ndarray                       # int32 [n, max_length]; 0 beyond each length
  lengths: np.ndarray                      # int32 [n]
  latent: dict = dataclasses.field(default_factory=dict)   # name -> array [n, ...]

  def __len__(self) -> int:
    return len(self.lengths)

  def take(self, idx) -> "Sentences":
    return Sentences(self.tokens[idx], self.lengths[idx],
                     {k: v[idx] for k, v in self.latent.items()})

  @staticmethod
  def concatenate(parts: list["Sentences"]) -> "Sentences":
    width = max(p.tokens.shape[1] for p in parts)
    toks = [np.pad(p.tokens, ((0, 0), (0, width - p.tokens.shape[1]))) for p in parts]
    keys = parts[0].latent.keys()
    return Sentences(np.concatenate(toks), np.concatenate([p.lengths for p in parts]),
                     {k: np.concatenate([p.latent[k] for p in parts]) for k in keys})


@dataclasses.dataclass(frozen=True)
class Task:
  """A downstream classification task defined by the generator's latent structure."""
  name: str
  num_classes: int
  description: str


class Language(abc.ABC):
  """A synthetic language with exact probabilities."""

  vocab_size: int          # number of words V
  max_length: int          # longest sentence, in words
  words: tuple             # word strings, index = word id

  @abc.abstractmethod
  def sample(self, rng: np.random.Generator, n: int) -> Sentences:
    """n i.i.d. sentences (with the language's length filter applied)."""

  @abc.abstractmethod
  def log_prob(self, tokens, lengths) -> np.ndarray:
    """float64 [n]: exact log p(sentence), its length included."""

  @abc.abstractmethod
  def conditionals(self, tokens, lengths, mask=None) -> np.ndarray:
    """float [n, L, V]: ``p(x_i = w | x_j for every unmasked j != i)``.

    Without ``mask`` (nothing else masked) row ``i`` is the single-masked
    conditional ``p(x_i | x_{-i})``: the paper's "lookup table". With a bool
    ``mask`` [n, L], the words at masked positions are unknown and
    marginalised: row ``i`` of a masked position is what an ideal masked LM
    predicts there. Rows past a sentence's length are zero.
    """

  def tasks(self) -> dict[str, Task]:
    return {}

  def task_labels(self, name: str, sentences: Sentences) -> np.ndarray:
    raise ValueError(f"{type(self).__name__} has no task {name!r}; it has {sorted(self.tasks())}")

  def config_dict(self) -> dict:
    """JSON-able description that, with the seed, determines the language."""
    return {}
