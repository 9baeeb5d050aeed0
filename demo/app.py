"""Command line of the demo: ``python app.py [--preset NAME] [--port P] [--share]`` (presets: ``anyword presets``).

Every flag has an environment variable (``ANYWORD_PRESET``, ``GRADIO_SERVER_PORT``, ...), so the same file runs
locally and on Hugging Face Spaces.
"""

from __future__ import annotations

import argparse
import logging
import math
import os

from anyword.flags import DTYPE_CHOICES, DeprecatedFlag
from anyword.presets import DEFAULT_PRESET, OFFLINE_PRESET
from anyword.segment import models_help
from demo.models import demo_presets


def parse_args(argv=None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(description="Segment Anyword demo")
    parser.add_argument(
        "--preset",
        default=env("ANYWORD_PRESET", DEFAULT_PRESET),
        choices=demo_presets(),
        help=f"model to start with (default {DEFAULT_PRESET}; {OFFLINE_PRESET} when its weights are unavailable)",
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
    parser.add_argument("--dtype", default=env("ANYWORD_DTYPE"), choices=DTYPE_CHOICES)
    parser.add_argument(
        "--segmenter-model",
        "--sam-model",
        default=env("ANYWORD_SEGMENTER_MODEL") or env("ANYWORD_SAM_MODEL"),
        help=f"size of the preset's segmenter: {models_help()}",
    )
    parser.add_argument(
        "--gpu-concurrency",
        type=int,
        default=int(env("ANYWORD_GPU_CONCURRENCY", "1")),
        help="GPU jobs run at once (default 1: the rest queue)",
    )
    parser.add_argument("--max-file-size", default=env("ANYWORD_MAX_FILE_SIZE", "50mb"))
    parser.add_argument(
        "--llm-base-url",
        default=env("ANYWORD_LLM_BASE_URL") or env("OPENAI_BASE_URL"),
        help="the LLM parser's OpenAI-compatible endpoint; the server's OPENAI_API_KEY goes only there "
        "(default: OpenAI's API)",
    )
    parser.add_argument(
        "--allow-visitor-llm-url",
        action="store_true",
        default=env("ANYWORD_ALLOW_VISITOR_LLM_URL", "") == "1",
        help="on a public server, let visitors type their own LLM endpoint (with their own key; private, "
        "loopback and link-local addresses are refused). Local servers always allow it.",
    )
    parser.add_argument(
        "--session-ttl",
        type=float,
        default=float(env("ANYWORD_SESSION_TTL", "3600")),
        help="seconds after its last action that a session's state and download are deleted (default 3600)",
    )
    parser.add_argument(
        "--max-sessions",
        type=int,
        default=int(env("ANYWORD_MAX_SESSIONS", "1000")),
        help="sessions whose state the server keeps; past it the least recently used is dropped (default 1000)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        default=env("ANYWORD_COMPILE", "") == "1" or env("ANYWORD_FAST_PATH", "") == "1",  # the old name, deprecated
        help="compiled prompt learning, channels-last, no per-step host sync (same results; a one-time compile)",
    )
    parser.add_argument("--fast-path", action=DeprecatedFlag, nargs=0, dest="compile", help=argparse.SUPPRESS)
    parser.add_argument(
        "--warm-up",
        action="store_true",
        default=env("ANYWORD_WARM_UP", "") == "1",
        help="load the models and run one short analysis before serving (pays loading and the compile once)",
    )
    args = parser.parse_args(argv)
    if args.max_sessions < 1:
        parser.error(f"--max-sessions must be at least 1, got {args.max_sessions}")
    if not (args.session_ttl > 0 and math.isfinite(args.session_ttl)):
        parser.error(f"--session-ttl must be a positive number of seconds, got {args.session_ttl}")
    return args


LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def is_public(args: argparse.Namespace) -> bool:
    """Whether people other than the operator can reach the page: another interface, a share link, a Space."""
    return args.share or args.host not in LOCAL_HOSTS or bool(os.environ.get("SPACE_ID"))


def main(argv=None) -> None:
    from demo.ui import CSS, DemoConfig, build_demo

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore", "openai"):  # their debug lines carry request details
        logging.getLogger(noisy).setLevel(logging.WARNING)
    public = is_public(args)
    config = DemoConfig(
        preset=args.preset,
        device=args.device,
        dtype=args.dtype,
        segmenter_model=args.segmenter_model,
        gpu_concurrency=args.gpu_concurrency,
        llm_base_url=args.llm_base_url,
        visitor_llm_urls=args.allow_visitor_llm_url or not public,
        refuse_private_llm_urls=public,
        session_ttl_s=args.session_ttl,
        speed="compiled" if args.compile else "eager",
        warm_up=args.warm_up,
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
        # Gradio keeps a copy of the page's config per session until this many (its default: 10,000).
        state_session_capacity=args.max_sessions,
    )
