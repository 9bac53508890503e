#!/usr/bin/env python3
"""Scripted model server for driving real agents in the end-to-end kernel tests
(tests/kernel/agents/): the model's turns are a fixed list of tool calls, so a test knows
exactly what the agent will run, and it judges what the agent sent back.

Stdlib only.  Usage:

    python3 scripted_model.py [PORT] [--log FILE] [--port-file FILE] [--commands-file FILE]

PORT 0 (default) picks a free port, printed on stdout as "PORT=<n>" and, with
--port-file, written to that file.

The script of steps (first found wins):
  --commands-file FILE / env SCRIPTED_COMMANDS_FILE : JSON list, re-read on every request
  env SCRIPTED_COMMANDS                             : JSON list, read at start-up
A step is a string (a command for the agent's shell tool) or {"tool": NAME, "input": {...}}
(a call of one of the agent's own tools, run in its own process).

Each API is a module `model_<api>.py` beside this file (Anthropic Messages, OpenAI
Responses, OpenAI chat completions, Gemini); a request goes to the first whose
`handles(method, path)` is true, and its `reply(req)` returns the status, content type,
payload and a log record.  Every module is stateless: the step index comes from the
conversation in the request, so retries and side requests (titles, summaries, routing)
never consume a step.  Every request is logged as one JSON line (--log FILE / env
SCRIPTED_LOG), with `tool_results`: what the agent returned to the model for the
previous turn's tool calls, [{"is_error": bool, "content": str}].
"""
import importlib
import json
import os
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

LOG_LOCK = threading.Lock()
CONFIG = {
    "log": os.environ.get("SCRIPTED_LOG", "model_server.log.jsonl"),
    "commands_file": os.environ.get("SCRIPTED_COMMANDS_FILE"),
    "commands_env": os.environ.get("SCRIPTED_COMMANDS"),
    "final_text": os.environ.get("SCRIPTED_FINAL_TEXT", "done"),
    "side_text": os.environ.get("SCRIPTED_SIDE_TEXT", "ok"),
}
MODULES = []


def load_modules():
    """The API modules beside this file, in a fixed order."""
    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:
        sys.path.insert(0, here)
    names = sorted(f[:-3] for f in os.listdir(here)
                   if f.startswith("model_") and f.endswith(".py"))
    return [importlib.import_module(n) for n in names]


def load_commands():
    raw = None
    if CONFIG["commands_file"]:
        with open(CONFIG["commands_file"], encoding="utf-8") as f:
            raw = f.read()
    elif CONFIG["commands_env"]:
        raw = CONFIG["commands_env"]
    if not raw:
        return []
    cmds = json.loads(raw)
    if not isinstance(cmds, list):
        raise ValueError("scripted commands must be a JSON list")
    return cmds


def log_event(ev):
    ev["ts"] = round(time.time(), 3)
    line = json.dumps(ev, ensure_ascii=False)
    with LOG_LOCK:
        with open(CONFIG["log"], "a", encoding="utf-8") as f:
            f.write(line + "\n")


class Request:
    """What a module's reply() sees."""

    def __init__(self, method, path, query, headers, body):
        self.method, self.path, self.query, self.headers, self.body = (
            method, path, query, headers, body)
        self.commands = load_commands()
        self.final_text = CONFIG["final_text"]
        self.side_text = CONFIG["side_text"]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "scripted-model/1.0"

    def log_message(self, fmt, *args):  # silence stderr access log
        pass

    def _read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        if self.headers.get("Content-Encoding") == "gzip" and raw:
            import gzip
            raw = gzip.decompress(raw)
        elif self.headers.get("Content-Encoding") == "zstd" and raw:
            raise ValueError("zstd request bodies are not supported")
        return raw

    def _send(self, code, payload, ctype="application/json", extra=None):
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("request-id", "req_" + uuid.uuid4().hex[:24])
        self.send_header("x-request-id", "req_" + uuid.uuid4().hex[:24])
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _hdrs(self):
        keep = ("user-agent", "anthropic-version", "anthropic-beta", "x-app", "content-type",
                "x-stainless-retry-count", "openai-beta", "x-goog-api-client")
        return {k.lower(): v for k, v in self.headers.items() if k.lower() in keep}

    def _handle(self):
        url = urlsplit(self.path)
        ev = {"method": self.command, "path": self.path, "headers": self._hdrs()}
        try:
            raw = self._read_body() if self.command in ("POST", "PUT", "PATCH") else b""
            body = None
            if raw:
                try:
                    body = json.loads(raw)
                except ValueError:
                    ev["body_head"] = raw[:200].decode("utf-8", "replace")
            req = Request(self.command, url.path, dict(parse_qsl(url.query)),
                          {k.lower(): v for k, v in self.headers.items()}, body)
            for m in MODULES:
                if m.handles(req.method, req.path):
                    r = m.reply(req)
                    if r is None:
                        continue
                    ev["api"] = m.__name__
                    ev.update(r.get("log") or {})
                    log_event(ev)
                    self._send(r["status"], r["payload"], r["content_type"], r.get("headers"))
                    return
            if url.path == "/v1/models" and self.command in ("GET", "HEAD"):
                # Anthropic's and OpenAI's model lists in one shape (an empty list).
                log_event(ev)
                self._send(200, {"object": "list", "data": [], "has_more": False,
                                 "first_id": None, "last_id": None})
                return
            if url.path in ("/", "/health", "/healthz") and self.command in ("GET", "HEAD"):
                log_event(ev)
                self._send(200, {"ok": True})
                return
            if isinstance(body, dict):
                ev["body_keys"] = sorted(body.keys())[:20]
            ev["unknown"] = True
            log_event(ev)
            self._send(404, {"error": {"type": "not_found_error", "code": 404,
                                       "message": "scripted server: %s not implemented" % url.path}})
        except Exception as e:  # report server bugs loudly, both to log and client
            ev["server_error"] = repr(e)
            log_event(ev)
            self._send(500, {"error": {"type": "api_error", "code": 500, "message": repr(e)}})

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle


def main(argv):
    port, port_file = 0, None
    it = iter(argv)
    for a in it:
        if a == "--log":
            CONFIG["log"] = next(it)
        elif a == "--port-file":
            port_file = next(it)
        elif a == "--commands-file":
            CONFIG["commands_file"] = next(it)
        else:
            port = int(a)
    load_commands()  # fail fast on a malformed script
    MODULES.extend(load_modules())
    srv = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    srv.daemon_threads = True
    real_port = srv.server_address[1]
    if port_file:
        tmp = port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(real_port))
        os.replace(tmp, port_file)
    print("PORT=%d" % real_port, flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main(sys.argv[1:])
