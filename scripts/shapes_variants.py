"""Research harness: train variants of the shapes model side by side and score their word localisation on
validation scenes (held-out ``train`` scenes 5,000,000+, never the test splits). The runs in docs/benchmarks.md
("Runs that did not localise better") come from it.

    python scripts/shapes_variants.py WORKDIR OUTDIR --variants s130,qk3 --steps 3000 --device cuda --workers 3

Each variant trains in its own process (they share one GPU well: the model is tiny), then scores itself:

* ``direct``: the caption's cross-attention on the clean scene noised to t = 100, 200, 300 (one forward pass each),
  per grid (16, 32, both): a quick probe of the model alone;
* ``attention_shares``: how far the attention is from uniform (see :func:`attention_shares`);
* ``pipeline_preset`` / ``pipeline_paper``: :func:`anyword.shapes.localization.localization`, i.e. DDIM inversion and
  averaging as ``anyword shapes localization`` does, with the preset's and the paper's settings.

A variant may change the world's radii or the UNet's heads; those are module settings, so the harness sets them in
the variant's own process before anything is built (the shipped code never changes them at run time). Writes
``OUTDIR/NAME.tar`` (weights, model.json, logs) and ``OUTDIR/summary.json``. The variant ``shipped`` trains nothing
and scores the packaged weights.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
# name: world radius scale, UNet heads per block (legacy ``attention_head_dim``), keyword arguments of train()
VARIANTS = {
    "s130": (1.3, [4, 8, 16], {}),
    "s130h8": (1.3, [2, 4, 8], {}),
    "s100h8": (1.0, [2, 4, 8], {}),
    "s115h8": (1.15, [2, 4, 8], {}),
    "ln4": (1.0, [4, 8, 16], {"text_norm_gain": 4.0}),
    "qk3": (1.0, [4, 8, 16], {"qk_gain": 3.0}),
    "ln3qk2": (1.0, [4, 8, 16], {"text_norm_gain": 3.0, "qk_gain": 2.0}),
    "ln4h8": (1.0, [2, 4, 8], {"text_norm_gain": 4.0}),
    "sc50": (1.0, [4, 8, 16], {"same_colour": 0.5}),
    "sc50qk3": (1.0, [4, 8, 16], {"same_colour": 0.5, "qk_gain": 3.0}),
    # token-grounding loss (TokenCompose) alone; with the pixel loss and captions naming absent shapes
    "tok10": (1.0, [4, 8, 16], {"grounding_weight": 0.1}),
    "tok10pix20abs50": (1.0, [4, 8, 16], {"grounding_weight": 0.1, "pixel_weight": 0.2, "absent_words": 0.5}),
}
SHIPPED = "shipped"  # no training: scores the packaged weights
VARIANTS[SHIPPED] = (1.0, [4, 8, 16], {})
VALIDATION_START = 5_000_000


def configure(name: str) -> dict:
    """Set the variant's world and UNet settings in this process; returns its train() keyword arguments."""
    import anyword.diffusion.shapes_model as model
    import anyword.shapes.scenes as scenes

    scale, heads, train_kwargs = VARIANTS[name]
    shipped = dict(scenes.RADII)
    scenes.RADII.update({size: (low * scale, high * scale) for size, (low, high) in shipped.items()})
    model.UNET_CONFIG["attention_head_dim"] = list(heads)
    # The earlier variants trained on the diffusion loss alone (train()'s defaults are the grounded recipe).
    return {"grounding_weight": 0.0, "pixel_weight": 0.0, "absent_words": 0.0, **train_kwargs}


def direct_probe(backbone, n: int, shares_n: int = 20) -> tuple[dict, dict]:
    """Noun / colour / control pointing from one forward pass per t in (100, 200, 300) on the noised clean scene,
    per grid (control appended, as ``anyword shapes localization`` has it) and, on 16+32, with the control first or
    second (:data:`CONTROL_PLACES`); and :func:`attention_shares` of the 16+32 maps of the first ``shares_n``
    scenes."""
    from anyword.diffusion.attention import AttentionMaps, record_cross_attention
    from anyword.images import ImageFrame
    from anyword.shapes.localization import CONTROL_PLACES, record_pointing, with_control
    from anyword.shapes.scenes import make_scene, render
    from anyword.tokens import align_tokens

    # row -> (grids, where the control word goes)
    grids = {"direct16": ((16,), "end"), "direct32": ((32,), "end"), "direct16_32": ((16, 32), "end")}
    grids |= {f"direct16_32_control_{place}": ((16, 32), place) for place in CONTROL_PLACES if place != "end"}
    hits = {key: {"noun": [], "colour": [], "control": [], "chance": []} for key in grids}
    share_rows = []
    generator = torch.Generator().manual_seed(0)
    frame = ImageFrame(width=64, height=64, size=64, mode="stretch")
    for index in range(VALIDATION_START, VALIDATION_START + n):
        scene = make_scene("train", index, min_shapes=2, max_shapes=4)
        image, masks = render(scene, 64)
        clean = backbone.encode_image(frame.to_model(image))
        noises = [torch.randn(clean.shape, generator=generator).to(clean.device, clean.dtype) for _ in range(3)]
        with torch.no_grad():
            encoded = {}  # control place -> (concepts, control, alignment, text states): one encoding per caption
            for place in CONTROL_PLACES:
                caption, concepts, control = with_control(scene, place)
                alignment = align_tokens(caption, concepts, backbone.tokenizer)
                encoded[place] = concepts, control, alignment, backbone.text_states(alignment.input_ids)
            for key, (resolutions, place) in grids.items():
                concepts, control, alignment, states = encoded[place]
                with record_cross_attention(backbone.unet, resolutions) as recorder:
                    recorder.active = True
                    for t, noise in zip((100, 200, 300), noises, strict=True):
                        backbone.unet_forward(backbone.scheduler.add_noise(clean, noise, torch.tensor([t])), t, states)
                    token_grids = recorder.average()
                maps = AttentionMaps(token_grids, frame, alignment)
                record_pointing(hits[key], maps, scene, masks, concepts, control)
                if key == "direct16_32" and index < VALIDATION_START + shares_n:
                    share_rows += _share_rows(token_grids, scene, masks, concepts, alignment, backbone.tokenizer)
    pointing = {key: {k: round(float(np.mean(v)), 3) for k, v in h.items()} for key, h in hits.items()}
    return pointing, attention_shares(share_rows)


