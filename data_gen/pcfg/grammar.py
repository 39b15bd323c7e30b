"""A probabilistic context-free grammar in Chomsky normal form, held as arrays.

Nonterminals ``A`` (``N`` of them) rewrite either to two nonterminals
(``binary[A, B, C] = P(A -> B C)``) or to a word (``emission[A, w] =
P(A -> w)``); a sentence starts from ``A`` with probability ``start[A]`` (in
the paper's grammar a root ``S`` with unary rules ``S -> S1 .. S9``, which the
loader folds into ``start``). Each row ``binary[A].sum() + emission[A].sum()``
is 1 for a normalised grammar. ``mass[A]`` keeps the sum of the raw numbers of
a rule file, so that `with_raw_probabilities` reproduces computations that use
the unnormalised numbers (the paper's task labels do).
"""
import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class Grammar:
  nonterminals: tuple            # names, index = nonterminal id
  words: tuple                   # names, index = word id
  start: np.ndarray              # float64 [N]
  binary: np.ndarray             # float64 [N, N, N]
  emission: np.ndarray           # float64 [N, V]
  root: str = "S"                # name of the start symbol
  root_is_unary: bool = True     # the root only rewrites to other nonterminals
  mass: np.ndarray | None = None  # float64 [N]: raw sum of each nonterminal's rules

  @property
  def num_nonterminals(self) -> int:
    return len(self.nonterminals)

  @property
  def vocab_size(self) -> int:
    return len(self.words)

  def index(self, name: str) -> int:
    return self.nonterminals.index(name)

  def rule_pairs(self):
    """Distinct child pairs: (left [K], right [K], probs [K, N] with probs[k, A] = P(A -> B_k C_k))."""
    _, b, c = np.nonzero(self.binary)
    pairs = sorted(set(zip(b.tolist(), c.tolist())))
    left = np.array([p[0] for p in pairs], np.int32)
    right = np.array([p[1] for p in pairs], np.int32)
    probs = self.binary[:, left, right].T.copy() if pairs else np.zeros((0, self.num_nonterminals))
    return left, right, probs

  def emit_probability(self) -> np.ndarray:
    """[N]: probability that each nonterminal rewrites to a word."""
    return self.emission.sum(axis=1)

  def with_raw_probabilities(self) -> "Grammar":
    """The grammar with each nonterminal's rules scaled back to the rule file's raw numbers."""
    if self.mass is None:
      return self
    m = self.mass
    return dataclasses.replace(self, binary=self.binary * m[:, None, None],
                               emission=self.emission * m[:, None])

  def expected_counts(self) -> np.ndarray:
    """[N]: expected number of times each nonterminal is expanded in one derivation.

    ``c = start (I - M)^-1`` with ``M[A, B]`` the expected number of ``B``
    children of an ``A`` node. Finite exactly when the grammar is consistent
    (derivations end with probability 1).
    """
    m = self.binary.sum(axis=2) + self.binary.sum(axis=1)
    return np.linalg.solve((np.eye(self.num_nonterminals) - m).T, self.start)

  def length_probabilities(self, max_length: int) -> np.ndarray:
    """float64 [max_length + 1]: P(length = n), by a dynamic program over lengths only.

    ``f[A, n] = P(A =>* some n-word string)``: ``f[A, 1] = sum_w P(A -> w)``,
    ``f[A, n] = sum_{B, C} P(A -> B C) sum_m f[B, m] f[C, n - m]``.
    """
    f = np.zeros((self.num_nonterminals, max_length + 1))
    f[:, 1] = self.emission.sum(axis=1)
    for n in range(2, max_length + 1):
      # conv[B, C] = sum_m f[B, m] f[C, n - m]
      conv = f[:, 1:n] @ f[:, n - 1:0:-1].T
      f[:, n] = np.einsum("abc,bc->a", self.binary, conv)
    return self.start @ f

  def to_rule_lines(self) -> list[str]:
    """The grammar in the paper's rule-file format (the start symbol's rules first)."""
    lines = []
    order = list(range(self.num_nonterminals))
    if self.root_is_unary:
      lines += [f"{self.root} {self.nonterminals[a]} {float(self.start[a])!r}"
                for a in np.flatnonzero(self.start)]
    else:
      root = int(np.argmax(self.start))
      order = [root] + [a for a in order if a != root]
    for a in order:
      name = self.nonterminals[a]
      for b, c in zip(*np.nonzero(self.binary[a])):
        lines.append(f"{name} {self.nonterminals[b]} {self.nonterminals[c]} "
                     f"{float(self.binary[a, b, c])!r}")
      for w in np.flatnonzero(self.emission[a]):
        lines.append(f"{name} {self.words[w]} {float(self.emission[a, w])!r}")
    return lines
