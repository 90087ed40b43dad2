"""Whole-slice fully convolutional inference == patch-by-patch centre-pixel prediction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg.brain.models import ARCHS, BrainNetConfig, build_model
from medseg.brain.preprocess import PreprocessConfig, preprocess
from medseg.brain.sampling import TrainingCase, extract_patches
from medseg.brain.segment import make_predictor, predict_patches, predict_volume
from medseg.synthetic.brain import MODALITIES, BrainPhantomConfig, make_brain_case


@pytest.fixture(scope="module")
def stack() -> np.ndarray:
    case = make_brain_case(77, BrainPhantomConfig(shape=(6, 48, 44)))
    norm, _ = preprocess(
        np.stack([case.images[m] for m in MODALITIES]), case.spacing, PreprocessConfig(n4=False)
    )
    return norm


@pytest.mark.parametrize("arch", ARCHS)
def test_fcn_equals_patch_by_patch(arch, stack):
    torch.manual_seed(1)
    model = build_model(config=BrainNetConfig(arch=arch, local_channels=6, global_channels=10)).eval()
    scores = make_predictor(model, device="cpu", postprocess="float")
    assert scores.channels_last and scores.amp_name == "fp32"
    logits = predict_volume(scores, stack, arch=arch, batch_size=4)
    assert logits.shape == (5, *stack.shape[1:]) and logits.dtype == np.float32
    rng = np.random.default_rng(0)
    n = 150
    coords = np.stack([rng.integers(0, s, n) for s in stack.shape[1:]], axis=1)
    coords[:4] = [[0, 0, 0], [5, 47, 43], [2, 0, 43], [3, 47, 0]]  # borders: zero padding matches too
    patch_logits = predict_patches(scores, stack, coords, arch=arch, batch_size=64)
    fcn = logits[:, coords[:, 0], coords[:, 1], coords[:, 2]].T
    np.testing.assert_allclose(fcn, patch_logits, atol=1e-4, rtol=1e-4)
    classes = make_predictor(model, device="cpu", postprocess="argmax")
    labels = predict_volume(classes, stack, arch=arch, batch_size=3)
    assert labels.shape == stack.shape[1:] and labels.dtype == np.uint8
    assert np.array_equal(labels[coords[:, 0], coords[:, 1], coords[:, 2]], patch_logits.argmax(1))
    assert np.array_equal(
        predict_patches(classes, stack, coords[:10], arch=arch), patch_logits[:10].argmax(1)
    )


def test_channels_last_equals_contiguous(stack):
    """The predictor runs the brain nets channels_last on CPU: same numbers as plain NCHW torch."""
    torch.manual_seed(5)
    model = build_model(
        config=BrainNetConfig(arch="input-cascade", local_channels=6, global_channels=10)
    ).eval()
    x = torch.from_numpy(
        np.pad(stack[:, :2], ((0, 0), (0, 0), (32, 32), (32, 32))).transpose(1, 0, 2, 3).copy()
    )
    with torch.inference_mode():
        plain = model(x).numpy()
    fcn = predict_volume(
        make_predictor(model, device="cpu", postprocess="float"), stack[:, :2], arch="input-cascade"
    )
    np.testing.assert_allclose(fcn.transpose(1, 0, 2, 3), plain, atol=1e-5, rtol=1e-5)


def test_precomputed_first_stage_maps_equal_cascade_forward(stack):
    """Training reads windows of precomputed first-stage maps: must equal running the cascade on patches."""
    for arch in ARCHS[1:]:
        torch.manual_seed(2)
        model = build_model(
            config=BrainNetConfig(arch=arch, local_channels=4, global_channels=6, dropout=0)
        ).eval()
        labels = np.zeros(stack.shape[1:], np.uint8)
        case = TrainingCase.build("c", stack, labels, np.ones_like(labels, bool))
        case.set_first_stage(
            make_predictor(model.first, device="cpu", postprocess="softmax"), arch, batch_size=4
        )
        coords = np.array([[0, 0, 0], [3, 20, 30], [5, 47, 43]])
        x, p, _ = case.batch(coords, probs_size=model.probs_size)
        with torch.no_grad():
            via_maps = model.combine(torch.from_numpy(x), torch.from_numpy(p))
            direct = model(torch.from_numpy(extract_patches(stack, coords, arch=arch)))
        torch.testing.assert_close(via_maps, direct, atol=1e-4, rtol=1e-4)


def test_brain_bounding_box_crop_is_exact():
    from medseg.brain.io import Geometry
    from medseg.brain.segment import brain_boxes, segment_array

    case = make_brain_case(78)
    raw = np.stack([case.images[m] for m in MODALITIES])
    prep = PreprocessConfig(n4=False)
    norm, mask = preprocess(raw, case.spacing, prep)
    torch.manual_seed(3)
    model = build_model(config=BrainNetConfig(arch="mf-cascade", local_channels=4, global_channels=6)).eval()
    predictor = make_predictor(model, device="cpu")
    full = predict_volume(predictor, norm, arch="mf-cascade")
    geo = Geometry(
        shape=mask.shape, spacing=case.spacing, origin=(0.0, 0.0, 0.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)
    )
    for batch_size in (8, 3):  # one box per batch of slices, tighter towards the brain's ends
        seg = segment_array(
            predictor, raw, geo, arch="mf-cascade", prep=prep, post=False, batch_size=batch_size
        )
        assert np.array_equal(seg[mask], full[mask]) and not seg[~mask].any()
    boxes = brain_boxes(mask, 3)
    assert sum(int(np.prod([s.stop - s.start for s in b])) for b in boxes) < 0.8 * mask.size
    covered = np.zeros_like(mask)
    for b in boxes:
        covered[b] = True
    assert covered[mask].all()  # every brain voxel is predicted


@pytest.mark.cuda
def test_cuda_matches_cpu(stack):
    torch.manual_seed(4)
    model = build_model(
        config=BrainNetConfig(arch="input-cascade", local_channels=8, global_channels=16)
    ).eval()
    cpu = predict_volume(
        make_predictor(model, device="cpu", postprocess="float"), stack, arch="input-cascade"
    )
    gpu = predict_volume(
        make_predictor(model, device="cuda", amp="off", postprocess="float"), stack, arch="input-cascade"
    )
    np.testing.assert_allclose(gpu, cpu, atol=2e-3, rtol=2e-3)
