"""Old home of the attack-set builder; it is :mod:`sklearn_advdet.deep.attack_sets`.

Kept so that ``from sklearn_advdet.deep.detection import ...`` keeps working.
"""

from .attack_sets import (NOISE_ATTACKS, AttackSpec, build_detection_set,  # noqa: F401
                          parse_attacks, run_attack)

__all__ = ["AttackSpec", "NOISE_ATTACKS", "build_detection_set", "parse_attacks"]
