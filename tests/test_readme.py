"""The README never lies: its snippet runs, its commands name real things."""

import re
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _block_after(marker):
    m = re.search(re.escape(marker) + r"\s*```bash\n(.*?)```", README, re.S)
    assert m, f"README.md has no bash block after {marker}"
    return m.group(1)


def test_commands_come_first_and_match_ci():
    demo = _block_after("<!-- demo-command -->")
    tests = _block_after("<!-- test-command -->")
    assert "advdet demo" in demo and "pip install" in demo
    assert "pytest" in tests and '".[tests]"' in tests
    # the two commands precede any other code block
    first_block = README.index("```")
    assert first_block > README.index("<!-- demo-command -->")
    ci = (ROOT / ".ci" / "run").read_text()
    assert "<!-- test-command -->" in ci  # CI runs exactly the README's command
    setup = (ROOT / "setup.cfg").read_text()
    assert "advdet = sklearn_advdet.cli:main" in setup


def test_python_snippet_runs():
    m = re.search(r"## From your own code.*?```python\n(.*?)```", README, re.S)
    assert m
    code = m.group(1).replace("random_state=0)", "random_state=0, max_epochs=2)")
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    p = namespace["p_adversarial"]
    assert p.shape == (5,) and np.all((p >= 0) & (p <= 1))
