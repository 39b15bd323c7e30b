"""Reads and writes grammars in the rule-file format of the paper's public code.

One rule per line, fields separated by whitespace:

  LHS RHS1 RHS2 prob   binary rule LHS -> RHS1 RHS2
  LHS RHS prob         if LHS starts with "S": unary rule LHS -> RHS (a nonterminal);
                       otherwise: LHS emits the word RHS

The start symbol is the left-hand side of the first line. Repeated lines for the
same rule are summed (the paper's file has 1,649 lines for about 1,400 rules).
Blank lines and lines starting with ``#`` are skipped.

Checks, each failing with a `GrammarFileError` that gives the line number and
the reason: the number of fields; probabilities that are not finite
non-negative numbers; a left-hand side whose rules do not sum to 1 within
``tolerance`` (the paper's file needs about 2.4e-4); a symbol used on a
right-hand side without rules of its own; a symbol that derives no finite
sentence (unproductive); a unary cycle; and, with ``strict=True``, a symbol
unreachable from the start symbol (otherwise a warning).

Unary rules are folded away exactly: ``A -> B`` (probability u) gives ``A``
u times each of ``B``'s rules. If the start symbol has only unary rules, it
becomes the start distribution (``Grammar.start``) and is not a nonterminal of
the arrays. Probabilities are renormalised per left-hand side (the authors'
sampler draws with relative weights); ``Grammar.mass`` keeps the raw sums.
"""
import collections
import math
import os

import numpy as np
from absl import logging

from data_gen.pcfg.grammar import Grammar


class GrammarFileError(ValueError):
  """A malformed rule file; the message names the file, the line and the reason."""


def _fail(path, line, reason):
  raise GrammarFileError(f"{path}:{line}: {reason}")


def parse_rules(lines, path="<rules>"):
  """Lines -> (start symbol, {lhs: {rhs tuple: [prob, first line]}}, kinds, first line of each lhs)."""
  rules = collections.OrderedDict()
  first_line = {}
  start = None
  for number, raw in enumerate(lines, start=1):
    text = raw.strip()
    if not text or text.startswith("#"):
      continue
    fields = text.split()
    if len(fields) not in (3, 4):
      _fail(path, number, f"expected 'LHS RHS prob' or 'LHS RHS1 RHS2 prob', got {len(fields)} "
                          f"fields: {text!r}")
    try:
      prob = float(fields[-1])
    except ValueError:
      _fail(path, number, f"probability {fields[-1]!r} is not a number")
    if not math.isfinite(prob) or prob < 0:
      _fail(path, number, f"probability {fields[-1]} is not a finite non-negative number")
    lhs = fields[0]
    if len(fields) == 4:
      rhs = ("binary", fields[1], fields[2])
    elif lhs.startswith("S"):
      rhs = ("unary", fields[1])
    else:
      rhs = ("emit", fields[1])
    if start is None:
      start = lhs
    first_line.setdefault(lhs, number)
    entry = rules.setdefault(lhs, collections.OrderedDict()).setdefault(rhs, [0.0, number])
    entry[0] += prob
  if start is None:
    raise GrammarFileError(f"{path}: no rules")
  return start, rules, first_line


def _children(rhs):
  return () if rhs[0] == "emit" else rhs[1:]


def _check(path, start, rules, first_line, tolerance, strict):
  """Every check of a parsed grammar; each failure names its line."""
  _check_sums_and_symbols(path, rules, first_line, tolerance)
  _check_reachable(path, start, rules, first_line, strict)
  _check_productive(path, rules, first_line)
  _check_unary_cycles(path, rules)


def _check_sums_and_symbols(path, rules, first_line, tolerance):
  """Each symbol's rules sum to 1; every symbol on a right-hand side has rules."""
  for lhs, rhs_map in rules.items():
    total = sum(p for p, _ in rhs_map.values())
    if abs(total - 1.0) > tolerance:
      _fail(path, first_line[lhs], f"the rules of {lhs} sum to {total:.6g}, not 1 "
                                   f"(tolerance {tolerance:g})")
    for rhs, (_, line) in rhs_map.items():
      for sym in _children(rhs):
        if sym not in rules:
          _fail(path, line, f"symbol {sym} (on the right of {lhs}) has no rules of its own")


def _check_reachable(path, start, rules, first_line, strict):
  """Symbols unreachable from the start: an error when ``strict``, else a warning."""
  seen, todo = {start}, [start]
  while todo:
    for rhs in rules[todo.pop()]:
      for sym in _children(rhs):
        if sym not in seen:
          seen.add(sym)
          todo.append(sym)
  for lhs in rules:
    if lhs not in seen:
      message = f"symbol {lhs} is unreachable from the start symbol {start}"
      if strict:
        _fail(path, first_line[lhs], message)
      logging.warning("%s:%d: %s (kept: task labels consider every left-hand side)", path,
                      first_line[lhs], message)


