"""Sphinx configuration for sklearn_advdet (build: sphinx-build -W -b html docs docs/_build/html)."""

import os
import sys
from datetime import date

sys.path.insert(0, os.path.abspath(".."))
os.environ.setdefault("MPLBACKEND", "Agg")

import sklearn_advdet  # noqa: E402

project = "sklearn_advdet"
author = "the sklearn_advdet developers"
copyright = f"{date.today().year}, {author}"
release = sklearn_advdet.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.intersphinx",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]

autosummary_generate = True
# the metadata-routing setters and sklearn's inherited methods carry
# docstrings with references into scikit-learn's own docs
autodoc_default_options = {
    "members": True,
    "inherited-members": False,
    "exclude-members": ",".join(
        f"set_{m}_request" for m in (
            "fit", "score", "transform", "predict", "predict_proba",
            "decision_function", "inverse_transform", "partial_fit", "split",
        )
    ) + ",get_metadata_routing,score,set_output,fit_transform,get_params,set_params",
}
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
# numpydoc's validation is run by the tests on our own docstrings; here only build
numpydoc_validation_checks = set()

intersphinx_mapping = {}

sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
    "within_subsection_order": "FileNameSortKey",
    "abort_on_example_error": True,
}

templates_path = ["_templates"]
exclude_patterns = ["_build", "auto_examples/*.ipynb", "sg_execution_times.rst"]
html_theme = "alabaster"
html_static_path = []
suppress_warnings = ["config.cache"]
