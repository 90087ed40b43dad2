from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner
from medseg_cli.main import MedsegGroup, cli
from medseg_cli.options import finish, json_option, output_options

from medseg import __version__
from medseg.errors import InputError, OutputExistsError
from medseg.results import ItemResult, RunResult


def test_help_does_not_import_heavy_libraries():
    code = (
        "import sys; from medseg_cli.main import cli; "
        "cli.main(['--help'], standalone_mode=False); "
        "[cli.get_command(None, n) for n in cli.list_commands(None)]; "
        "heavy = [m for m in ('torch', 'openslide', 'SimpleITK', 'monai', 'skimage') if m in sys.modules]; "
        "print('HEAVY=' + ','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "HEAVY="


def test_version_and_python_m():
    assert __version__ in CliRunner().invoke(cli, ["--version"]).output
    out = subprocess.run(
        [sys.executable, "-m", "medseg", "--version"], capture_output=True, text=True, check=True
    )
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


def test_usage_error_is_one_line_exit_2():
    out = subprocess.run([sys.executable, "-m", "medseg", "ct-convert"], capture_output=True, text=True)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medseg: error: ") and "--help" in lines[0]


def test_usage_error_with_json_prints_a_json_document():
    out = subprocess.run(
        [sys.executable, "-m", "medseg", "ct-convert", "--json"], capture_output=True, text=True
    )
    assert out.returncode == 2
    assert json.loads(out.stdout)["exit_code"] == 2


def _group() -> click.Group:
    """A group with the real error handling and a few commands that fail in known ways."""

    @click.group(cls=MedsegGroup)
    def group():
        pass

    @group.command("bad-input", epilog="Examples: none")
    @output_options
    def bad_input(quiet, as_json):
        raise InputError("not a CT series", path="scan/")

    @group.command("exists", epilog="Examples: none")
    @json_option
    def exists(as_json):
        raise OutputExistsError("output exists (use --overwrite to replace it)", path="out/")

    @group.command("denied", epilog="Examples: none")
    @json_option
    def denied(as_json):
        open("/proc/medseg-cannot-write-here", "w")

    @group.command("bug", epilog="Examples: none")
    @json_option
    def bug(as_json):
        raise KeyError("oops")

    @group.command("partial", epilog="Examples: none")
    @json_option
    def partial(as_json):
        finish(
            RunResult("partial", [ItemResult("a"), ItemResult("b", "failed", "corrupt file")]),
            as_json=as_json,
            human=lambda r: f"{r.counts['ok']} ok",
        )

    return group


@pytest.mark.parametrize(
    ("command", "code", "text"),
    [
        ("bad-input", 2, "scan/: not a CT series"),
        ("exists", 3, "out/: output exists"),
        ("denied", 2, "/proc/medseg-cannot-write-here"),
        ("bug", 1, "internal error: KeyError"),
    ],
)
def test_errors_are_one_line_and_json_always_prints_a_document(command, code, text):
    runner = CliRunner()
    r = runner.invoke(_group(), [command])
    assert r.exit_code == code
    assert len(r.stderr.strip().splitlines()) == 1 and text in r.stderr and "Traceback" not in r.stderr
    r = runner.invoke(_group(), [command, "--json"])
    assert r.exit_code == code
    doc = json.loads(r.stdout)
    assert doc["exit_code"] == code and text.split(": ")[-1].split()[0] in doc["error"]


def test_partial_batch_failure_exit_5_names_the_failure():
    r = CliRunner().invoke(_group(), ["partial", "--json"])
    assert r.exit_code == 5
    doc = json.loads(r.stdout)
    assert doc["counts"] == {"ok": 1, "failed": 1, "skipped": 0}
    assert [i["name"] for i in doc["items"] if i["status"] == "failed"] == ["b"]
    r = CliRunner().invoke(_group(), ["partial"])
    assert r.exit_code == 5 and "1 ok" in r.stdout and "b: corrupt file" in r.stderr


def test_debug_shows_a_traceback(tmp_path):
    r = CliRunner().invoke(_group(), ["bad-input", "--debug", "--json"])
    assert (
        "Traceback (most recent call last)" in r.stderr and "InputError: scan/: not a CT series" in r.stderr
    )
    assert r.exit_code == 2 and json.loads(r.stdout)["exit_code"] == 2  # the contract holds with --debug
    (tmp_path / "empty").mkdir()
    args = [
        "ct-convert",
        str(tmp_path / "empty"),
        "--from",
        "B50f",
        "--to",
        "B30f",
        "--out",
        str(tmp_path / "o"),
    ]
    plain = subprocess.run([sys.executable, "-m", "medseg", *args], capture_output=True, text=True)
    debug = subprocess.run([sys.executable, "-m", "medseg", "--debug", *args], capture_output=True, text=True)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert debug.returncode == 2 and "Traceback (most recent call last)" in debug.stderr
