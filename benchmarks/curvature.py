r"""Cost of Hessian-vector products, accuracy of the trace estimators per product, and how
many probes per batch a trained model's trace estimate should use.

  python -m benchmarks.curvature [--presets=tiny,2m,9m] [--batch_size=32] [--repeats=10] \
      [--rounds=5] [--noestimators]
  python -m benchmarks.curvature --workdirs=RUN[,RUN...] [--num_batches=64] [--probes=8]

Table 1, per size preset (MLM loss on batches of length-32 sequences, float32),
measured side by side in one run: the time of one gradient and, for each HVP
method (`flatness.curvature.hessian.HVP_METHODS`), the time per Hessian-vector
product in three settings: one product alone (x1); a chunk of 8 probes on one
batch in one vmapped pass (`hessian.hvps`, how `flatness.curvature.trace`
evaluates a batch's probes; ``linearized`` linearises the gradient once and maps
the 8 probes through its tangent map); and a chunk of 8 (batch, probe) pairs,
8 different batches with one probe each, in one vmapped pass (how
``hessian_trace(..., across_batches=True)`` evaluates one probe per batch).
Each cell is ms per product, its ratio to the gradient (the median of the rounds' ratios,
and their range) and products per second, from ``--rounds`` rounds that each time every
program ``--repeats`` times in turn
(the gradient's time drifts by 2x over minutes on a shared VM: timing each program once,
back to back, makes the ratios drift with it). The
last column gives the FLOPs per product in the three settings over the gradient's, by
XLA's cost analysis of the same compiled programs: what the time ratios would be if
every program ran at the gradient's FLOP rate (one product alone does about 2.6x a
gradient's FLOPs by every method; a chunk shares the primal work among its probes).
Nothing in it is CPU-specific: on an accelerator it times the same programs
(the batches and probes are placed on the default device).

Table 2, on a transformer small enough for a dense Hessian (float64): the
relative error ``|estimate - tr(H)| / tr(H)`` of each trace estimator, averaged
over seeds, against the number of Hessian-vector products it used.

Table 3 (``--workdirs``, instead of tables 1 and 2), per run at its latest
checkpoint, on the evaluation batches of ``experiments/configs/measure.py``
(``--num_batches`` batches of ``--batch_size`` sentences, its parameter
selection): the variance components of a Hutchinson trace estimate with
``--probes`` probes on every batch (`flatness.curvature.allocation`: ``s_b^2``
between batches, ``s_p^2`` between probes), and per HVP method its cost model
(``c_b``, shared by a batch's probes, and ``c_p``, per probe, from the time of a
pass of 1 and of ``--probes`` probes on one batch, medians of ``--rounds`` alternating
rounds of ``--repeats`` calls) with the number of probes per batch that
reaches a given standard error soonest, and that time relative to the measured
runs' setting (one probe per batch, the measure config's ``trace.hvp``). The best
``p`` is searched up to ``--probes``, the pass whose cost was measured. Brackets:
90% intervals from 1,000 bootstrap resamples, each of the batches and of each
setting's timing rounds.
"""
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags

from experiments import wiring
from experiments.configs import measure as measure_config
from flatness.curvature import allocation
from flatness.curvature import hessian as hs
from flatness.curvature import trace
from flatness.model import presets
from flatness.model import tokens as tok
from flatness.model.objectives import Objective
from flatness.model.transformer import Transformer, TransformerConfig, init_params
from flatness.training import trainer

_PRESETS = flags.DEFINE_list("presets", ["tiny", "2m", "9m"], "Presets ('tiny': 2 x 64).")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Sentences per batch (table 3: default, the "
                              "measure config's).")
_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed calls per measurement.")
_SEEDS = flags.DEFINE_integer("seeds", 10, "Seeds per estimator and budget in table 2.")
_ESTIMATORS = flags.DEFINE_bool("estimators", True, "Table 2 after table 1.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Alternating timing rounds (tables 1 and 3).")
_WORKDIRS = flags.DEFINE_list("workdirs", [], "Trained runs: table 3 at their latest checkpoint.")
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 64, "Table 3: evaluation batches.")
_PROBES = flags.DEFINE_integer("probes", 8, "Table 3: probes per batch (>= 2).")


