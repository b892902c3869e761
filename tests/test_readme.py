"""README.md stays true: its notebook example runs (at one epoch)."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_notebook_example_runs(tmp_path, monkeypatch):
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert "epochs=12" in code
    code = code.replace("epochs=12", "epochs=1")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert os.path.getsize(tmp_path / "student.tflite") > 1000
    assert (tmp_path / "student.keras").exists()


def test_readme_opens_with_the_two_commands():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    assert "pip install . && .venv/bin/keras-kd" in blocks[0]
    assert 'pip install ".[test]" && .venv/bin/python -m pytest tests' in blocks[1]
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
        assert blocks[1].strip() in f.read()  # CI runs the README's test command
