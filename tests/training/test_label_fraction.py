"""Training on a fraction of the labels, on the real Banepa tiles."""

from open_buildings.training import batches
from open_buildings.training.label_fraction import keep_fraction
from open_buildings.training.loop import train


def _scenes(cfg):
    return batches.load_areas(cfg, cfg.train, labelled=True)


def test_a_fixed_share_of_the_cells_keeps_its_labels(config_factory) -> None:
    cfg = config_factory()
    full = _scenes(cfg)
    whole = sum(int(s.core.sum()) for s in full)
    quarter = _scenes(cfg)
    kept = keep_fraction(quarter, 0.25)
    assert kept >= 1
    share = sum(int(s.core.sum()) for s in quarter) / whole
    assert 0.05 < share < 0.6, share  # cells differ in how much of the cores they cover
    for before, after in zip(full, quarter):
        assert not (after.core & ~before.core).any()  # only ever less
        assert (after.rgb == before.rgb).all()  # the imagery stays, as context
    again = _scenes(cfg)
    keep_fraction(again, 0.25)
    assert all((a.core == b.core).all() for a, b in zip(again, quarter))  # same cells each time
    more = _scenes(cfg)
    keep_fraction(more, 0.5)
    assert sum(int(s.core.sum()) for s in more) > share * whole


def test_ob_train_runs_on_a_label_fraction(config_factory) -> None:
    result = train(config_factory("steps=2", "label_fraction=0.3"), progress=False)
    assert len(result["history"]) == 2 and all(h["loss"] > 0 for h in result["history"])
