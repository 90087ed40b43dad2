"""The command-line contract shared by every command: help, exit codes, --device, number options."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from medseg_cli.main import cli

ROOT = click.Context(cli)
NAMES = cli.list_commands(ROOT)


def _examples(cmd: click.Command) -> list[list[str]]:
    text = (cmd.epilog or "").replace("\\\n", " ")
    lines = [line.strip().split("  #")[0] for line in text.splitlines()]
    return [shlex.split(line)[1:] for line in lines if line.startswith("medseg ")]


@pytest.mark.parametrize("name", NAMES)
def test_help_says_exit_codes_and_every_option_has_a_help_text(name: str) -> None:
    cmd = cli.get_command(ROOT, name)
    out = CliRunner().invoke(cli, [name, "--help"]).output
    assert "Exit codes:" in out and "5 some items of a batch failed" in out
    bare = [p.opts for p in cmd.params if isinstance(p, click.Option) and not p.help and not p.hidden]
    assert bare == []


@pytest.mark.parametrize("name", NAMES)
def test_every_help_example_parses(name: str) -> None:
    """Option names and values in the examples are right (files they name need not exist)."""
    examples = _examples(cli.get_command(ROOT, name))
    assert examples
    for args in examples:
        sub = cli.get_command(ROOT, args[0])
        try:
            sub.make_context(args[0], args[1:], parent=ROOT)
        except click.BadParameter as exc:
            assert "does not exist" in exc.format_message(), (args, exc.format_message())


@pytest.mark.parametrize("name", ["ct-models", "ct-import-caffe"])
def test_quiet_and_debug_everywhere(name: str) -> None:
    params = {o for p in cli.get_command(ROOT, name).params for o in p.opts}
    assert {"--quiet", "--debug", "--json"} <= params


def _device_cases(tmp: Path) -> list[list[str]]:
    empty = tmp / "empty"
    empty.mkdir()
    return [
        ["ct-train", str(empty), "--from", "B50f", "--to", "B30f", "--out", str(tmp / "o1")],
        ["brain-segment", str(empty), "--out", str(tmp / "o2")],
        ["cells-segment", str(tmp / "nope.png"), "--out", str(tmp / "o3")],
        ["slide-train", str(empty), "--out", str(tmp / "o4")],
    ]


def test_a_missing_gpu_is_refused_before_the_inputs_are_read(tmp_path: Path) -> None:
    for args in _device_cases(tmp_path):
        r = CliRunner().invoke(cli, [*args, "--device", "cuda:99", "--json"])
        assert r.exit_code == 2, args
        doc = json.loads(r.stdout)
        assert "cuda:99" in doc["error"] and doc["exit_code"] == 2, (args, doc)
        assert not any(p.name.startswith("o") for p in tmp_path.iterdir())


def test_a_device_name_that_is_no_device_is_a_usage_error(tmp_path: Path) -> None:
    args = _device_cases(tmp_path)[0]
    r = CliRunner().invoke(cli, [*args, "--device", "gpu0", "--json"])
    assert r.exit_code == 2
    assert "'gpu0' is not a device" in json.loads(r.stdout)["error"]
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["cells-train", "--synthetic", "2", "--seed", "-1"], "--seed"),
        (["cells-train", "--synthetic", "2", "--seed", "99999999999999999999"], "--seed"),
        (["cells-train", "--synthetic", "2", "--max-minutes", "1e308"], "--max-minutes"),
        (["ct-train", "{empty}", "--from", "B50f", "--to", "B30f", "--split", "nan,0.5,0.5"], "--split"),
        (
            ["ct-train", "{empty}", "--from", "B50f", "--to", "B30f", "--split", "0,0.5,0.5"],
            "training fraction",
        ),
    ],
)
def test_impossible_numbers_are_usage_errors(tmp_path: Path, args: list[str], words: str) -> None:
    (tmp_path / "empty").mkdir()
    args = [a.replace("{empty}", str(tmp_path / "empty")) for a in args]
    r = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "o"), "--json"])
    assert r.exit_code == 2, r.output
    assert words in json.loads(r.stdout)["error"]
    assert not (tmp_path / "o").exists()


def test_caffe_input_offset_must_be_finite(tmp_path: Path) -> None:
    model = tmp_path / "m.caffemodel"
    model.write_bytes(b"x")
    args = ["ct-import-caffe", str(model), "--mean", str(model), "--from", "B50f", "--to", "B30f"]
    r = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "w.safetensors"), "--input-offset", "nan"])
    assert r.exit_code == 2 and "finite" in r.stderr


@pytest.mark.parametrize("name", ["ct-models", "ct-convert", "ct-report"])
def test_a_mistyped_models_dir_is_refused_not_replaced_by_the_demo_weights(name: str, tmp_path: Path) -> None:
    args = {"ct-models": [], "ct-convert": [str(tmp_path), "--out", str(tmp_path / "o")]}.get(
        name, [str(tmp_path), "--from", "B50f", "--to", "B30f", "--out", str(tmp_path / "o")]
    )
    r = CliRunner().invoke(cli, [name, *args, "--models-dir", str(tmp_path / "modles"), "--json"])
    assert r.exit_code == 2
    assert "modles" in json.loads(r.stdout)["error"] and "does not exist" in r.stderr


def test_every_weights_file_option_leaves_a_missing_file_to_the_library_exit_4() -> None:
    """--weights, --first-weights, --init-weights, --cascade-weights: one type, so a missing file is
    'weights file not found' (exit 4) everywhere; slide-train --init-weights was a usage error (2)."""
    from medseg_cli.options import WEIGHTS_TYPE

    found = {
        (name, p.name): p.type
        for name in NAMES
        for p in cli.get_command(ROOT, name).params
        if p.name and p.name.endswith("weights")
    }
    assert ("slide-train", "init_weights") in found and ("slide-score", "cascade_weights") in found
    assert {k: t for k, t in found.items() if t is not WEIGHTS_TYPE} == {}


@pytest.mark.parametrize(
    "args",
    [
        ["cells-train", "--synthetic", "2", "--batch-size", "1000000000"],
        ["cells-train", "--synthetic", "2", "--tile", "100000"],
        ["cells-train", "--synthetic", "2", "--base-channels", "100000000"],
        ["cells-train", "--synthetic", "100000000"],
        ["brain-train", "{empty}", "--local-channels", "100000000"],
        ["slide-train", "{empty}", "--batch-size", "1000000000"],
        ["ct-train", "{empty}", "--from", "B50f", "--to", "B30f", "--batch-size", "1000000000"],
    ],
)
def test_training_sizes_no_machine_holds_are_usage_errors(tmp_path: Path, args: list[str]) -> None:
    """They were a MemoryError (internal error, exit 1) or, for --synthetic, a run that never ended."""
    (tmp_path / "empty").mkdir()
    args = [a.replace("{empty}", str(tmp_path / "empty")) for a in args]
    r = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "o"), "--json"])
    assert r.exit_code == 2 and "is not in the range" in json.loads(r.stdout)["error"]


@pytest.mark.parametrize(
    "exc",
    [
        MemoryError(
            "Unable to allocate 37.3 GiB for an array with shape (100012, 100012) and data type float32"
        ),
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
            "you tried to allocate 1280000000000 bytes. Error code 12 (Cannot allocate memory)"
        ),
    ],
)
def test_running_out_of_memory_is_said_in_words_not_an_internal_error(exc: Exception) -> None:
    from medseg_cli.main import MedsegGroup
    from medseg_cli.options import json_option

    @click.group(cls=MedsegGroup)
    def group() -> None:
        pass

    @group.command("big")
    @json_option
    def big(as_json: bool) -> None:
        raise exc

    r = CliRunner().invoke(group, ["big", "--json"])
    assert r.exit_code == 2
    error = json.loads(r.stdout)["error"]
    assert error.startswith("not enough memory (") and "--batch-size" in error and "internal" not in error
    assert len(r.stderr.strip().splitlines()) == 1


def test_cells_segment_resume_with_overwrite_is_refused_as_elsewhere(tmp_path: Path) -> None:
    image = tmp_path / "a.png"
    image.write_bytes(b"not read")
    args = ["cells-segment", str(image), "--out", str(tmp_path / "o"), "--resume", "--overwrite", "--json"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2 and "exclude each other" in json.loads(r.stdout)["error"]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("value", ["1e300", "0.001"])
def test_a_slide_mpp_no_slide_can_be_scored_at_is_a_usage_error(tmp_path: Path, value: str) -> None:
    args = ["slide-score", str(tmp_path / "s.svs"), "--out", str(tmp_path / "o"), "--slide-mpp", value]
    r = CliRunner().invoke(cli, [*args, "--json"])
    assert r.exit_code == 2
    error = json.loads(r.stdout)["error"]
    assert "--slide-mpp" in error and len(error) < 200
    assert not (tmp_path / "o").exists()


def test_a_missing_gpu_with_a_local_ray_runtime_is_refused_here(tmp_path: Path) -> None:
    args = ["slide-score", str(tmp_path / "s.svs"), "--out", str(tmp_path / "o"), "--ray", "auto"]
    r = CliRunner().invoke(cli, [*args, "--device", "cuda:99", "--json"])
    assert r.exit_code == 2 and "cuda:99" in json.loads(r.stdout)["error"]
