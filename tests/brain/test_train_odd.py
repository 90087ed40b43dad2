"""brain-train --resume of a damaged run folder: a phase with files but no state is refused, not retrained."""

from __future__ import annotations

import pytest

from medseg.brain.models import BrainNetConfig
from medseg.brain.train import BrainTrainConfig, _preflight, plan_stages
from medseg.errors import InputError


def test_resume_refuses_a_phase_whose_state_is_gone_instead_of_retraining_it(tmp_path):
    cfg = BrainTrainConfig(net=BrainNetConfig(arch="twopath", local_channels=4, global_channels=6))
    stages = plan_stages(tmp_path, cfg, None)
    for stage in stages:
        (tmp_path / stage.name).mkdir()
        for name in ("best.safetensors", "last.safetensors", "history.json", "state.pt"):
            (tmp_path / stage.name / name).write_bytes(b"x")
    _preflight(tmp_path, stages, resume=True, overwrite=False)  # whole: fine
    (tmp_path / stages[0].name / "state.pt").unlink()
    with pytest.raises(InputError, match="holds training files but not state.pt") as err:
        _preflight(tmp_path, stages, resume=True, overwrite=False)
    assert err.value.path == tmp_path / stages[0].name
    for name in ("best.safetensors", "last.safetensors", "history.json"):  # a phase never begun: fine
        (tmp_path / stages[0].name / name).unlink()
    _preflight(tmp_path, stages, resume=True, overwrite=False)
