"""Rounding-error bounds shared by the exact medoid and the exact k-NN search."""

import numpy as np


def safe_gamma(m, dtype):
    """Three times Higham's ``gamma_m = m u / (1 - m u)`` in ``dtype``'s precision.

    ``gamma_m`` bounds the relative error of a sum of ``m`` terms, or of a dot
    product of length ``m``, whatever the summation order (blocked BLAS
    kernels included).  The factor three leaves room for the other roundings
    that the callers fold into the same bound: the stored squared norms that
    enter their GEMMs, inputs cast to the working precision, second-order
    terms and the floating-point evaluation of the bound itself.
    """
    u = float(np.finfo(dtype).eps) / 2
    return 3.0 * m * u / (1.0 - m * u)
