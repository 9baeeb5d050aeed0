"""The one preset registry: every named model setup, what it loads, what it segments with, the settings it runs
with, whether its weights are random, and whether they are available here. The CLI, the demo, the pipeline,
evaluation and benchmarks all read :data:`PRESETS`. Other code names a preset only through the constants below
(which preset a default means), never by matching a name against a string.

Adding a backbone is one loader (``anyword/diffusion/``, taking ``name=, device=, dtype=, seed=``) plus one
:class:`Preset` entry here; the loader never knows which preset calls it (:meth:`Preset.load` names the model).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from anyword.downloads import Availability
from anyword.errors import AnywordError
from anyword.segment import PRETRAINED, RANDOM, SAM_SHAPES, TINY, SegmenterWeights, segmenter_spec
from anyword.settings import Overrides, Quality

if TYPE_CHECKING:
    from anyword.diffusion import Backbone
    from anyword.diffusion.speed import SpeedName
    from anyword.settings import PipelineSettings

ExampleSet = Literal["photos", "shapes", "parts"]  # which demo examples suit a preset

DEFAULT_PRESET = "sd15"  # the demo's and `segment`'s: Stable Diffusion 1.5, an alternative backbone of the paper
TEST_PRESET = "tiny"  # what tests and benchmarks build when told nothing
LDM_PRESET = "ldm"  # the paper's quantitative backbone (appendix C.1)
SHAPES_PRESET = "shapes"  # the model trained on the shapes world (anyword.shapes): its datasets and reports use it
OFFLINE_PRESET = SHAPES_PRESET  # the demo's start when the default's weights are unavailable (real maps, offline)


@dataclass(frozen=True)
class CpuCost:
    """What one batch-8 prompt-learning step costs on a CPU (measured: ``anyword bench`` on ``threads`` threads)."""

    step_s: float
    peak_gb: float
    threads: int

    def describe(self, steps: int) -> str:
        total_h = self.step_s * steps / 3600
        return (
            f"without a GPU one prompt-learning step takes about {self.step_s:.0f} s here ({self.threads} CPU "
            f"threads, {self.peak_gb:.0f} GB peak), so {steps} steps would take about "
            + (f"{total_h / 24:.1f} days" if total_h >= 48 else f"{total_h:.1f} hours")
        )


@dataclass(frozen=True)
class GpuReservation:
    """Seconds to reserve on a shared GPU (Hugging Face ZeroGPU) for one analysis: loading and inversion, then
    each prompt-learning step (estimated for an A10G), capped at the platform's limit."""

    base_s: float = 60.0
    step_s: float = 0.25
    limit_s: float = 1500.0

    def seconds(self, learning_steps: int) -> int:
        return int(min(self.limit_s, self.base_s + self.step_s * learning_steps))