def _share_rows(token_grids, scene, masks, concepts, alignment, tokenizer) -> list[dict]:
    import cv2

    side = token_grids.shape[-1]
    shapes = [cv2.resize(m.astype(np.float32), (side, side), interpolation=cv2.INTER_AREA) > 0.5 for m in masks]
    anywhere = np.any(shapes, axis=0)
    words = token_grids[1 : alignment.input_ids.index(tokenizer.eos_token_id)].sum(axis=0)
    by_phrase = {c.phrase: c for c in concepts}
    rows = []
    for phrase in scene.phrases:
        own = shapes[phrase.shape_index]
        if not own.any():
            continue
        noun = token_grids[list(alignment.for_concept(by_phrase[phrase.text].id).noun_positions)].mean(axis=0)
        others = anywhere & ~own
        rows.append(
            {
                "noun_on_own_shape": noun[own].mean(),
                "noun_on_other_shapes": noun[others].mean() if others.any() else np.nan,
                "noun_on_background": noun[~anywhere].mean(),
                "words_on_shapes": words[anywhere].mean(),
                "words_on_background": words[~anywhere].mean(),
            }
        )
    return rows


def attention_shares(rows: list[dict]) -> dict:
    """How peaked is the cross-attention? Mean softmax share (t = 100, 200, 300; 16x16 and 32x32 grids averaged) of
    a phrase's noun token on its own shape, on the other shapes and on the background, and of all caption words
    together on shapes and on background. Uniform attention over the 77 tokens gives 1/77 = 0.013 per token."""
    return {key: round(float(np.nanmean([row[key] for row in rows])), 4) for key in rows[0]}


def train_and_score(name: str, folder: Path, args) -> None:
    torch.multiprocessing.set_start_method("fork", force=True)  # data workers inherit the variant's settings
    kwargs = configure(name)
    from anyword.diffusion import DiffusionSettings, LearningSettings
    from anyword.diffusion.shapes_model import load_shapes_backbone, weights_dir
    from anyword.shapes.localization import localization
    from anyword.shapes.training import TrainConfig, train

    torch.set_num_threads(args.threads)
    if name == SHIPPED:
        info = json.loads((weights_dir() / "model.json").read_text())
        backbone = load_shapes_backbone(device=args.device)
    else:
        config = TrainConfig(
            steps=args.steps, device=args.device, workers=args.workers, max_seconds=args.max_seconds, **kwargs
        )
        info = train(folder, config)
        backbone = load_shapes_backbone(device=args.device, folder=folder)
    started = time.perf_counter()
    summary = {
        "train": {k: info[k] for k in ("steps", "train_seconds", "final_loss_ema", "text_gain")},
        "settings": {"radius_scale": VARIANTS[name][0], "heads": VARIANTS[name][1], **kwargs},
    }
    summary["localization"], summary["attention_shares"] = direct_probe(backbone, args.n)
    # The grids are what the variant probes (not a preset's), so the settings are spelled out here.
    no_learning = LearningSettings(steps=0)
    for key, resolutions, timesteps in (("pipeline_preset", (16, 32), (0, 400)), ("pipeline_paper", (16,), None)):
        settings = DiffusionSettings(
            learning=no_learning, attention_resolutions=resolutions, attention_timesteps=timesteps
        )
        result = localization(backbone, settings, "train", args.pipeline_n, VALIDATION_START, progress=False)
        summary["localization"][key] = {
            k: round(result[k], 3) for k in ("noun_pointing", "colour_pointing", "control_pointing", "chance")
        }
    summary["score_seconds"] = round(time.perf_counter() - started, 1)
    (folder / "summary.json").write_text(json.dumps(summary, indent=1))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--max-seconds", type=float, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n", type=int, default=60, help="validation scenes for the direct probe")
    parser.add_argument("--pipeline-n", type=int, default=30, help="validation scenes for the pipeline measures")
    parser.add_argument("--only", help=argparse.SUPPRESS)  # a variant's own process
    args = parser.parse_args(argv)
    if args.only:
        train_and_score(args.only, args.workdir / args.only, args)
        return 0
    names = args.variants.split(",")
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {sorted(VARIANTS)}")
    args.outdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    processes = {}
    for name in names:
        (args.workdir / name).mkdir(parents=True, exist_ok=True)
        log = (args.workdir / f"{name}.log").open("w")
        command = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--only", name]
        processes[name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    summary = {}
    for name, process in processes.items():
        process.wait()
        folder = args.workdir / name
        result = folder / "summary.json"
        summary[name] = json.loads(result.read_text()) if result.is_file() else {"error": f"exit {process.returncode}"}
        with tarfile.open(args.outdir / f"{name}.tar", "w") as tar:
            for file in ("unet.safetensors", "text_encoder.safetensors", "model.json", "train_log.jsonl"):
                if (folder / file).is_file():
                    tar.add(folder / file, arcname=file)
            tar.add(args.workdir / f"{name}.log", arcname="train.log")
    (args.outdir / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
