"""README.md stays true: its Python examples run (at one short epoch)."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_notebook_example_runs(tmp_path, monkeypatch):
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert "epochs=12" in code and "epochs=48" in code
    code = re.sub(r"epochs=\d+", "epochs=1", code)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert os.path.getsize(tmp_path / "student.tflite") > 1000
    assert (tmp_path / "student.keras").exists()
    # The other Python blocks (feature distillation, the teacher cache) run in
    # the same session, as a reader would paste them: a few steps each.
    # (The one-line augmentation block is exercised by tests/test_augment.py.)
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, re.S)[1:]
              if "epochs=12" in b]
    assert len(blocks) == 2
    for block in blocks:
        block = block.replace("epochs=12", "epochs=1, steps_per_epoch=3")
        exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["d"].features and namespace["report"]["status"] == "built"


def test_readme_opens_with_the_two_commands():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    assert "pip install . && .venv/bin/keras-kd" in blocks[0]
    assert 'pip install ".[test]" && .venv/bin/python -m pytest -n auto tests' in blocks[1]
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
        assert blocks[1].strip() in f.read()  # CI runs the README's test command