@dataclass(frozen=True)
class Preset:
    """A named setup.

    Attributes:
        name, description: what users pick and read.
        backbone_id: the diffusion weights it uses (hub id, or how it is built).
        loader: ``loader(name=, device=, dtype=, seed=)`` -> :class:`~anyword.diffusion.Backbone` (call
            :meth:`load`, which names the model after the preset).
        segmenter: the default segmenter (a key of :data:`anyword.segment.SEGMENTERS`).
        segmenter_model: the size that segmenter loads with this preset unless one is asked for (``None``: the
            segmenter's own default).
        segmenter_weights: which weights any segmenter gets with this preset: "pretrained", "tiny" (toy size,
            random) or "random" (full size, random).
        overrides: the settings it runs with, relative to the paper's.
        random_weights: the backbone's weights are random (its maps and masks mean nothing).
        backbone_availability: whether the backbone's weights are here, downloadable or missing.
        cpu_cost: measured cost of a learning step on a CPU, for presets too big to run there comfortably.
        examples: which demo examples suit it ("photos", "shapes" or "parts").
        in_demo: offered in the demo's model choice.
        budgets: learning steps of the "paper" and "fast" qualities for this model (the paper's 1100 and 50
            unless its scale differs).
        weights_family: how published weights of this setup load ("sd", "ldm"; ``None``: it builds its own), which
            :meth:`with_model` uses for ``--model``.
        shipped_adapter: folder inside the package holding the preset's text-encoder adapter (``--adapter
            shipped``), or ``None``.
        published: where its published diffusion weights live and how they are fetched (``anyword download``)
            and stood in for; ``None`` for presets that build or ship their own.
        speed: how its UNet runs unless asked otherwise (a name of :data:`anyword.diffusion.speed.SPEEDS`).
        reference: the overrides its own were measured against when they were chosen for speed (its earlier
            overrides, whole: applied to the paper's settings, not on top of :attr:`overrides`): ``anyword bench``
            times a first result with them on the eager path as the baseline (:meth:`reference_settings`).
    """

    name: str
    description: str
    backbone_id: str
    loader: Callable[..., Backbone]
    segmenter: str
    segmenter_weights: SegmenterWeights
    overrides: Overrides = field(default_factory=Overrides)
    random_weights: bool = False
    backbone_availability: Callable[[], Availability] = lambda: Availability("random", "built from a config")
    cpu_cost: CpuCost | None = None
    examples: ExampleSet = "photos"
    in_demo: bool = True
    segmenter_model: str | None = None
    budgets: dict[Quality, int] = field(default_factory=dict)
    shipped_adapter: str | None = None
    gpu_reservation: GpuReservation = GpuReservation()
    weights_family: str | None = None
    published: PublishedBackbone | None = None
    speed: SpeedName = "eager"
    reference: Overrides | None = None

    def with_model(self, model: str) -> Preset:
        """This setup with other published weights of its family (a hub id or a local folder: ``--model``)."""
        if self.weights_family is None:
            families = ", ".join(p.name for p in PRESETS.values() if p.weights_family and p.in_demo)
            raise AnywordError(f"preset '{self.name}' builds its own model; --model goes with {families}")
        description = f"{self.description.split(' + ')[0]} weights from {model}"
        return dataclasses.replace(_pretrained(model, model, description, self.weights_family), in_demo=False)

    def load(self, device: str | None = None, dtype: str | None = None, seed: int = 0) -> Backbone:
        """The preset's backbone (named after the preset, which is what adapters and caches match)."""
        return self.loader(name=self.name, device=device, dtype=dtype, seed=seed)

    def settings(self, overrides: Overrides | None = None) -> PipelineSettings:
        """The paper's settings with this preset's and then ``overrides``' values applied."""
        from anyword.settings import PipelineSettings, apply_overrides

        return apply_overrides(PipelineSettings(), self.overrides.then(overrides or Overrides()), self.budgets)

    def reference_settings(self) -> PipelineSettings:
        """The paper's settings with :attr:`reference` applied instead of the preset's overrides (the preset's own
        settings where it has no reference): what its settings were measured against."""
        from anyword.settings import PipelineSettings, apply_overrides

        if self.reference is None:
            return self.settings()
        return apply_overrides(PipelineSettings(), self.reference, self.budgets)

    def shipped_adapter_path(self) -> Path | None:
        """The preset's shipped adapter folder if it has one and it is present."""
        if self.shipped_adapter is None:
            return None
        path = Path(str(resources.files("anyword") / "data" / self.shipped_adapter))
        return path if path.is_dir() else None

    def segmenter_availability(self, segmenter: str | None = None, model: str | None = None) -> Availability:
        key = segmenter or self.segmenter
        return segmenter_spec(key).availability(model or self.default_segmenter_model(key), self.segmenter_weights)

    def default_segmenter_model(self, segmenter: str) -> str | None:
        """The size segmenter ``segmenter`` loads with this preset when none is asked for."""
        return self.segmenter_model if segmenter == self.segmenter else None

    def availability(self) -> Availability:
        """The backbone's and the default segmenter's availability together (missing if either is)."""
        backbone = self.backbone_availability()  # may ask the network: once
        segmenter = self.segmenter_availability()
        return segmenter if backbone.ready and not segmenter.ready else backbone

    def cost_warning(self, steps: int, device: str | None = None) -> str | None:
        """What ``steps`` learning steps would cost where models run, if that is a CPU and the cost is known."""
        from anyword.devices import has_accelerator

        if self.cpu_cost is None or steps <= 0 or has_accelerator(device):
            return None
        return self.cpu_cost.describe(steps)

    def to_dict(self, check: bool = True) -> dict:
        data = {
            "name": self.name,
            "description": self.description,
            "backbone": self.backbone_id,
            "segmenter": self.segmenter,
            "segmenter_model": self.segmenter_model,
            "segmenter_weights": self.segmenter_weights,
            "random_weights": self.random_weights,
            "settings": self.overrides.to_dict(),
            "learning_steps": self.settings().diffusion.learning.steps,
            "fast_steps": self.settings(Overrides(quality="fast")).diffusion.learning.steps,
            "shipped_adapter": str(adapter) if (adapter := self.shipped_adapter_path()) else None,
            "speed": self.speed,
        }
        if check:
            backbone, segmenter = self.backbone_availability(), self.segmenter_availability()
            data["available"] = backbone.ready and segmenter.ready
            data["weights"] = {"backbone": backbone.to_dict(), "segmenter": segmenter.to_dict()}
        return data


