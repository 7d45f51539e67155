"""A default lives in one place (codec.settings): changing it there changes the command line's
help and behaviour, the widget's form and the file's header alike."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from codec import settings
from codec.cli import build_parser, main
from codec.format import moecfile
from codec.io.load import save_volume
from codec.io.phantom import make_phantom

from .conftest import wait_for


@dataclass(frozen=True)
class SixExperts(settings.Settings):
    experts: int = 6
    ratio: float = 10.0


def test_changing_the_default_number_of_experts_is_one_edit(monkeypatch, make_napari_viewer, qtbot, tmp_path, capsys):
    monkeypatch.setattr(settings, "Settings", SixExperts)
    compress = build_parser()._subparsers._group_actions[0].choices["compress"]
    assert "number of experts (default 6" in compress.format_help()
    assert "(default 10)" in compress.format_help()

    volume, _ = make_phantom((32, 28, 16))
    source = tmp_path / "phantom.nii.gz"
    save_volume(volume, source)
    out = tmp_path / "cli.moec"
    assert main(["compress", str(source), "-o", str(out), "--steps", "20", "--batch", "1024", "--quiet"]) == 0
    assert moecfile.read(out).meta.model.experts == 6
    assert moecfile.read(out).ratio == pytest.approx(10.0, rel=0.06)

    from moec_napari.reader import get_reader
    from moec_napari.widget import MoecWidget

    viewer = make_napari_viewer()
    for data, kwargs, kind in get_reader(str(source))(str(source)):
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    widget = MoecWidget(viewer)
    assert widget.form.experts.value() == 6 and widget.form.ratio.value() == 10.0
    widget.form.steps.setValue(20)
    widget.train()
    wait_for(widget, qtbot)
    path = tmp_path / "plugin.moec"
    widget.save_moec(path)
    assert moecfile.read(path).meta.model.experts == 6


def test_every_choice_list_comes_from_the_settings_module():
    compress = build_parser()._subparsers._group_actions[0].choices["compress"]
    options = {a.dest: a for a in compress._actions}
    assert tuple(options["partition"].choices) == settings.PARTITIONS
    assert tuple(options["encoder"].choices) == settings.ENCODERS
    assert tuple(options["router_input"].choices) == settings.ROUTER_INPUTS
    assert tuple(options["granularity"].choices) == settings.GRANULARITIES
    assert tuple(options["device"].choices) == settings.DEVICES
    assert options["roi_weight"].default == settings.TrainConfig().roi_weight == settings.ROI_WEIGHT


def test_the_widget_and_the_checks_read_one_table_of_ranges(qtbot, monkeypatch):
    from moec_napari.form import QT_INT_MAX, SettingsForm

    monkeypatch.setitem(settings.RANGES, "experts", (1, 12))
    monkeypatch.setitem(settings.RANGES, "roi_weight", (1.0, 50.0))
    form = SettingsForm()
    qtbot.addWidget(form)
    assert (form.experts.minimum(), form.experts.maximum()) == (0, 12)  # 0: auto
    assert form.roi_weight.maximum() == 50.0
    assert form.seed.maximum() == min(settings.RANGES["seed"][1], QT_INT_MAX)
    with pytest.raises(ValueError, match="roi_weight must be a number from 1 to 50"):
        settings.TrainConfig(roi_weight=60.0)
    from codec.model.config import ModelConfig

    with pytest.raises(ValueError, match="experts must be 1..12"):
        ModelConfig(experts=13)
