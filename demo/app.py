"""Command line of the demo: ``python app.py [--preset sd15|sd14|shapes|tiny] [--port P] [--share]``.

Every flag has an environment variable (``ANYWORD_PRESET``, ``GRADIO_SERVER_PORT``, ...), so the same file runs
locally and on Hugging Face Spaces.
"""

from __future__ import annotations

import argparse
import logging
import os

from demo.models import PRESETS


def parse_args(argv=None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(description="Segment Anyword demo")
    parser.add_argument(
        "--preset",
        default=env("ANYWORD_PRESET", "sd15"),
        choices=list(PRESETS),
        help="model to start with (default sd15; falls back to tiny when offline)",
    )
    parser.add_argument(
        "--host",
        default=env("GRADIO_SERVER_NAME", "127.0.0.1"),
        help="interface to listen on (0.0.0.0 to serve the network)",
    )
    parser.add_argument("--port", type=int, default=int(env("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument(
        "--share",
        action="store_true",
        default=env("ANYWORD_SHARE", "") == "1",
        help="also serve through a temporary public gradio.live link",
    )
    parser.add_argument("--device", default=env("ANYWORD_DEVICE"), help="cpu, cuda, mps (default: best available)")
    parser.add_argument("--dtype", default=env("ANYWORD_DTYPE"), choices=("fp16", "bf16", "fp32"))
    parser.add_argument("--sam-model", default=env("ANYWORD_SAM_MODEL"), help="vit_h (default), vit_l, vit_b")
    parser.add_argument(
        "--gpu-concurrency",
        type=int,
        default=int(env("ANYWORD_GPU_CONCURRENCY", "1")),
        help="GPU jobs run at once (default 1: the rest queue)",
    )
    parser.add_argument("--max-file-size", default=env("ANYWORD_MAX_FILE_SIZE", "50mb"))
    return parser.parse_args(argv)


def main(argv=None) -> None:
    from demo.ui import CSS, DemoConfig, build_demo

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = DemoConfig(
        preset=args.preset,
        device=args.device,
        dtype=args.dtype,
        sam_model=args.sam_model,
        gpu_concurrency=args.gpu_concurrency,
    )
    demo = build_demo(config)
    demo.queue(default_concurrency_limit=4)
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        css=CSS,
        max_file_size=args.max_file_size,
        show_error=False,
    )
