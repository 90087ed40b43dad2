from __future__ import annotations

import subprocess
import sys
import time

from click.testing import CliRunner
from medseg_cli.main import cli

from medseg import __version__


def test_help_is_fast_and_does_not_import_torch():
    code = ("import sys, time; t = time.perf_counter(); from medseg_cli.main import cli; "
            "cli.main(['--help'], standalone_mode=False); "
            "[cli.get_command(None, n) for n in cli.list_commands(None)]; "
            "assert 'torch' not in sys.modules and 'openslide' not in sys.modules, 'heavy import'; "
            "print(time.perf_counter() - t)")
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert time.perf_counter() - t0 < 3.0  # generous for loaded CI machines; typically ~0.1 s
    assert float(out.stdout.strip().splitlines()[-1]) < 1.0


def test_version_and_python_m():
    assert __version__ in CliRunner().invoke(cli, ["--version"]).output
    out = subprocess.run([sys.executable, "-m", "medseg", "--version"], capture_output=True, text=True, check=True)
    assert __version__ in out.stdout


def test_every_command_has_help_with_examples():
    runner = CliRunner()
    names = cli.list_commands(None)
    assert {"ct-convert", "ct-models", "ct-train", "ct-report"} <= set(names)
    for name in names:
        result = runner.invoke(cli, [name, "--help"])
        assert result.exit_code == 0, name
        assert "Examples" in result.output, name


def test_bare_cli_package_is_not_importable(tmp_path):
    out = subprocess.run([sys.executable, "-c", "import cli"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode != 0 and "No module named 'cli'" in out.stderr


def test_usage_error_exit_code():
    result = CliRunner().invoke(cli, ["ct-convert"])
    assert result.exit_code == 2
