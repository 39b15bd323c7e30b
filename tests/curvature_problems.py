"""Small problems with exact Hessians, shared by the curvature tests."""
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np


def flat_hessian(loss_fn, params):
  """The dense Hessian of ``loss_fn`` at ``params`` over the flattened parameters, with the
  flat vector and its ``unravel``."""
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  return np.asarray(jax.jit(jax.hessian(lambda x: loss_fn(unravel(x))))(flat)), flat, unravel


def population_problem(n=512, d=4, h=5, c=3):
  """A tanh MLP and a finite 'population' of n examples: its mean-loss Hessian is exact."""
  k = jax.random.split(jax.random.key(7), 5)
  params = {"w1": jax.random.normal(k[0], (d, h)), "b1": jax.random.normal(k[1], (h,)),
            "w2": jax.random.normal(k[2], (h, c))}
  x = jax.random.normal(k[3], (n, d)) * jnp.exp(0.5 * jax.random.normal(k[4], (n, 1)))
  y = jax.random.randint(jax.random.fold_in(k[3], 1), (n,), 0, c)

  def loss_fn(p, batch):
    lg = jnp.tanh(batch["x"] @ p["w1"] + p["b1"]) @ p["w2"]
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(lg), batch["y"][:, None], 1))
  return params, loss_fn, dict(x=x, y=y)
