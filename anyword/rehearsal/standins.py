"""Toy stand-ins of every published model the presets and segmenters name, written with the same file trees, file
names, config keys and weight formats as the real repositories (read from the registries: each preset's
``published`` backbone, each segmenter's ``published()`` weights), so the code that finds, downloads, verifies and
loads published weights runs for real where the weights themselves cannot be fetched.

Hub repositories go to ``ROOT/hub/<repo id>/`` (serve them with :class:`~anyword.rehearsal.hub.LocalHub`); files
that live outside the hub (SAM's checkpoints) to ``ROOT/files/``, served under their URL's path. A SAM stand-in has
its own sha256 and a toy architecture: :func:`sam_rehearsal` says what to inject so that the real download, sha256
check, ``torch.load(weights_only=True)`` and strict ``load_state_dict`` run on it (``scripts/rehearse.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

REHEARSAL_SAM = "ANYWORD_REHEARSAL_SAM"  # what scripts/rehearse.py injects: {model: {"url", "sha256"}}


@dataclass
class StandIns:
    """What :func:`write_stand_ins` wrote: hub repositories (id -> folder), files served under URL paths, and the
    SAM checkpoints' stand-in digests (model -> sha256)."""

    repos: dict[str, Path] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    sam: dict[str, tuple[str, str]] = field(default_factory=dict)  # model -> (URL path, sha256)

    def sam_rehearsal(self, hub_url: str) -> str:
        """The JSON ``scripts/rehearse.py`` reads from ``ANYWORD_REHEARSAL_SAM``: each stand-in checkpoint's URL on
        the local hub and its digest."""
        return json.dumps({m: {"url": hub_url + path, "sha256": digest} for m, (path, digest) in self.sam.items()})


def write_stand_ins(
    root: Path, presets: list[str] | None = None, segmenters: dict[str, list[str]] | None = None, seed: int = 0
) -> StandIns:
    """Stand-ins of the published weights of ``presets`` (names; default: every preset with published weights)
    and of ``segmenters`` (key -> sizes; default: every promptable segmenter's default size) under ``root``."""
    from anyword.presets import PRESETS
    from anyword.segment import SEGMENTERS

    written = StandIns()
    chosen = [PRESETS[name] for name in presets] if presets is not None else list(PRESETS.values())
    for preset in chosen:
        if preset.published is not None and preset.published.model not in written.repos:
            folder = root / "hub" / preset.published.model
            written.repos[preset.published.model] = preset.published.write_stand_in(folder, seed)
    wanted = segmenters or {k: [s.default_model] for k, s in SEGMENTERS.items() if s.promptable}
    for key, models in wanted.items():
        published = SEGMENTERS[key].published()
        for model in models:
            source = published.source(model)
            if published.kind == "hub":
                written.repos[source] = published.write_stand_in(root / "hub" / source, model, seed)
                continue
            path = published.write_stand_in(root / "files", model, seed)
            written.files[urlparse(source).path] = path
            written.sam[model] = (urlparse(source).path, hashlib.sha256(path.read_bytes()).hexdigest())
    return written


def apply_sam_rehearsal() -> None:
    """Inject the stand-in SAM checkpoints named in ``ANYWORD_REHEARSAL_SAM`` (their local URL and digest) and
    build the toy architecture they fit where the official one would be built; nothing else of the loading path
    changes. Used only by ``scripts/rehearse.py``."""
    import dataclasses

    from segment_anything import sam_model_registry

    from anyword.segment import sam

    injected = json.loads(os.environ.get(REHEARSAL_SAM, "{}"))
    for model, source in injected.items():
        sam.SAM_CHECKPOINTS[model] = dataclasses.replace(
            sam.SAM_CHECKPOINTS[model], url=source["url"], sha256=source["sha256"]
        )
        sam_model_registry[model] = lambda checkpoint=None: sam.build_tiny_sam(0)
