"""The torch side: feature extraction, attacks, models and detection sets.

It produces the arrays that the scikit-learn side of :mod:`sklearn_advdet`
consumes.  Every module here needs PyTorch except :mod:`.store`, which reads
feature stores with numpy alone; this package file imports nothing, so that
``sklearn_advdet.deep.store`` stays usable without torch.
"""
