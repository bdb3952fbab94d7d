"""The torch side: feature extraction, attacks and models.

Everything here needs PyTorch; it produces the arrays that the scikit-learn
side of :mod:`sklearn_advdet` consumes.
"""