def _batch(obj, cfg, batch_size, seed):
  rng = np.random.default_rng(seed)
  raw = dict(tokens=rng.integers(0, cfg.vocab_size - tok.NUM_SPECIAL,
                                 (batch_size, cfg.seq_len - 2)).astype(np.int32),
             lengths=rng.integers(2, cfg.seq_len - 1, batch_size).astype(np.int32))
  return {k: v for k, v in obj.prepare(jax.random.key(1 + seed), raw).items() if v is not None}


def _problem(cfg, batch_size, seed=0):
  obj = Objective(Transformer(cfg))
  params = init_params(cfg, jax.random.key(seed))
  return obj, params, _batch(obj, cfg, batch_size, seed)


def _time(fn, *args, repeats):
  jax.block_until_ready(fn(*args))
  start = time.perf_counter()
  for _ in range(repeats):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / repeats


def _timed_rounds(programs, rounds, repeats):
  """``{key: [seconds per call, one per round]}`` for ``programs`` ``{key: (fn, args)}``: each
  round times every program in turn (`_time`: one untimed call first, so the cost of
  switching programs is not timed), so that load drifting over minutes hits all alike."""
  times = {k: [] for k in programs}
  for _ in range(rounds):
    for k, (fn, args) in programs.items():
      times[k].append(_time(fn, *args, repeats=repeats))
  return times


def _compiled(fn, *args):
  """``jax.jit(fn)`` compiled for ``args``, and its FLOPs by XLA's cost analysis (None where
  the backend reports none)."""
  compiled = jax.jit(fn).lower(*args).compile()
  cost = compiled.cost_analysis()
  cost = (cost[0] if cost else {}) if isinstance(cost, (list, tuple)) else (cost or {})
  return compiled, cost.get("flops")


CHUNK = 8   # products per vmapped pass, as `flatness.curvature.trace` evaluates them (``chunk``)


def _cell(ts, tgs):
  """Median ms, the median of the rounds' ratios to the gradient [their range], HVPs/s."""
  t, r = np.median(ts), np.asarray(ts) / np.asarray(tgs)
  return f"{1e3 * t:.1f} ({np.median(r):.2f} [{r.min():.2f}-{r.max():.2f}], {1 / t:.1f}/s)"


