"""The widget's settings form: the volume to compress, the target ratio, the experts, the time
budget, the region of interest, and the advanced settings. Every default, range and choice list
comes from codec.settings, as the command line's do; the form only turns them into Qt inputs and
back into `Settings` and `TrainConfig`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from codec import settings as choices

#: A QSpinBox holds a C int.
QT_INT_MAX = 2**31 - 1
#: The characters of a layer's name a layer box shows before it cuts the name (the list shows it whole).
LAYER_NAME_CHARS = 10


def spin(widget, name, value, tip, decimals=None, step=None, zero=False):
    """A spin box over the range codec.settings gives setting `name`, with its value, tooltip and,
    for a QDoubleSpinBox, its precision. `zero`: the box also takes 0, which means "not set"."""
    if decimals is not None:
        widget.setDecimals(decimals)
    low, high = choices.RANGES[name]
    if isinstance(widget, QSpinBox):
        high = min(high, QT_INT_MAX)
    widget.setRange(0 if zero else low, high)
    widget.setValue(value)
    if step is not None:
        widget.setSingleStep(step)
    widget.setToolTip(tip)
    return widget


def layer_combo(tip: str) -> QComboBox:
    """A box of layer names that never widens the dock: a long name is cut in the box (its list shows
    it whole), where a box sized to its longest name pushed the dock past the screen."""
    box = QComboBox()
    box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    box.setMinimumContentsLength(LAYER_NAME_CHARS)
    box.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
    box.setToolTip(tip)
    return box


class Fold(QWidget):
    """A section under a header button that folds it away and back (the header always shows).

    Unlike superqt's QCollapsible, whose animation caps the section at its size hint, this only
    shows or hides the section, so lines that wrap at a narrow dock are never cut off."""

    toggled = Signal(bool)  # expanded, when the user clicks the header

    def __init__(self, title: str, tip: str, expanded: bool = False, parent: QWidget | None = None):
        super().__init__(parent)
        self._title = title
        self._button = QPushButton()
        self._button.setStyleSheet("text-align: left; padding-left: 4px;")
        self._button.setToolTip(tip)
        self._button.clicked.connect(self._on_click)
        self._content = QWidget()
        self._content.setToolTip(tip)
        self._layout = QVBoxLayout(self._content)
        self._layout.setContentsMargins(6, 0, 0, 0)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(self._button)
        layout.addWidget(self._content)
        self._set(expanded)

    def toggleButton(self) -> QPushButton:
        return self._button

    def content(self) -> QWidget:
        return self._content

    def addWidget(self, widget: QWidget) -> None:
        self._layout.addWidget(widget)

    def isExpanded(self) -> bool:
        return not self._content.isHidden()

    def expand(self) -> None:
        self._set(True)

    def collapse(self) -> None:
        self._set(False)

    def _set(self, expanded: bool) -> None:
        self._button.setText(f"{'▾' if expanded else '▸'}  {self._title}")
        self._content.setVisible(expanded)

    def _on_click(self) -> None:
        self._set(not self.isExpanded())
        self.toggled.emit(self.isExpanded())


def combo(options, current, tip: str) -> QComboBox:
    box = QComboBox()
    box.addItems([str(o) for o in options])
    box.setCurrentText(str(current))
    box.setToolTip(tip)
    return box


class SettingsForm(QWidget):
    """What a user chooses before Train; `settings()` and `train_config()` read it back."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        file_, train = choices.Settings(), choices.TrainConfig()
        #: The layer behind each item of a layer box (None: "none", or a chosen layer no longer open), by id(box).
        self._layers: dict[int, list[Any]] = {}
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        form = QFormLayout()
        self.layer_box = layer_combo("The image layer to compress (opened NIfTI volumes keep their orientation)")
        form.addRow("Volume", self.layer_box)
        self.ratio = spin(
            QDoubleSpinBox(),
            "ratio",
            file_.ratio,
            "Target ratio vs the raw voxels; the file lands between R and 1.05 R",
            decimals=1,
        )
        form.addRow("Ratio", self.ratio)
        auto = " or ".join(map(str, choices.AUTO_EXPERTS))
        self.experts = spin(
            QSpinBox(),
            "experts",
            file_.experts or 0,
            f"Number of experts (1 = a single network); auto: "
            f"a short trial of {auto} on the latent grid, and the better trains on",
            zero=True,
        )
        self.experts.setSpecialValueText("auto")  # shown at 0
        form.addRow("Experts", self.experts)
        self.top_k = combo(choices.TOP_K, file_.top_k, "Experts evaluated per voxel")
        form.addRow("Top-k", self.top_k)
        self.minutes = spin(QDoubleSpinBox(), "minutes", train.minutes, "Training time budget in minutes", decimals=2)
        form.addRow("Minutes", self.minutes)
        self.roi_box = layer_combo(
            "A Labels layer on the volume's grid whose painted voxels (any label) are the "
            "region of interest: their squared error counts 'ROI weight' times more, so they "
            "come out sharper for the same file size"
        )
        form.addRow("ROI", self.roi_box)
        layout.addLayout(form)

        self.advanced = Fold(
            "Advanced", "Show or hide the advanced settings: learning rate, seed, bit width, encoder, router…"
        )
        adv = QWidget()
        adv_form = QFormLayout(adv)
        adv_form.setContentsMargins(0, 0, 0, 0)
        self.lr = spin(QDoubleSpinBox(), "lr", train.lr, "Adam learning rate", decimals=5, step=5e-4)
        self.seed = spin(QSpinBox(), "seed", train.seed, "Random seed (initialisation and sampling)")
        self.balance = spin(
            QDoubleSpinBox(), "balance_weight", train.balance_weight, "Balancing loss weight", decimals=3, step=0.01
        )
        self.bits = spin(QSpinBox(), "bits", file_.bits, "Weight bit width before entropy coding (16 = float16)")
        self.steps = spin(
            QSpinBox(), "steps", 0, "Train this many steps instead of a time budget (0: use minutes)", zero=True
        )
        self.partition = combo(
            choices.PARTITIONS, file_.partition, "Learned router (MoEC) or the fixed block split (baseline)"
        )
        self.encoder = combo(
            choices.ENCODERS,
            file_.encoder,
            "Shared encoder: a latent grid (3D, quantized weights) "
            "or a SIREN layer; auto: the grid wherever it applies",
        )
        self.router_input = combo(
            choices.ROUTER_INPUTS,
            "features" if file_.router_features else "coordinates",
            "What the router reads: the coordinates and the encoder features, or the coordinates alone",
        )
        self.grid_channels = spin(
            QSpinBox(),
            "grid_channels",
            file_.grid_channels,
            "Latents per grid node and level (latent grid only); fewer channels buy a finer grid in the same bytes",
        )
        self.roi_weight = spin(
            QDoubleSpinBox(),
            "roi_weight",
            train.roi_weight,
            "How much more a voxel of the ROI counts in training",
            decimals=1,
        )
        self.keep_identity = QCheckBox("Keep patient identity")
        self.keep_identity.setChecked(file_.keep_identity)
        self.keep_identity.setToolTip(
            "Keep the patient's name, ID and birth date and the study of a DICOM volume in "
            "the .moec file (off: the file holds no patient identity, and a DICOM "
            "series decoded from it is filed under a new pseudonymous patient)"
        )
        for label, widget in (
            ("Learning rate", self.lr),
            ("Seed", self.seed),
            ("Balance weight", self.balance),
            ("Bits", self.bits),
            ("Steps", self.steps),
            ("Partition", self.partition),
            ("Encoder", self.encoder),
            ("Router input", self.router_input),
            ("Grid channels", self.grid_channels),
            ("ROI weight", self.roi_weight),
        ):
            adv_form.addRow(label, widget)
        adv_form.addRow(self.keep_identity)  # the box's own text: no label column as wide as it
        self.advanced.addWidget(adv)
        layout.addWidget(self.advanced)
        #: Everything a running job must not see change.
        self.inputs: list[QWidget] = [
            self.layer_box,
            self.ratio,
            self.experts,
            self.top_k,
            self.minutes,
            self.lr,
            self.seed,
            self.balance,
            self.bits,
            self.steps,
            self.partition,
            self.encoder,
            self.router_input,
            self.grid_channels,
            self.roi_box,
            self.roi_weight,
            self.keep_identity,
        ]

    def set_layers(self, box: QComboBox, layers: Sequence[Any], none: bool = False) -> None:
        """Refill a layer box with these layers, silently, keeping the chosen layer by identity (so
        through a rename), else by name. With `none`, a first item "none", and a chosen layer that is
        no longer open stays chosen under its name, with no layer behind it: Train then says so in
        words rather than run without it."""
        chosen, text = self.chosen(box), box.currentText()
        items: list[Any] = ([None] if none else []) + list(layers)
        names = (["none"] if none else []) + [layer.name for layer in layers]
        index = next((i for i, layer in enumerate(items) if chosen is not None and layer is chosen), -1)
        if index < 0 and text in names:
            index = names.index(text)
        if index < 0 and none and text not in ("", "none"):
            items.append(None)
            names.append(text)
            index = len(names) - 1
        box.blockSignals(True)
        box.clear()
        box.addItems(names)
        box.setCurrentIndex(max(index, 0) if names else -1)
        box.blockSignals(False)
        self._layers[id(box)] = items

    def chosen(self, box: QComboBox) -> Any:
        """The layer chosen in a layer box (None: none, or one no longer open)."""
        items = self._layers.get(id(box), [])
        index = box.currentIndex()
        return items[index] if 0 <= index < len(items) else None

    def settings(self) -> choices.Settings:
        return choices.Settings(
            ratio=self.ratio.value(),
            experts=self.experts.value() or None,
            top_k=int(self.top_k.currentText()),
            partition=self.partition.currentText(),
            bits=self.bits.value(),
            encoder=self.encoder.currentText(),
            router_features=self.router_input.currentText() == "features",
            grid_channels=self.grid_channels.value(),
            keep_identity=self.keep_identity.isChecked(),
        )

    def train_config(self) -> choices.TrainConfig:
        return choices.TrainConfig(
            minutes=self.minutes.value(),
            steps=self.steps.value() or None,
            lr=self.lr.value(),
            balance_weight=self.balance.value(),
            seed=self.seed.value(),
            roi_weight=self.roi_weight.value(),
        )

    def budget(self) -> tuple[float | None, int | None]:
        """(minutes, steps) of a run: a step count when one is set, else the minutes."""
        steps = self.steps.value() or None
        return (None if steps else self.minutes.value()), steps
