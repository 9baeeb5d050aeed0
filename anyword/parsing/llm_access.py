"""Who may send which key where: the LLM parser as a shared server (the demo) offers it to its visitors.

Rules (see ``docs/security.md``):

* The operator's key (``OPENAI_API_KEY``) only ever goes to the operator's endpoint, the base URL set at launch
  (``--llm-base-url`` / ``ANYWORD_LLM_BASE_URL``, else ``OPENAI_BASE_URL``, else OpenAI's API).
* A visitor may name another endpoint only where the operator allows it (``visitor_urls``), must then bring their own
  key, and on a public server (``refuse_private``) the address must resolve to public IPs only, so the server cannot
  be used to probe its own network. A visitor's key serves that one request and is never stored.
* At most ``max_concurrent`` LLM calls run at once; a parse that finds them all busy is parsed by spaCy instead at
  once, so slow or silent LLM servers never hold up anybody's parse.
* What goes wrong on the LLM side reaches the visitor as one generic sentence; details go to the server log
  (never with a key).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from collections.abc import Callable
from urllib.parse import urlsplit

from anyword.errors import AnywordError
from anyword.parsing.concepts import CaptionParser, ParseResult
from anyword.parsing.openai_parser import DEFAULT_MODEL, OpenAIParser

logger = logging.getLogger(__name__)

LLM_FAILED = "The LLM parser could not be used"
LLM_BUSY = "The LLM parser is busy"


class EndpointRefused(AnywordError):
    """A visitor-typed LLM base URL that this server will not contact."""


def resolve_host(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (the DNS lookup the connection would make)."""
    return sorted({info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)})


def check_public_url(url: str, resolve: Callable[[str, int], list[str]] = resolve_host) -> str:
    """``url`` if it is http(s) and every address it resolves to is public; else :class:`EndpointRefused`.

    Loopback, private (RFC 1918, unique-local), link-local (cloud metadata at 169.254.169.254), multicast, reserved
    and unspecified addresses are refused, after DNS resolution, so a name pointing inside cannot pass.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise EndpointRefused("The LLM base URL must be an http:// or https:// address with a host name.")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addresses = resolve(parts.hostname, port)
    except (OSError, ValueError, UnicodeError):
        raise EndpointRefused("The LLM base URL's host could not be resolved.") from None
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if not ip.is_global or ip.is_multicast:
            raise EndpointRefused(
                "The LLM base URL points to a private, loopback or link-local address; this server does not "
                "contact those."
            )
    return url


class LLMAccess:
    """The LLM parser as offered to visitors of a shared server.

    Args:
        base_url: the operator's endpoint (``None``: ``OPENAI_BASE_URL`` or OpenAI's API).
        visitor_urls: whether visitors may name another endpoint (they must bring their own key).
        refuse_private: refuse visitor endpoints that resolve to non-public addresses (on for public servers).
        max_concurrent: LLM calls at once; more parses fall back to spaCy at once.
        timeout_s: seconds an LLM call may take.
        resolve: host -> addresses, for the address check (tests pass their own).
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        visitor_urls: bool = False,
        refuse_private: bool = True,
        max_concurrent: int = 2,
        timeout_s: float = 20.0,
        resolve: Callable[[str, int], list[str]] = resolve_host,
    ):
        self.base_url = base_url or None
        self.visitor_urls = visitor_urls
        self.refuse_private = refuse_private
        self.timeout_s = timeout_s
        self._resolve = resolve
        self._slots = threading.BoundedSemaphore(max_concurrent)

    def __repr__(self) -> str:
        return (
            f"LLMAccess(base_url={self.base_url!r}, visitor_urls={self.visitor_urls}, "
            f"refuse_private={self.refuse_private})"
        )

    def parser(
        self, fallback: CaptionParser, visitor_url: str = "", visitor_key: str = "", model: str = ""
    ) -> OpenAIParser:
        """The parser for one request, after the rules above; raises :class:`EndpointRefused` when they forbid it."""
        visitor_url, visitor_key = (visitor_url or "").strip(), (visitor_key or "").strip()
        if visitor_url:
            if not self.visitor_urls:
                raise EndpointRefused(
                    "This server only uses its own LLM endpoint: leave the base URL empty (the operator can allow "
                    "visitor endpoints at launch)."
                )
            if not visitor_key:
                raise EndpointRefused(
                    "A custom LLM base URL needs your own API key: this server's key is only sent to its own endpoint."
                )
            if self.refuse_private:
                check_public_url(visitor_url, self._resolve)
        return OpenAIParser(
            model=(model or "").strip() or DEFAULT_MODEL,
            base_url=visitor_url or self.base_url,
            # None reads the operator's OPENAI_API_KEY; a visitor URL always came with the visitor's own key.
            api_key=visitor_key or None,
            timeout_s=self.timeout_s,
            settings=fallback.settings,
            fallback=fallback,
        )

    def parse(
        self, caption: str, fallback: CaptionParser, visitor_url: str = "", visitor_key: str = "", model: str = ""
    ) -> tuple[ParseResult, str | None]:
        """Parse with the LLM where the rules and a free slot allow, else with ``fallback``.

        Returns the result and, when the LLM was not used, one sentence for the visitor saying so (the reason
        itself goes to the log only).
        """
        parser = self.parser(fallback, visitor_url, visitor_key, model)
        if not self._slots.acquire(blocking=False):
            return fallback.parse(caption), f"{LLM_BUSY}; spaCy parsed the caption instead."
        try:
            result = parser.parse(caption)
        finally:
            self._slots.release()
        if result.fallback_reason:
            where = "a visitor's endpoint" if visitor_url else "the operator's endpoint"
            logger.warning("LLM parse via %s failed: %s", where, result.fallback_reason)
            return result, f"{LLM_FAILED}; spaCy parsed the caption instead."
        return result, None
