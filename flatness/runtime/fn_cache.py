"""A bounded cache of compiled programs keyed on the function they were built for.

The curvature estimators take a pure ``loss_fn`` (or ``logits_fn``) and jit a
program around it; building that program once per function, not once per call,
is what makes measuring a hundred checkpoints cheap. A function is only equal
to itself, so a caller that passes a *fresh* closure on every call (``lambda p,
b: objective.loss(p, b)`` written inside a loop) gets a new compilation every
time. `per_function` caches like `functools.lru_cache` (bounded: old entries,
and the closures and programs they hold, are dropped) and says so, once per
code location, when a function arrives that equals one compiled before (the
same code, closing over equal values) but is another object: build the
function once and pass the same object. Functions of the same code over
different values (two models' losses) are different programs and compile
without a word.
"""
import functools
import weakref

from absl import logging


def _same(f, g) -> bool:
  """Whether two functions of one code compute the same: equal defaults and equal closed-
  over values (compared by identity, else ``==``; incomparable values count as different)."""
  if f.__defaults__ != g.__defaults__:
    return False
  cells_f, cells_g = f.__closure__ or (), g.__closure__ or ()
  if len(cells_f) != len(cells_g):
    return False
  for a, b in zip(cells_f, cells_g):
    try:
      x, y = a.cell_contents, b.cell_contents
      if x is not y and not bool(x == y):
        return False
    except Exception:  # pylint: disable=broad-except  (arrays, empty cells)
      return False
  return True


def per_function(maxsize: int):
  """``lru_cache(maxsize)`` for ``builder(fn, *hashable_args)`` that warns when ``fn``'s
  code was compiled before for another function object (a fresh closure per call)."""
  def decorate(builder):
    cached = functools.lru_cache(maxsize=maxsize)(builder)
    seen: dict = {}          # code object -> weak set of the function objects built for
    warned: set = set()

    @functools.wraps(builder)
    def wrapper(fn, *args):
      code = getattr(fn, "__code__", None)
      if code is not None:
        objs = seen.setdefault(code, weakref.WeakSet())
        if fn not in objs and code not in warned and any(_same(fn, g) for g in objs):
          warned.add(code)
          logging.warning(
              "%s: compiling again for a new %s object from %s:%d; a fresh closure per call "
              "recompiles every time: build the function once and pass the same object",
              builder.__qualname__, getattr(fn, "__name__", "function"), code.co_filename,
              code.co_firstlineno)
        objs.add(fn)
      return cached(fn, *args)

    wrapper.cache_info = cached.cache_info
    wrapper.cache_clear = cached.cache_clear
    return wrapper
  return decorate