# Loaders import the diffusion stage when called: listing presets (the CLI's help, `anyword presets`) stays light.


def _lazy(module: str, function: str) -> Callable:
    """``module.function``, imported at its first call."""

    def call(*args, **options):
        return getattr(importlib.import_module(module), function)(*args, **options)

    call.__name__ = call.__qualname__ = function
    return call


_LOADING, _LDM = "anyword.diffusion.loading", "anyword.diffusion.ldm"
_load_pretrained, _sd_availability = _lazy(_LOADING, "load_pretrained"), _lazy(_LOADING, "sd_availability")
_build_tiny, _build_sd15_random = _lazy(_LOADING, "build_tiny"), _lazy(_LOADING, "build_sd15_random")
_load_ldm, _ldm_availability = _lazy(_LDM, "load_ldm"), _lazy(_LDM, "ldm_availability")
_build_ldm_tiny, _build_ldm_random = _lazy(_LDM, "build_ldm_tiny"), _lazy(_LDM, "build_ldm_random")
_load_shapes = _lazy("anyword.diffusion.shapes_model", "load_shapes_backbone")
PARTS_PRESET = "parts"  # the model trained on shapes world 2 (objects with parts)


# Measured on 2 CPU threads with the random-weight stand-ins of the same architectures (docs/performance.md).
SD_CPU_COST = CpuCost(step_s=78.0, peak_gb=19.4, threads=2)  # docs/results/bench-sd15-random-cpu.json
LDM_CPU_COST = CpuCost(step_s=13.7, peak_gb=11.0, threads=2)  # docs/results/bench-ldm-random-cpu.json
_sd_layouts, _write_sd_stand_in = _lazy(_LOADING, "sd_layouts"), _lazy(_LOADING, "write_sd_stand_in")
_ldm_layouts, _write_ldm_stand_in = _lazy(_LDM, "ldm_layouts"), _lazy(_LDM, "write_ldm_stand_in")
# How each family of published weights loads, is found, costs on a CPU, which of a repository's files it reads
# (``layouts(variant)``) and how a toy stand-in of its published repository is written.
_FAMILIES = {
    "sd": (_load_pretrained, _sd_availability, SD_CPU_COST, _sd_layouts, _write_sd_stand_in),
    "ldm": (_load_ldm, _ldm_availability, LDM_CPU_COST, lambda variant: _ldm_layouts(), _write_ldm_stand_in),
}


