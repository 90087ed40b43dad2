"""Instance targets (borders / 3class / dist): construction, decoding, the head, the weights' kind."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg.cells.instances import InstanceConfig, instances_from_maps
from medseg.cells.targets import (
    OutputPost,
    adapt_head,
    foreground_probability,
    instance_loss,
    make_targets,
    normalised_distance,
    out_channels,
    target_of,
    three_class_target,
)


def _touching_squares() -> np.ndarray:
    labels = np.zeros((30, 44), np.int32)
    labels[5:25, 4:22] = 1  # 20 x 18
    labels[5:25, 22:40] = 2  # touches label 1 along column 21 | 22
    return labels


def _discs(shape=(60, 80), centres=((30, 28), (30, 50)), r=12) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    for i, (cy, cx) in enumerate(centres, start=1):
        labels[((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & (labels == 0)] = i
    return labels


def test_three_class_target_puts_boundary_between_touching_squares():
    labels = _touching_squares()
    t = three_class_target(labels)
    assert set(np.unique(t)) == {0, 1, 2}
    assert (t[10:20, 21] == 2).all() and (t[10:20, 22] == 2).all()  # both sides of the contact: 2 px
    assert (t[10:20, 20] == 1).all() and (t[10:20, 23] == 1).all()
    assert (t[5, 5:20] == 2).all() and (t[4, 5:20] == 0).all()  # outer edge: 1 px inside the cell
    assert ((t > 0) == (labels > 0)).all()  # the classes cover exactly the cells


def test_touch_weight_only_raises_the_contact_pixels():
    labels = _touching_squares()
    target, plain, _ = make_targets(labels, "3class")
    _, touched, _ = make_targets(labels, "3class", touch_weight=10.0)
    contact = np.zeros(labels.shape, bool)
    contact[5:25, 21:23] = True  # both sides of the column 21 | 22 contact
    np.testing.assert_allclose(touched[contact], plain[contact] + 10.0)
    np.testing.assert_array_equal(touched[~contact], plain[~contact])  # outer edges and interior as before
    assert (target[contact] == 2).all()


def test_distance_peaks_at_centres_and_drops_at_the_contact():
    labels = _touching_squares()
    d = normalised_distance(labels)
    assert d.max() == pytest.approx(1.0) and d[labels == 0].max() == 0
    for k in (1, 2):
        ys, xs = np.nonzero(d * (labels == k) == (d * (labels == k)).max())
        cy, cx = np.mean(ys), np.mean(xs)
        my, mx = np.mean(np.nonzero(labels == k), axis=1)
        assert abs(cy - my) <= 1.5 and abs(cx - mx) <= 1.5
    assert d[15, 21] < 0.2 and d[15, 22] < 0.2  # the shared border is a border of both


def test_make_targets_shapes_and_kinds():
    labels = _touching_squares()
    t, w, e = make_targets(labels, "borders")
    assert e is None and t[15, 21] == 0 and t[15, 10] == 1  # touching line removed
    t, w, e = make_targets(labels, "3class")
    assert e is None and (w == 1).all()  # plain CE by default (fine-tuning)
    t, w, e = make_targets(labels, "3class", max_class_weight=10)
    assert w[t == 2].min() > w[t == 0].max()  # balanced: rare boundary pixels weigh more
    t, w, e = make_targets(labels, "dist")
    assert e is not None and t[15, 21] == 1 and e.dtype == np.float32
    with pytest.raises(ValueError):
        make_targets(labels, "flows")


def _ideal_maps(labels: np.ndarray, kind: str) -> np.ndarray:
    fg = (labels > 0).astype(np.float32)
    if kind == "3class":
        t = three_class_target(labels)
        return np.stack([t == 0, t == 1, t == 2]).astype(np.float32)
    return np.stack([1 - fg, fg, normalised_distance(labels)]).astype(np.float32)


@pytest.mark.parametrize("kind", ["3class", "dist"])
def test_decoding_separates_two_touching_discs(kind):
    labels = _discs()
    assert labels.max() == 2 and (np.diff(labels[30]) != 0).sum() == 3  # bg|1|2|bg: they touch
    out = instances_from_maps(_ideal_maps(labels, kind), kind, InstanceConfig(min_size=20))
    assert out.max() == 2
    for k in (1, 2):  # each found instance is one disc, nearly whole
        ids, counts = np.unique(out[labels == k], return_counts=True)
        best = ids[np.argmax(counts)]
        iou = np.logical_and(out == best, labels == k).sum() / np.logical_or(out == best, labels == k).sum()
        assert best > 0 and iou > 0.9


def test_decoding_keeps_one_disc_whole_and_borders_is_the_old_path():
    labels = _discs(centres=((30, 40),))
    for kind in ("3class", "dist"):
        assert instances_from_maps(_ideal_maps(labels, kind), kind).max() == 1
    fg = (labels > 0).astype(np.float32)
    assert instances_from_maps(np.stack([1 - fg, fg]), "borders").max() == 1


def test_postprocess_softmax_only_over_the_class_channels():
    y = torch.randn(2, 3, 5, 5)
    out = OutputPost(2)(y)
    assert np.allclose(out[:, :2].sum(1), 1, atol=1e-5)
    assert np.allclose(out[:, 2], torch.sigmoid(y[:, 2]).numpy(), atol=1e-6)
    assert foreground_probability(out[0], "dist").shape == (5, 5)


def test_dist_loss_adds_the_distance_term_inside_cells_only():
    logits = torch.zeros(1, 3, 4, 4)
    target = torch.zeros(1, 4, 4, dtype=torch.int64)
    target[0, :2] = 1
    weight = torch.ones(1, 4, 4)
    extra = torch.full((1, 4, 4), 0.5)
    ce = instance_loss(logits, target, weight, None, "borders")
    assert instance_loss(logits, target, weight, extra, "dist").item() == pytest.approx(ce.item())
    extra[0, :2] = 1.0  # sigmoid(0) = 0.5 inside cells: L1 0.5
    assert instance_loss(logits, target, weight, extra, "dist").item() == pytest.approx(ce.item() + 0.5)


def test_adapt_head_copies_bg_and_cell_rows():
    w, b = torch.randn(2, 8, 1, 1), torch.randn(2)
    for kind in ("3class", "dist"):
        nw, nb = adapt_head(w, b, kind)
        assert nw.shape == (out_channels(kind), 8, 1, 1) and torch.equal(nw[:2], w) and torch.equal(nb[:2], b)


def test_weights_record_the_kind_and_old_weights_are_borders(tmp_path):
    from medseg.cells.model import CellModelConfig, build_model, load_model
    from medseg.cells.train import CellsTrainConfig, init_from, make_meta, with_target_head
    from medseg.engine.checkpoint import read_meta, save_weights

    assert target_of({"arch": "unet2015"}) == "borders"  # every weights file before the key
    base = CellModelConfig(arch="unet2015", base_channels=4, depth=2, batch_norm=True)
    old = tmp_path / "old.safetensors"
    save_weights(old, build_model(config=base).state_dict(), make_meta(CellsTrainConfig(model=base), {}))
    assert target_of(read_meta(old).config) == "borders"
    model_cfg = with_target_head(base, "dist")
    config = CellsTrainConfig(model=model_cfg, instance_target="dist")
    net = build_model(config=model_cfg)
    init_from(net, model_cfg, old, "dist")  # everything but the head loaded, the head adapted
    old_state = load_model(old)[0].state_dict()
    assert torch.equal(net.state_dict()["head.weight"][:2], old_state["head.weight"])
    new = tmp_path / "dist.safetensors"
    save_weights(new, net.state_dict(), make_meta(config, {}))
    assert target_of(read_meta(new).config) == "dist"
    _model, cfg, _meta = load_model(new)
    assert cfg.num_classes == 3


@pytest.mark.parametrize("kind", ["3class", "dist"])
def test_segment_follows_the_stored_kind(tmp_path, kind):
    """cells-segment's library path: the kind read from the weights, tiled maps, --save-prob in 0..1."""
    import tifffile

    from medseg.cells.batch import segment_images
    from medseg.cells.model import CellModelConfig, build_model
    from medseg.cells.segment import CellSegmenter, SegmentConfig
    from medseg.cells.train import CellsTrainConfig, make_meta, with_target_head
    from medseg.engine.checkpoint import save_weights

    cfg = with_target_head(CellModelConfig(arch="unet2015", base_channels=4, depth=2, batch_norm=True), kind)
    path = tmp_path / f"{kind}.safetensors"
    torch.manual_seed(0)
    net = build_model(config=cfg)
    save_weights(path, net.state_dict(), make_meta(CellsTrainConfig(model=cfg, instance_target=kind), {}))
    image = (np.random.default_rng(0).random((150, 170)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "a.tif", image)
    config = SegmentConfig(weights=path, device="cpu", tile=100, save_probability=True, report=False)
    seg = CellSegmenter(config)
    assert seg.target == kind
    r = seg.analyse(image.astype(np.float32))
    assert r.maps.shape == (3, 150, 170) and r.labels.shape == (150, 170)
    if kind == "dist":  # class channels sum to 1 (softmax over them only); distance in 0..1
        assert np.allclose(r.maps[:2].sum(0), 1, atol=1e-4) and not np.allclose(r.maps.sum(0), 1, atol=1e-2)
    else:
        assert np.allclose(r.maps.sum(0), 1, atol=1e-4)
    segment_images([tmp_path / "a.tif"], tmp_path / "out", config)
    prob = tifffile.imread(tmp_path / "out" / "a_prob.tif")
    assert prob.shape == (150, 170) and 0 <= prob.min() and prob.max() <= 1 + 1e-5


def test_padded_arch_nets_train_3class_and_refuse_dist():
    """The --arch nets take the 3class target (as in benchmarks/cells_archs.py --real); the output channels
    must fit the target; dist is refused for them (HED's deep-supervision loss knows classes only)."""
    from medseg.cells.archs import ArchConfig
    from medseg.cells.train import CellsTrainConfig, CellsTrainTask, prepare_sample
    from medseg.cells.weights import WeightMapConfig
    from medseg.errors import InputError

    labels = _discs(shape=(96, 96), centres=((40, 36), (40, 60)))
    image = (labels > 0).astype(np.float32)
    samples = [prepare_sample(image, labels, WeightMapConfig(), "3class", 10.0)]
    config = CellsTrainConfig(model=ArchConfig(arch="unet_se", width=4, num_classes=3), tile=64)
    config.instance_target, config.batch_size = "3class", 2
    task = CellsTrainTask(config, samples, [])
    model = task.build_model()
    batch = next(iter(task.train_batches(1, np.random.default_rng(0))))
    loss = task.train_step(model, batch, torch.device("cpu"))
    assert torch.isfinite(loss) and loss.item() > 0
    two = CellsTrainConfig(model=ArchConfig(arch="unet_se", width=4, num_classes=2), tile=64)
    two.instance_target = "3class"
    with pytest.raises(InputError, match="3 output channels"):
        CellsTrainTask(two, samples, [])
    dist = CellsTrainConfig(model=ArchConfig(arch="hed", width=4, num_classes=3), tile=64)
    dist.instance_target = "dist"
    with pytest.raises(InputError, match="borders or 3class"):
        CellsTrainTask(dist, samples, [])


def _soft_interior_maps(centres, r=11, shape=(60, 90)) -> np.ndarray:
    """3class maps as averaged nets give them: interior a smooth bump per nucleus (peak 0.97), so two
    touching nuclei's interiors meet above 0.7 at the neck but not above 0.9; boundary fills the rest
    of the cell."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    interior = np.zeros(shape, np.float32)
    for cy, cx in centres:
        d = np.hypot(yy - cy, xx - cx)
        interior = np.maximum(interior, 0.97 * np.clip(1 - (d / (1.25 * r)) ** 4, 0, 1))
    cell = np.zeros(shape, bool)
    for cy, cx in centres:
        cell |= np.hypot(yy - cy, xx - cx) <= r
    boundary = np.where(cell, np.clip(0.98 - interior, 0, 1), 0).astype(np.float32)
    return np.stack([1 - interior - boundary, interior, boundary])


def test_3class_split_separates_touching_nuclei_whose_interiors_meet():
    maps = _soft_interior_maps(((30, 34), (30, 50)))  # 16 px apart, radius 11: pressed together
    neck = maps[1][30, 42]
    assert 0.7 < neck < 0.9  # one seed at interior 0.7, two cores at 0.9
    assert instances_from_maps(maps, "3class", InstanceConfig(split_threshold=None)).max() == 1
    out = instances_from_maps(maps, "3class")  # the default splits it
    assert out.max() == 2
    assert out[30, 34] != out[30, 50] and out[30, 34] > 0 and out[30, 50] > 0


def test_3class_split_keeps_a_single_nucleus_and_ignores_a_small_second_core():
    one = _soft_interior_maps(((30, 42),))
    assert instances_from_maps(one, "3class").max() == 1
    # a second core of 9 px (< split_fraction of the seed's area) inside one seed does not split it
    maps = one.copy()
    maps[1][29:32, 51:54] = 0.95  # above 0.9, apart from the main core at 0.9, joined to it at 0.7
    assert instances_from_maps(maps, "3class", InstanceConfig(min_size=8)).max() == 1
    assert instances_from_maps(maps, "3class", InstanceConfig(min_size=8, split_fraction=0.0)).max() == 2