def table_hvp(names, batch_size, repeats, rounds):
  """Per preset: one gradient, then per HVP method the time per product alone, in a chunk
  of `CHUNK` probes on one batch and in a chunk of `CHUNK` batches with one probe each
  (medians of ``rounds`` alternating rounds of ``repeats`` calls each, so that drifting
  load hits every program alike; each round times the gradient first, so drift within a
  round shows in the range of the rounds' ratios); then the FLOPs per product in the same three settings
  over the gradient's (XLA's cost analysis of the compiled programs: the ratio the times
  would have at equal efficiency)."""
  head = ["preset", "params", "gradient (ms)", "method", "x1", f"{CHUNK} probes, 1 batch",
          f"{CHUNK} batches, 1 probe each", "FLOPs per product / gradient's"]
  print(f"ms per HVP (ratio to the gradient [range over rounds], HVPs/s); medians of {rounds} "
        f"alternating rounds of {repeats} calls")
  print("| " + " | ".join(head) + " |")
  print("|" + "---|" * len(head))
  for name in names:
    fields = dict(hidden_size=64, num_layers=2, num_heads=1, mlp_dim=256) if name == "tiny" \
        else presets.preset_fields(name)
    cfg = TransformerConfig(vocab_size=tok.model_vocab_size(200), seq_len=32,
                            dropout_rate=0.0, attention_dropout_rate=0.0, **fields)
    obj, params, batch = _problem(cfg, batch_size)
    batches = tuple(jax.device_put(_batch(obj, cfg, batch_size, 100 + i)) for i in range(CHUNK))
    loss = lambda p, b: obj.loss(p, b)
    v = hs.probe(jax.random.key(2), params)
    vs = jax.vmap(lambda k: hs.probe(k, params))(jax.random.split(jax.random.key(3), CHUNK))
    # (program, its arguments, products per call) per setting; the gradient first.
    progs = {"gradient": (jax.grad(loss), (params, batch), 1)}
    for method in hs.HVP_METHODS:
      one = lambda p, vv, b, m=method: hs.hvp(loss, p, vv, b, method=m)
      progs[method, "x1"] = (one, (params, v, batch), 1)
      progs[method, "probes"] = (
          lambda p, vv, b, m=method: hs.hvps(loss, p, vv, b, method=m), (params, vs, batch),
          CHUNK)
      progs[method, "pairs"] = (
          lambda p, vv, bs, one=one: jax.vmap(one, in_axes=(None, 0, 0))(
              p, vv, hs.stack_batches(bs)), (params, vs, batches), CHUNK)
    compiled = {k: _compiled(fn, *args) for k, (fn, args, _) in progs.items()}
    times = _timed_rounds({k: (compiled[k][0], args) for k, (_, args, _) in progs.items()},
                          rounds, repeats)
    times = {k: np.asarray(ts) / progs[k][2] for k, ts in times.items()}   # per product
    flops = {k: compiled[k][1] and compiled[k][1] / n for k, (_, _, n) in progs.items()}
    fg = flops["gradient"]
    size = f"{sum(x.size for x in jax.tree.leaves(params)) / 1e6:.2f}M"
    for method in hs.HVP_METHODS:
      keys = [(method, s) for s in ("x1", "probes", "pairs")]
      ratios = " / ".join(f"{flops[k] / fg:.2f}" if flops[k] and fg else "n/a" for k in keys)
      cells = [name, size, f"{1e3 * np.median(times['gradient']):.1f}", method,
               *(_cell(times[k], times["gradient"]) for k in keys), ratios]
      print("| " + " | ".join(cells) + " |", flush=True)


def table_estimators(seeds):
  with jax.enable_x64(True):
    cfg = TransformerConfig(vocab_size=8, seq_len=6, hidden_size=4, num_layers=1, num_heads=2,
                            mlp_dim=8, dropout_rate=0.0, attention_dropout_rate=0.0,
                            dtype="float64", param_dtype="float64")
    obj, params, batch = _problem(cfg, 6)
    params = jax.tree.map(lambda x: x * 5 if x.ndim > 1 else x, params)
    loss = lambda p: obj.loss(p, batch)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    exact = float(jnp.trace(jax.jit(jax.hessian(lambda x: loss(unravel(x))))(flat)))
    budgets = (6, 12, 24, 48, 96)
    print(f"| estimator (dense trace {exact:.2f}, {flat.size} parameters) | "
          + " | ".join(f"{b} HVPs" for b in budgets) + " |")
    print("|---|" + "---|" * len(budgets))
    for method in trace.METHODS:
      row = []
      for b in budgets:
        errs = [abs(trace.hessian_trace(loss, params, jax.random.key(s), num_probes=b,
                                        method=method, chunk=b).value - exact) / abs(exact)
                for s in range(seeds)]
        row.append(f"{np.mean(errs):.3f}")
      print(f"| {method} | " + " | ".join(row) + " |", flush=True)


def _interval(values, level=0.9):
  lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
  return f"[{lo:.3g}, {hi:.3g}]"