def _check_productive(path, rules, first_line):
  """Every symbol derives a finite sentence: one of its rules of positive probability has
  only productive children (a fixed point from the emitting symbols up)."""
  productive = set()
  changed = True
  while changed:
    changed = False
    for lhs, rhs_map in rules.items():
      if lhs in productive:
        continue
      for rhs, (p, _) in rhs_map.items():
        if p > 0 and all(s in productive for s in _children(rhs)):
          productive.add(lhs)
          changed = True
          break
  dead = sorted((first_line[lhs], lhs) for lhs in rules if lhs not in productive)
  if dead:
    listed = ", ".join(f"{lhs} (line {line})" for line, lhs in dead)
    _fail(path, dead[0][0], f"symbols that derive no finite sentence (unproductive): {listed}")


def _check_unary_cycles(path, rules):
  """No cycle of unary rules of positive probability (its mass would never terminate)."""
  state = {}

  def visit(sym, trail):
    state[sym] = "active"
    for rhs, (p, line) in rules[sym].items():
      if rhs[0] == "unary" and p > 0:
        child = rhs[1]
        if state.get(child) == "active":
          cycle = trail[trail.index(child):] + [sym, child] if child in trail else [sym, child]
          _fail(path, line, "unary cycle " + " -> ".join(cycle))
        if child not in state:
          visit(child, trail + [sym])
    state[sym] = "done"

  for lhs in rules:
    if lhs not in state:
      visit(lhs, [])


def grammar_from_rules(start, rules, *, path="<rules>", tolerance=1e-3,
                       strict=False) -> Grammar:
  """Checked rules (see `parse_rules`) -> a normalised `Grammar`."""
  first_line = {lhs: min(line for _, line in m.values()) for lhs, m in rules.items()}
  _check(path, start, rules, first_line, tolerance, strict)
  words = sorted({rhs[1] for m in rules.values() for rhs in m if rhs[0] == "emit"})
  word_id = {w: i for i, w in enumerate(words)}
  has_own = lambda lhs: any(rhs[0] != "unary" for rhs in rules[lhs])
  root_is_unary = not has_own(start)
  names = [lhs for lhs in rules if not (lhs == start and root_is_unary)]
  index = {n: i for i, n in enumerate(names)}
  n, v = len(names), len(words)
  # Each symbol's own rules, normalised, as a row [binary (N*N) | emission (V)].
  own = np.zeros((len(rules), n * n + v))
  unary = np.zeros((len(rules), len(rules)))
  order = {lhs: i for i, lhs in enumerate(rules)}
  mass = np.zeros(len(rules))
  for lhs, m in rules.items():
    total = sum(p for p, _ in m.values())
    mass[order[lhs]] = total
    for rhs, (p, _) in m.items():
      q = p / total
      if rhs[0] == "binary":
        own[order[lhs], index[rhs[1]] * n + index[rhs[2]]] += q
      elif rhs[0] == "emit":
        own[order[lhs], n * n + word_id[rhs[1]]] += q
      else:
        unary[order[lhs], order[rhs[1]]] += q
  # Fold unary rules: effective = (I - U)^-1 own, exact since U is acyclic (nilpotent).
  effective = np.linalg.solve(np.eye(len(rules)) - unary, own)
  rows = [order[name] for name in names]
  binary = effective[rows, :n * n].reshape(n, n, n)
  emission = effective[rows, n * n:]
  if root_is_unary:
    # The root's direct children; their effective rows already include further unaries.
    start_dist = unary[order[start], rows]
    start_dist = start_dist / start_dist.sum()
  else:
    start_dist = np.zeros(n)
    start_dist[index[start]] = 1.0
  return Grammar(nonterminals=tuple(names), words=tuple(words), start=start_dist, binary=binary,
                 emission=emission, root=start, root_is_unary=root_is_unary,
                 mass=mass[rows])


def load_rule_file(path, *, tolerance: float = 1e-3, strict: bool = False) -> Grammar:
  """Loads and checks a rule file (see module docstring).

  An unreachable symbol is an error with ``strict=True`` and a logged warning
  otherwise: the paper's own grammar has one (``A1_9``: no ``S_k`` uses it),
  and its tasks B and C still consider it as a label.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise GrammarFileError(f"{path}: no such grammar file")
  try:
    with open(path, encoding="utf-8") as f:
      start, rules, _ = parse_rules(f, path)
  except UnicodeDecodeError as e:
    raise GrammarFileError(f"{path}: not a text rule file (it holds bytes that are not "
                           "UTF-8 text); give the path of a rule file") from e
  return grammar_from_rules(start, rules, path=path, tolerance=tolerance, strict=strict)


def save_rule_file(grammar: Grammar, path) -> None:
  with open(path, "w") as f:
    f.write("\n".join(grammar.to_rule_lines()) + "\n")
