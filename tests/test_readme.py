"""The README's set-up commands are the ones CI runs."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    ci_lines = [l for l in (ROOT / ".ci" / "run").read_text().splitlines()
                if l.strip() and not l.startswith("#") and "pytest" in l]
    assert len(ci_lines) == 1
    assert ci_lines[0].strip() in (ROOT / "README.md").read_text()


def test_readme_main_job_runs_on_the_embedded_model():
    readme = (ROOT / "README.md").read_text()
    main_job = [l for l in readme.splitlines() if "attrscope compare" in l and "pip install" in l]
    assert len(main_job) == 1, main_job
    assert "--model" not in main_job[0]  # no model: the embedded offline one
