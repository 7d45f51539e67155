"""The documented commands and the scripts that run them agree (README, docs/benchmarks.md)."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def documented_bench_commands(path: Path) -> list[str]:
    """Every `moec bench` line of the file's shell blocks, with `$B` spelled out as the template."""
    text = path.read_text()
    lines = [
        line.split("#")[0].strip()
        for line in re.findall(r"^.*moec bench .*$", text, flags=re.M)
        if line.lstrip().startswith(".venv/bin/moec bench")
    ]
    return [line.replace("$B", "../shared/data/brain_template_mni152_1mm.nii.gz") for line in lines]


def test_the_benchmark_script_runs_the_documented_bench_command_and_every_benchmark():
    out = subprocess.run(
        ["bash", "scripts/benchmarks.sh", "--dry-run"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out[0] in documented_bench_commands(ROOT / "README.md")
    assert out[0] in documented_bench_commands(ROOT / "docs" / "benchmarks.md")
    # One command regenerates every table of docs/benchmarks.md: each script under benchmarks/ runs.
    scripts = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py") if p.name != "common.py")
    assert scripts == sorted({name for line in out for name in re.findall(r"benchmarks/(\w+\.py)", line)})
    # The entropy-coder comparison reads the file the script writes just before it.
    written = re.search(r"moec compress \S+ -o (\S+)", "\n".join(out)).group(1)
    assert any(line.endswith(f"entropy_coders.py {written}") for line in out)


def test_the_benchmark_script_refuses_a_missing_volume_before_setting_anything_up(tmp_path):
    missing = tmp_path / "no_such_volume.nii.gz"
    run = subprocess.run(["bash", "scripts/benchmarks.sh", str(missing)], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 2
    assert f"no volume at {missing}" in run.stderr
    assert "setup:" not in run.stdout + run.stderr