def table_allocation(workdirs, num_batches, batch_size, probes, repeats, rounds=5,
                     resamples=1000):
  """Per run: variance components of the trace at the latest checkpoint, and per HVP method
  the cost model, the best probes per batch (up to ``probes``, one pass) and its time to a
  given error relative to the measure config's default (one probe, its ``trace.hvp``).
  ``batch_size`` None: the measure config's."""
  if probes < 2:
    raise ValueError(f"--probes must be at least 2 to separate the variance components, got "
                     f"{probes}")
  cfg = measure_config.get_config("trace")
  cfg.update(num_batches=num_batches, batch_size=batch_size or cfg.batch_size)
  batch_size, default = cfg.batch_size, cfg.trace.hvp
  rng = np.random.default_rng(0)
  for workdir in workdirs:
    run = wiring.trained_run(workdir)
    measurer = wiring.curvature_evaluator(run, cfg)
    params, meta = trainer.restore_params(workdir, -1, run.setup.abstract_params())
    step = meta["step"]
    loss_fn, batches = measurer.loss_fn, measurer.batches
    est = trace.hessian_trace(loss_fn, params, jax.random.key(cfg.seed), batches=batches,
                              num_probes=probes, chunk=probes, include=measurer.include)
    vb, vp = allocation.variance_components(est.samples)
    mask = hs.selection_mask(params, measurer.include)
    vs = jax.vmap(lambda k: hs.probe(k, params, "rademacher", mask))(
        jax.random.split(jax.random.key(1), probes))
    # Passes of 1 and of `probes` probes per method, timed in alternating rounds (medians):
    # the cost model rests on their difference, which drifting load would otherwise bias.
    one = jax.tree.map(lambda x: x[:1], vs)
    fns = {m: jax.jit(lambda p, v, b, m=m: hs.hvps(loss_fn, p, v, b, method=m))
           for m in hs.HVP_METHODS}
    times = _timed_rounds({(m, n): (fns[m], (params, one if n == 1 else vs, batches[0]))
                           for m in fns for n in (1, probes)}, rounds, repeats)

    def costs(pick=lambda ts: ts):
      return {m: allocation.costs(np.median(pick(times[m, 1])),
                                  np.median(pick(times[m, probes])), probes) for m in fns}

    def relative(comp, cost, method):
      best = allocation.best_probes(*comp, *cost[method], max_probes=probes)
      return best, float(allocation.time_for_error(best, *comp, *cost[method])
                         / allocation.time_for_error(1, *comp, *cost[default]))
    # Each resample redraws the batches (the variance components) and, per timed setting,
    # the rounds (the costs), so that the intervals cover the timing noise too.
    boot = []
    for _ in range(resamples):
      comp = allocation.variance_components(
          est.samples[rng.integers(0, len(batches), len(batches))])
      cost = costs(lambda ts: np.asarray(ts)[rng.integers(0, rounds, rounds)])
      boot.append((comp, {m: relative(comp, cost, m) for m in fns}))
    point = costs()
    print(f"# {workdir} at step {step}: tr(H) = {est.value:.4g} +- {est.stderr:.2g} "
          f"({len(batches)} batches of {batch_size} x {probes} probes); s_b^2 = {vb:.3g} "
          f"{_interval([b[0][0] for b in boot])}, s_p^2 = {vp:.3g} "
          f"{_interval([b[0][1] for b in boot])}")
    head = ["method", "c_b (ms)", "c_p (ms)", f"best probes per batch (1-{probes})",
            f"time to equal error, vs 1 probe {default}"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for method, (cb, cp) in point.items():
      best, rel = relative((vb, vp), point, method)
      boots = np.array([b[1][method] for b in boot])
      print(f"| {method} | {1e3 * cb:.2f} | {1e3 * cp:.2f} | {best} {_interval(boots[:, 0])} | "
            f"{rel:.2f} {_interval(boots[:, 1])} |", flush=True)


def main(argv):
  del argv
  print(f"# {jax.device_count()} x {jax.devices()[0].device_kind}")
  if _WORKDIRS.value:
    table_allocation(_WORKDIRS.value, _NUM_BATCHES.value,
                     _BATCH.value if _BATCH.present else None, _PROBES.value, _REPEATS.value,
                     _ROUNDS.value)
    return
  print(f"# batch {_BATCH.value}")
  table_hvp(_PRESETS.value, _BATCH.value, _REPEATS.value, _ROUNDS.value)
  if _ESTIMATORS.value:
    print()
    table_estimators(_SEEDS.value)


if __name__ == "__main__":
  app.run(main)