@dataclass(frozen=True)
class PublishedBackbone:
    """A preset's published diffusion weights: the hub repository ``model``, the files its loader reads
    (``layouts(variant)``: the fp16 variant first when asked), a writer of a toy stand-in of the repository (same
    file tree, names and formats) and ``extras``, files of the published repository the loader never reads (named
    so that rehearsals check they are never downloaded)."""

    model: str
    layouts: Callable
    stand_in: Callable
    extras: tuple[str, ...] = ()

    kind = "hub"

    def source(self, variant: str | None = None) -> str:
        return self.model

    def fetch(self, variant: str | None = None, progress: bool = True) -> Path:
        """The files the loader reads, in the Hugging Face cache (downloaded, resumable and verified, if missing)."""
        from anyword.repository import resolve

        return resolve(self.model, self.layouts(variant))[0]

    def files(self, variant: str | None = None) -> list[tuple[str, int]]:
        """``(path, bytes)`` of what :meth:`fetch` would download: the first layout the repository holds whole."""
        from anyword.downloads import hub_file_sizes, matching

        tree, listing = hub_file_sizes(self.model), []
        for layout in self.layouts(variant):
            listing = matching(tree, layout.patterns())
            names = {name for name, _ in listing}
            if all(any(f"{c}/{n}".lstrip("/") in names for n in ns) for c, ns in layout.weights.items()):
                return listing
        return listing

    def write_stand_in(self, folder: Path, seed: int = 0) -> Path:
        self.stand_in(folder, seed)
        for name in (".gitattributes", *self.extras):
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(f"stand-in of {self.model}/{name}: never read by the loader\n".encode())
        return folder


def _stand_in(
    name: str, description: str, backbone_id: str, loader: Callable, cost: CpuCost | None = None, in_demo=False
) -> Preset:
    """A random-weight stand-in of an architecture: at toy size (no ``cost``: tests and offline smoke runs, toy
    segmenters, short runs) or at full size (``cost``: timing and memory, full-size segmenters)."""
    toy = cost is None
    return Preset(
        name,
        description,
        backbone_id=backbone_id,
        loader=loader,
        segmenter="sam",
        segmenter_weights=TINY if toy else RANDOM,
        overrides=Overrides(learning_steps=10, inversion_steps=25) if toy else Overrides(),
        random_weights=True,
        cpu_cost=cost,
        in_demo=in_demo,
    )


def _pretrained(name: str, model: str, description: str, family: str = "sd", extras: tuple[str, ...] = ()) -> Preset:
    load, find, cost, layouts, stand_in = _FAMILIES[family]
    return Preset(
        name,
        description,
        backbone_id=model,
        loader=lambda **options: load(model, **options),
        segmenter="sam",
        segmenter_weights=PRETRAINED,
        backbone_availability=lambda: find(model),
        cpu_cost=cost,
        weights_family=family,
        published=PublishedBackbone(model, layouts, stand_in, extras),
    )


def _shapes_availability(world: str = SHAPES_PRESET) -> Availability:
    from anyword.diffusion.shapes_model import missing_weight_files, weights_dir

    folder = weights_dir(world)
    missing = missing_weight_files(folder)
    if missing:
        return Availability("missing", str(folder), f"the {world} weights are missing ({', '.join(missing)})")
    return Availability("shipped", str(folder))


