"""Command line of the demo: ``python app.py [--preset NAME] [--port P] [--share]`` (presets: ``anyword presets``).

Every flag has an environment variable (``ANYWORD_PRESET``, ``GRADIO_SERVER_PORT``, ...), so the same file runs
locally and on Hugging Face Spaces.
"""

from __future__ import annotations

import argparse
import logging

from anyword import environment
from anyword.errors import SettingsError
from anyword.flags import DTYPE_CHOICES, DeprecatedFlag
from anyword.presets import DEFAULT_PRESET, OFFLINE_PRESET
from anyword.segment import models_help
from demo.models import demo_presets


class _Options:
    """Adds flags whose defaults come from environment variables, each read by the same parser as its flag (a bad
    value in either is one ``error:`` line naming it)."""

    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser

    def add(self, flag: str, variable: str | tuple[str, ...], parse=environment.text, default=None, **options):
        names = (variable,) if isinstance(variable, str) else variable
        try:
            value = next((v for v in (environment.read(n, parse, None) for n in names) if v is not None), default)
        except SettingsError as error:
            self.parser.error(str(error))
        kind = {} if parse in (environment.flag, environment.text) else {"type": environment.argument_type(parse)}
        if parse is environment.flag:
            self.parser.add_argument(flag, action="store_true", default=bool(value), **options)
        else:
            self.parser.add_argument(flag, default=value, **kind, **options)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="app.py", description="Segment Anyword demo")
    add = _Options(parser).add
    add(
        "--preset",
        "ANYWORD_PRESET",
        default=DEFAULT_PRESET,
        choices=demo_presets(),
        help=f"model to start with (default {DEFAULT_PRESET}; {OFFLINE_PRESET} when its weights are unavailable)",
    )
    add(
        "--host",
        "GRADIO_SERVER_NAME",
        default="127.0.0.1",
        help="interface to listen on (0.0.0.0 to serve the network)",
    )
    add("--port", "GRADIO_SERVER_PORT", environment.whole_number(1), default=7860)
    add("--share", "ANYWORD_SHARE", environment.flag, help="also serve through a temporary public gradio.live link")
    add("--device", "ANYWORD_DEVICE", help="cpu, cuda, mps (default: best available)")
    add("--dtype", "ANYWORD_DTYPE", choices=DTYPE_CHOICES)
    add(
        "--segmenter-model",
        ("ANYWORD_SEGMENTER_MODEL", "ANYWORD_SAM_MODEL"),
        help=f"size of the preset's segmenter: {models_help()}",
    )
    add(
        "--gpu-concurrency",
        "ANYWORD_GPU_CONCURRENCY",
        environment.whole_number(1),
        default=1,
        help="GPU jobs run at once (default 1: the rest queue)",
    )
    add("--max-file-size", "ANYWORD_MAX_FILE_SIZE", default="50mb")
    add(
        "--llm-base-url",
        ("ANYWORD_LLM_BASE_URL", "OPENAI_BASE_URL"),
        environment.http_url,
        help="the LLM parser's OpenAI-compatible endpoint (http or https); the server's OPENAI_API_KEY goes only "
        "there (default: OpenAI's API)",
    )
    add(
        "--allow-visitor-llm-url",
        "ANYWORD_ALLOW_VISITOR_LLM_URL",
        environment.flag,
        help="on a public server, let visitors type their own LLM endpoint (with their own key; private, loopback "
        "and link-local addresses are refused). Local servers always allow it.",
    )
    add(
        "--session-ttl",
        "ANYWORD_SESSION_TTL",
        environment.positive_seconds,
        default=3600.0,
        help="seconds after its last action that a session's state and download are deleted (default 3600)",
    )
    add(
        "--max-sessions",
        "ANYWORD_MAX_SESSIONS",
        environment.whole_number(1),
        default=1000,
        help="sessions whose state the server keeps; past it the least recently used is dropped (default 1000)",
    )
    add(
        "--compile",
        ("ANYWORD_COMPILE", "ANYWORD_FAST_PATH"),
        environment.flag,  # FAST_PATH: the old name
        help="compiled prompt learning, channels-last, no per-step host sync (same results; a one-time compile)",
    )
    parser.add_argument("--fast-path", action=DeprecatedFlag, nargs=0, dest="compile", help=argparse.SUPPRESS)
    add(
        "--warm-up",
        "ANYWORD_WARM_UP",
        environment.flag,
        help="load the models and run one short analysis before serving (pays loading and the compile once)",
    )
    return parser.parse_args(argv)  # fmt: skip


LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def is_public(args: argparse.Namespace) -> bool:
    """Whether people other than the operator can reach the page: another interface, a share link, a Space."""
    return args.share or args.host not in LOCAL_HOSTS or bool(environment.read("SPACE_ID", environment.text, ""))


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
        speed="compiled" if args.compile else None,
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
