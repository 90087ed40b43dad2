from __future__ import annotations

import pytest

from medseg.errors import OutputExistsError
from medseg.io.atomic import atomic_dir, atomic_path, check_output, safe_name


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.nii.gz"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        assert tmp.name.endswith(".nii.gz") and tmp.parent == tmp_path
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_replaces_only_when_complete(tmp_path):
    target = tmp_path / "series"
    target.mkdir()
    (target / "old").write_text("old")
    with pytest.raises(OutputExistsError):
        with atomic_dir(target):
            pass
    with pytest.raises(RuntimeError), atomic_dir(target, overwrite=True) as tmp:
        (tmp / "new").write_text("new")
        raise RuntimeError("crash")
    assert (target / "old").exists() and [p.name for p in tmp_path.iterdir()] == ["series"]
    with atomic_dir(target, overwrite=True) as tmp:
        (tmp / "new").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new"]


def test_check_output(tmp_path):
    f = tmp_path / "x"
    assert check_output(f, overwrite=False) == f
    f.write_text("1")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        check_output(f, overwrite=False)
    check_output(f, overwrite=True)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("../../etc/passwd", "etc_passwd"),
        ("Thorax 1.0 B50f", "Thorax_1.0_B50f"),
        ("", "unnamed"),
        ("a/b\\c:d*e?f", "a_b_c_d_e_f"),
        ("...", "unnamed"),
        ("活检 2024/01", "活检_2024_01"),
        ("Müller\x00\n", "Müller"),
    ],
)
def test_safe_name(text, expected):
    assert safe_name(text) == expected
    assert "/" not in safe_name(text) and ".." not in safe_name(text).replace("1.0", "")


def test_outputs_get_normal_permissions(tmp_path):
    import os
    import stat

    from medseg.io.atomic import write_text

    mask = os.umask(0o022)
    try:
        f = write_text(tmp_path / "a.txt", "x")
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "x").write_text("y")
    finally:
        os.umask(mask)
    assert stat.S_IMODE(f.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755


def test_safe_name_keeps_names_of_other_scripts_apart():
    assert safe_name("活检.svs") != safe_name("病理.svs")


def test_training_out_that_is_a_file_is_refused(tmp_path):
    from medseg.engine.trainer import preflight
    from medseg.errors import InputError

    f = tmp_path / "run"
    f.write_text("x")
    with pytest.raises(InputError, match="must be a folder"):
        preflight(f, resume=False, overwrite=False)