# The shapes models' settings, chosen on world 1's validation scenes only (never the test scenes 0-99;
# docs/benchmarks.md): their cross-attention localises best at small t on the 16x16 and 32x32 grids; prompt learning
# saturates after ~30 steps of batch 4 over all timesteps; adjective points that follow their noun's map help.
_SHAPES_REFERENCE = Overrides(
    attention_resolutions=(16, 32),
    attention_timesteps=(0, 400),
    learning_steps=30,
    learning_batch=4,
    inversion_steps=50,
    adjective_region="noun_support",
)
# World 1's first result in under 3 s on 2 CPU cores: 20 learning steps of batch 2 instead of 30 of 4, 25 DDIM
# steps instead of 50, and prompt learning's attention in bf16, chosen on validation scenes (`novel` 10000-10019,
# full method mIoU 0.675 against 0.635; 15 steps scored 0.703 there but lost 0.018 on the test scenes, beyond the
# 0.01 allowed; docs/performance.md).
_SHAPES_OVERRIDES = _SHAPES_REFERENCE.then(
    Overrides(learning_steps=20, learning_batch=2, inversion_steps=25, learning_attention_dtype="bf16")
)
# The paper's 1100 / 50 steps scaled to these models: the full setting is 30 steps, Segment Anyword_f's a tenth.
_SHAPES_BUDGETS = {"paper": 30, "fast": 3}


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        _pretrained(
            DEFAULT_PRESET,
            "stable-diffusion-v1-5/stable-diffusion-v1-5",
            "Stable Diffusion 1.5 + SAM ViT-H (the paper's alternative backbone, its qualitative figures)",
            extras=(
                "README.md",
                "v1-inference.yaml",
                "v1-5-pruned.ckpt",
                "v1-5-pruned.safetensors",
                "v1-5-pruned-emaonly.ckpt",
                "v1-5-pruned-emaonly.safetensors",
            ),
        ),
        _pretrained(
            "sd14",
            "CompVis/stable-diffusion-v1-4",
            "Stable Diffusion 1.4 + SAM ViT-H (the paper's alternative backbone)",
            extras=("README.md", "v1-variants-scores.jpg"),
        ),
        _pretrained(
            LDM_PRESET,
            "CompVis/ldm-text2im-large-256",
            "LDM + BERT + SAM ViT-H (the paper's quantitative backbone, 256 px)",
            family="ldm",
            extras=("README.md",),
        ),
        Preset(
            SHAPES_PRESET,
            "toy text-to-image model trained in this repository + the SAM trained in its world of parts: real maps "
            "and masks on shape scenes, offline",
            backbone_id="anyword/data/shapes",
            loader=_load_shapes,
            segmenter="sam",
            segmenter_model=SAM_SHAPES,
            segmenter_weights=PRETRAINED,
            overrides=_SHAPES_OVERRIDES,
            backbone_availability=_shapes_availability,
            examples="shapes",
            budgets=_SHAPES_BUDGETS,
            shipped_adapter="shapes/adapter",
            speed="batched",
            reference=_SHAPES_REFERENCE,
        ),
        Preset(
            PARTS_PRESET,
            "toy text-to-image model of shapes world 2 (objects with parts) + the SAM trained there, offline",
            backbone_id="anyword/data/parts",
            loader=lambda **options: _load_shapes(world=PARTS_PRESET, **options),
            segmenter="sam",
            segmenter_model=SAM_SHAPES,
            segmenter_weights=PRETRAINED,
            overrides=_SHAPES_REFERENCE,
            backbone_availability=lambda: _shapes_availability(PARTS_PRESET),
            examples="parts",
            budgets=_SHAPES_BUDGETS,
            shipped_adapter="parts/adapter",
            speed="batched",
        ),
        _stand_in(
            TEST_PRESET,
            "tiny random-weight models (diffusion + any segmenter) with the real CLIP tokenizer: tests and trying "
            "the flow offline; results mean nothing",
            "random: tiny Stable Diffusion classes, 64 px",
            _build_tiny,
            in_demo=True,
        ),
        _stand_in(
            "ldm-tiny",
            "the LDM's classes (BERT WordPiece) at toy size, random weights, a small test vocabulary: tests; results "
            "mean nothing",
            "random: tiny LDM classes, 64 px",
            _build_ldm_tiny,
        ),
        _stand_in(
            "sd15-random",
            "full SD 1.5 architecture + full-size segmenter with random weights: for timing and memory only",
            "random: Stable Diffusion 1.5 architecture, 512 px",
            _build_sd15_random,
            SD_CPU_COST,
        ),
        _stand_in(
            "ldm-random",
            "full LDM architecture (BERT 32 layers, 256 px) + full-size segmenter with random weights: timing only",
            "random: LDM text-to-image architecture, 256 px",
            _build_ldm_random,
            LDM_CPU_COST,
        ),
    )
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; :class:`AnywordError` naming the choices otherwise."""
    if name not in PRESETS:
        raise AnywordError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
