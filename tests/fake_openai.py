"""A small Chat Completions server on 127.0.0.1 for testing the OpenAI backend with the real ``openai`` client.

Each test sets ``server.reply`` to a function ``(request_json, headers) -> Reply``; the server records every
request it receives in ``server.requests``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Reply:
    status: int = 200
    content: str | None = None  # assistant message content (status 200)
    body: dict | None = None  # raw JSON body (overrides content)
    delay_s: float = 0.0


@dataclass
class Recorded:
    path: str
    headers: dict
    body: dict


def completion(content: str, model: str = "gpt-4o") -> dict:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
    }


def concepts_json(*entries: tuple[str, list[str], str]) -> str:
    """JSON answer listing (noun, adjectives, phrase) objects."""
    return json.dumps(
        {"concepts": [{"noun": n, "adjectives": a, "phrase": p, "kind": "object"} for n, a, p in entries]}
    )


@dataclass
class FakeOpenAIServer:
    reply: Callable[[dict, dict], Reply] = field(default=lambda body, headers: Reply(content='{"concepts": []}'))
    requests: list[Recorded] = field(default_factory=list)

    def start(self) -> FakeOpenAIServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                headers = {k.lower(): v for k, v in self.headers.items()}
                server.requests.append(Recorded(self.path, headers, body))
                reply = server.reply(body, headers)
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                payload = reply.body
                if payload is None:
                    if reply.status == 200:
                        payload = completion(reply.content or "", body.get("model", "gpt-4o"))
                    else:
                        payload = {"error": {"message": f"error {reply.status}", "type": "test", "code": None}}
                data = json.dumps(payload).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout tests)

            def log_message(self, *args):
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self._thread.start()
        return self

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
