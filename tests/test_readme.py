"""The README's Python example runs as printed (with fewer epochs and a temporary folder)."""
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_python_example_runs(tmp_path):
    code = README.read_text().split("```python")[1].split("```")[0]
    assert 'epochs=50' in code and 'root="runs"' in code
    code = code.replace("epochs=50", "epochs=2").replace('root="runs"', f'root="{tmp_path / "runs"}"')
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)
    assert scope["r"].config == scope["cfg"] and abs(scope["loss_on_test"] - scope["r"].result["final"]["test_loss"]) < 1e-6
