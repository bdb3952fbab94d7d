"""Above both sides: the reproduction of the papers, the demo, benchmark and
evaluation runs, and the guarded model -- code that holds a torch model and a
fitted estimator at once.  Imports the core and :mod:`sklearn_advdet.deep`;
neither imports it.
"""
