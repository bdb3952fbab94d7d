"""Adversarial attacks on image classifiers that take images in [0, 1].

Every attack works on a batch of images ``(N, C, H, W)`` (any shape with the
batch first works) with values in [0, 1]; the input normalisation belongs
inside the model.  Perturbation budgets ``eps`` are L-inf bounds in the same
[0, 1] units: use :func:`eps_from_255` for the usual ``8/255`` notation.

The attacks and their defaults:

==========================  ===================================================
``fgsm``                    Goodfellow et al. 2015, one signed-gradient step.
``bim``                     Kurakin et al. 2017, ``alpha=1/255`` steps,
                            ``n_iter = floor(min(eps*255 + 4, 1.25*eps*255))``.
``pgd``                     Madry et al. 2018, uniform random start in the
                            eps-ball, 10 steps of ``2.5*eps/n_iter``.
``mifgsm``                  Dong et al. 2018, momentum on L1-normalised
                            gradients, ``decay=1``, 10 steps of ``eps/n_iter``.
``lbfgs``                   Szegedy et al. 2014, box-constrained L-BFGS
                            (scipy's L-BFGS-B) toward a random target class,
                            binary search on the constant.
``gaussian_noise``          Gaussian noise (``std=eps/2`` by default).
``sign_noise``              The NIPS 2017 toolkit's random noise: +/-eps per
                            pixel.
``iterative_target_class``  The NIPS 2017 toolkit's baseline: steps of
                            1/255 toward a fixed random target class (20, or
                            more where the budget needs them).
``cw_l2``                   Carlini & Wagner 2017, L2: tanh change of
                            variables, Adam, binary search over c; the
                            smallest-L2 adversarial found (no eps).
``deepfool``                Moosavi-Dezfooli et al. 2016, L2 or L-inf steps
                            to the nearest linearised boundary, overshoot
                            0.02 (no eps).
``apgd``                    Croce & Hein 2020, APGD-CE or -DLR, L-inf eps,
                            step halving at checkpoints, momentum 0.75.
==========================  ===================================================

Each attack returns an :class:`AttackResult` with the adversarial images and a
success mask.  Inputs are checked by :mod:`sklearn_advdet.deep._checks`: NCHW
float images in [0, 1] without NaN, labels that are classes of the model
(a ``ValueError`` otherwise), a model that returns one logits tensor.  :func:`run_attack` runs any of them by name over a whole data
set in batches on a device; :data:`ATTACKS` maps the names to the functions.

All attacks put the model in eval mode for the run and restore every
module's previous mode afterwards, switch off ``requires_grad`` on the
model's parameters for the run (only input gradients are needed) and restore
it, never modify their inputs in place, and draw their random numbers from a
``torch.Generator`` seeded from ``random_state`` (no global seeds).

Speed and bitwise reproducibility: on the CPU the model sees 4-D inputs in
the channels_last memory format (:data:`CPU_CHANNELS_LAST`), which makes
oneDNN's convolutions 13-22 % faster (CIFAR ResNet-20, batch 128; see
``benchmarks/results/bench_attacks.md``).  The values are the same, but the
convolutions round differently, so the sign of a gradient component that is
numerically zero can flip: that pixel's step goes the other way, and the
image's later steps may follow another path.  Measured against torchattacks
(contiguous input) on ResNet-20 and 1,024 CIFAR-10 test images, BIM/PGD at
8/255 with 10 steps of 2/255: 1.0 % of the pixels at least one 8-bit level
apart (MI-FGSM 0.41 %), gathered in 3.8 % (4.0 %) of the images, by 2 to 16
levels, never outside the eps-ball, and the same success on every image.
How often such a sign flips depends on the CPU (another machine's oneDNN
kernels gave 3.5 % of the pixels in 10.2 % of 128 images for BIM), so the
torchattacks cross-check asserts at most 6 % of the pixels, 20 % of the
images and 95 % agreement of the success masks (``_base.CHANNELS_LAST_TOLERANCE``).
Set ``sklearn_advdet.deep.attacks.CPU_CHANNELS_LAST = False`` for results
identical to the contiguous layout (torchattacks' images to 1e-6).
"""


# the modules, one concept each: _base (results, checks, the model's
# forward), gradient, lbfgs, noise, runner (registry and batch driver)
from ._base import AttackResult, eps_from_255
from ._base import _CHANNELS_LAST_FAILED  # noqa: F401  (tests and benchmarks)
from .apgd import apgd
from .cw import cw_l2
from .deepfool import deepfool
from .gradient import bim, fgsm, iterative_target_class, mifgsm, pgd
from .lbfgs import lbfgs
from .noise import gaussian_noise, sign_noise
from .runner import ATTACKS, run_attack

__all__ = [
    "ATTACKS",
    "CPU_CHANNELS_LAST",
    "AttackResult",
    "apgd",
    "bim",
    "cw_l2",
    "deepfool",
    "eps_from_255",
    "fgsm",
    "gaussian_noise",
    "iterative_target_class",
    "lbfgs",
    "mifgsm",
    "pgd",
    "run_attack",
    "sign_noise",
]

#: Feed 4-D CPU inputs to the model in the channels_last memory format: 13-22 %
#: faster convolutions (ResNet-20, batch 128).  The price, measured against
#: torchattacks on ResNet-20 and 1,024 CIFAR-10 test images (BIM/PGD/MI-FGSM,
#: 8/255, 10 steps of 2/255): 1.0 % / 1.0 % / 0.41 % of the pixels at least one
#: 8-bit level apart, in about 4 % of the images, success identical; the
#: cross-check test allows 2 % of the pixels, 10 % of the images, 98 % success
#: agreement.  ``False``: the input's own layout, bitwise like a plain loop.
CPU_CHANNELS_LAST = True
