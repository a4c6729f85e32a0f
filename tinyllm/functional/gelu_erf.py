"""BERT's GELU, the exact one: y = x Φ(x), with Φ the standard normal CDF, Φ(x) = ½ (1 + erf(x/√2)).

GPT-2 uses a tanh approximation of it (``dense.gelu``); BERT (Hugging Face's ``"gelu"``) uses this
form. The two differ by up to about 5e-4, far above float32's rounding, so importing BERT weights
needs this one.

Derivative (product rule, with Φ' = φ, the normal density φ(x) = e^(-x²/2) / √(2π)):

    dy/dx = Φ(x) + x φ(x)

NumPy has no vectorised erf, so ``erfc`` below evaluates Numerical Recipes' Chebyshev approximation
(Press et al. 2007, §6.2.2): for z ≥ 0,

    erfc(z) = t · exp(-z² + Σ_k c_k T_k(4t - 2)),   t = 2 / (2 + z)

whose 28 coefficients give erfc to about 1e-16 (measured against ``math.erfc``: 5.6e-16 absolute on
[0, 10]), and erfc(-z) = 2 - erfc(z). A Chebyshev series can be cut where its coefficients fall
below the precision needed: float32 inputs use the first 16 terms (1e-10), float64 all 28. The sum
is Clenshaw's recurrence: d_j = y d_{j+1} - d_{j+2} + c_j, run from the last coefficient down.
"""

from __future__ import annotations

import math

from .. import backend
from ..autograd import Tensor, fused_op

_ERFC_CHEBYSHEV = (
    -1.3026537197817094, 6.4196979235649026e-1, 1.9476473204185836e-2, -9.561514786808631e-3,
    -9.46595344482036e-4, 3.66839497852761e-4, 4.2523324806907e-5, -2.0278578112534e-5,
    -1.624290004647e-6,
    1.303655835580e-6, 1.5626441722e-8, -8.5238095915e-8, 6.529054439e-9, 5.059343495e-9,
    -9.91364156e-10,
    -2.27365122e-10, 9.6467911e-11, 2.394038e-12, -6.886027e-12, 8.94487e-13, 3.13092e-13,
    -1.12708e-13, 3.81e-16, 7.106e-15, -1.523e-15, -9.4e-17, 1.21e-16, -2.8e-17,
)
_TERMS = {4: 16, 8: 28}          # float32 / float64: how many Chebyshev terms their precision needs


def erfc(x):
    """The complementary error function 1 - erf(x) of a raw array, elementwise
    (see the module doc)."""
    xp = backend.xp
    z = xp.abs(x)
    t = 2.0 / (2.0 + z)
    y = 4.0 * t - 2.0
    d, dd, spare = xp.zeros_like(z), xp.zeros_like(z), xp.empty_like(z)
    for c in reversed(_ERFC_CHEBYSHEV[1:_TERMS.get(x.dtype.itemsize, 28)]):
        # Clenshaw: d_j = y d_{j+1} - d_{j+2} + c_j,
        xp.multiply(y, d, out=spare)
        spare -= dd                                            # in three buffers that take turns
        spare += c
        d, dd, spare = spare, d, dd
    exponent = 0.5 * (_ERFC_CHEBYSHEV[0] + y * d) - dd - z * z
    result = t * xp.exp(exponent)
    return xp.where(x >= 0, result, 2.0 - result).astype(x.dtype, copy=False)


def normal_cdf(x):
    """Φ(x) = ½ (1 + erf(x/√2)) = ½ erfc(-x/√2), for a raw array."""
    return 0.5 * erfc(-x * (1.0 / math.sqrt(2.0)))


def gelu_erf_forward(x):
    """y = x Φ(x), elementwise."""
    cdf = normal_cdf(x)
    return x * cdf, (x, cdf)


def gelu_erf_backward(dy, cache, needs=(True,)):
    x, cdf = cache
    density = backend.xp.exp(-0.5 * x * x) * (1.0 / math.sqrt(2.0 * math.pi))   # φ(x)
    return (dy * (cdf + x * density),)                       # undoes y = x Φ(x): dy/dx = Φ + x φ


def gelu_erf(x: Tensor) -> Tensor:
    """BERT's GELU (``gelu_erf_forward``); saves x and Φ(x)."""
    y, cache = gelu_erf_forward(x.data)
    return fused_op(gelu_erf_backward, y, cache, x)
