"""The transformer's multi-axis projections, and how every projection computes its product
(the modules' dot_general): the same numbers as lax.dot_general, in the form XLA:CPU runs
fastest (benchmarks/README.md measures each choice)."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from bigjax import platform


class Projection(nn.Module):
    """x's trailing axes (in_shape) -> out_shape through one kernel of shape in_shape +
    out_shape, created whole with its logical axes (nn.DenseGeneral creates it flat and
    reshapes it, which a sharding constraint on the boxed kernel cannot follow). Initialised
    like nn.Dense / nn.DenseGeneral: LeCun normal over the inputs; the bias, if any, zeros."""

    in_shape: tuple
    out_shape: tuple
    axes: tuple  # logical axis names of the kernel, one per dimension
    dtype: jnp.dtype
    param_dtype: jnp.dtype
    use_bias: bool = False

    @nn.compact
    def __call__(self, x=None):
        """The projection of x; with no x, the kernel itself in the compute dtype."""
        ins, outs = len(self.in_shape), len(self.out_shape)
        init = nn.initializers.lecun_normal(in_axis=tuple(range(ins)),
                                            out_axis=tuple(range(ins, ins + outs)))
        kernel = self.param('kernel', nn.with_logical_partitioning(init, self.axes),
                            (*self.in_shape, *self.out_shape), self.param_dtype)
        if x is None:
            return kernel.astype(self.dtype)
        x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
        contract = (tuple(range(x.ndim - ins, x.ndim)), tuple(range(ins)))
        y = projection(x, kernel, (contract, ((), ())))
        if not self.use_bias:
            return y
        bias = self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros,
                                                               self.axes[ins:]),
                          self.out_shape, self.param_dtype)
        return y + bias.astype(self.dtype)


def projection(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    """The projections' dot_general (the input's trailing axes against the kernel's leading
    ones) as one 2-D product: XLA:CPU then keeps the gradients in place instead of transposing
    them. On CPU a layer with fewer outputs than inputs takes its weight gradient through
    _narrowing_matmul. (Together ~6 % of the CPU LM step, benchmarks/README.md.)"""
    (lhs_axes, rhs_axes), (lhs_batch, _) = dimension_numbers
    count = len(lhs_axes)
    if (lhs_batch or tuple(lhs_axes) != tuple(range(lhs.ndim - count, lhs.ndim))
            or tuple(rhs_axes) != tuple(range(count))):
        return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                                   preferred_element_type=preferred_element_type)
    inner = math.prod(lhs.shape[lhs.ndim - count:])
    x_NI, w_IO = lhs.reshape(-1, inner), rhs.reshape(inner, -1)
    if (w_IO.shape[1] < inner and platform.target() == 'cpu' and precision is None
            and preferred_element_type is None):
        y_NO = _narrowing_matmul(x_NI, w_IO)
    else:
        y_NO = jnp.matmul(x_NI, w_IO, precision=precision,
                          preferred_element_type=preferred_element_type)
    return y_NO.reshape(*lhs.shape[:lhs.ndim - count], *rhs.shape[count:])


@jax.custom_vjp
def _narrowing_matmul(x_NI, w_IO):
    """x @ w whose weight gradient is computed as (g^T x)^T: XLA:CPU's product runs ~1.4x
    faster with the wide dimension as its output's columns. The barrier keeps XLA from
    rewriting it back to x^T g."""
    return x_NI @ w_IO


def _narrowing_forward(x_NI, w_IO):
    return x_NI @ w_IO, (x_NI, w_IO)


def _narrowing_backward(residuals, g_NO):
    x_NI, w_IO = residuals
    return g_NO @ w_IO.T, jax.lax.optimization_barrier(g_NO.T @ x_NI).T


_narrowing_matmul.defvjp(_narrowing_forward, _narrowing_backward)
