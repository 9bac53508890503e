#!/usr/bin/env python3
"""Scripted Anthropic Messages API server for driving the real Claude Code CLI in the
end-to-end kernel test (tests/kernel.rs): the model's turns are a fixed list of Bash
tool calls, so the test knows exactly what the agent will run.

Stdlib only.  Usage:

    python3 model_server.py [PORT] [--log FILE] [--port-file FILE] [--commands-file FILE]

PORT 0 (default) picks a free port.  The chosen port is printed on stdout as
"PORT=<n>" (flushed) and, with --port-file, written to that file.

Script of Bash commands, first match wins:
  --commands-file FILE / env SCRIPTED_COMMANDS_FILE : JSON list, re-read on every request
  env SCRIPTED_COMMANDS                             : JSON list, read at start-up
An element may be a string (the command) or an object
{"command": ..., "description": ..., "timeout": ms}, or another tool's call
{"tool": "Read", "input": {"file_path": ...}} (a tool the agent runs in its own process).

Behaviour of POST /v1/messages:
  * request whose `tools` contain no tool named "Bash" (side requests: titles,
    topic detection, summaries, ...): a short plain-text answer
    (env SCRIPTED_SIDE_TEXT, default "ok"); never consumes a command.
  * main-loop request (has the Bash tool): the command index is derived from the
    conversation itself = number of Bash tool_use blocks we already issued in
    `messages` (ids starting with "toolu_scripted_").  So the server is
    stateless, retries are idempotent, and two concurrent sessions do not
    interfere.  If index < len(commands): one tool_use block
    {"command": cmd, "description": "scripted"} with stop_reason "tool_use";
    else a final text (env SCRIPTED_FINAL_TEXT, default "done"), stop_reason "end_turn".
  * `stream: true` -> SSE exactly like Anthropic's; otherwise one JSON message.

Every request is logged as one JSON line (path, method, selected headers, body
summary, and the full tool_result contents of the last user message) to
--log FILE / env SCRIPTED_LOG (default ./model_server.log.jsonl).
"""
import json
import os
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOOL_ID_PREFIX = "toolu_scripted_"
LOG_LOCK = threading.Lock()
CONFIG = {
    "log": os.environ.get("SCRIPTED_LOG", "model_server.log.jsonl"),
    "commands_file": os.environ.get("SCRIPTED_COMMANDS_FILE"),
    "commands_env": os.environ.get("SCRIPTED_COMMANDS"),
    "final_text": os.environ.get("SCRIPTED_FINAL_TEXT", "done"),
    "side_text": os.environ.get("SCRIPTED_SIDE_TEXT", "ok"),
}


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


def text_of(content):
    """Flatten a message/tool_result content (str or list of blocks) to text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    out = []
    for b in content:
        if isinstance(b, dict):
            if b.get("type") == "text":
                out.append(b.get("text", ""))
            elif b.get("type") == "tool_result":
                out.append(text_of(b.get("content")))
            else:
                out.append("<%s>" % b.get("type"))
        else:
            out.append(str(b))
    return "\n".join(out)


def blocks(msg):
    c = msg.get("content")
    if isinstance(c, str):
        return [{"type": "text", "text": c}]
    return c or []


def summarize(body):
    msgs = body.get("messages") or []
    tools = [t.get("name") for t in (body.get("tools") or []) if isinstance(t, dict)]
    last_user = next((m for m in reversed(msgs) if m.get("role") == "user"), None)
    tool_results = []
    if last_user:
        for b in blocks(last_user):
            if isinstance(b, dict) and b.get("type") == "tool_result":
                tool_results.append({
                    "tool_use_id": b.get("tool_use_id"),
                    "is_error": b.get("is_error", False),
                    "content": b.get("content"),
                })
    return {
        "model": body.get("model"),
        "stream": body.get("stream"),
        "max_tokens": body.get("max_tokens"),
        "n_messages": len(msgs),
        "n_tools": len(tools),
        "tools": tools if len(tools) <= 12 else tools[:12] + ["...+%d" % (len(tools) - 12)],
        "has_bash": "Bash" in tools,
        "system_head": text_of(body.get("system"))[:120] if body.get("system") else None,
        "last_user_head": text_of(last_user.get("content"))[:200] if last_user else None,
        "tool_results": tool_results,
    }, last_user, tools


def issued_count(msgs):
    n = 0
    for m in msgs:
        if m.get("role") != "assistant":
            continue
        for b in blocks(m):
            if (isinstance(b, dict) and b.get("type") == "tool_use"
                    and str(b.get("id", "")).startswith(TOOL_ID_PREFIX)):
                n += 1
    return n


def plan_reply(body):
    """Return (content_blocks, stop_reason, kind)."""
    summary, last_user, tools = summarize(body)
    if "Bash" not in tools:
        return [{"type": "text", "text": CONFIG["side_text"]}], "end_turn", "side", summary
    cmds = load_commands()
    idx = issued_count(body.get("messages") or [])
    if idx < len(cmds):
        item = cmds[idx]
        name = "Bash"
        if isinstance(item, str):
            inp = {"command": item, "description": "scripted"}
        elif "tool" in item:
            name, inp = item["tool"], item["input"]
        else:
            inp = {"command": item["command"], "description": item.get("description", "scripted")}
            if "timeout" in item:
                inp["timeout"] = item["timeout"]
        block = {"type": "tool_use", "id": TOOL_ID_PREFIX + uuid.uuid4().hex[:20],
                 "name": name, "input": inp}
        return [block], "tool_use", "command#%d" % idx, summary
    return [{"type": "text", "text": CONFIG["final_text"]}], "end_turn", "final", summary


def usage(inp=10, out=5):
    return {"input_tokens": inp, "output_tokens": out,
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}


def sse(event, data):
    return ("event: %s\ndata: %s\n\n" % (event, json.dumps(data, separators=(",", ":")))).encode()


def build_sse(msg_id, model, content, stop_reason):
    parts = [sse("message_start", {"type": "message_start", "message": {
        "id": msg_id, "type": "message", "role": "assistant", "model": model,
        "content": [], "stop_reason": None, "stop_sequence": None, "usage": usage(10, 1)}})]
    for i, b in enumerate(content):
        if b["type"] == "text":
            parts.append(sse("content_block_start", {"type": "content_block_start", "index": i,
                             "content_block": {"type": "text", "text": ""}}))
            if i == 0:
                parts.append(sse("ping", {"type": "ping"}))
            parts.append(sse("content_block_delta", {"type": "content_block_delta", "index": i,
                             "delta": {"type": "text_delta", "text": b["text"]}}))
        elif b["type"] == "tool_use":
            parts.append(sse("content_block_start", {"type": "content_block_start", "index": i,
                             "content_block": {"type": "tool_use", "id": b["id"], "name": b["name"], "input": {}}}))
            if i == 0:
                parts.append(sse("ping", {"type": "ping"}))
            js = json.dumps(b["input"])
            # Split the JSON in two chunks, like the real API does incrementally.
            cut = max(1, len(js) // 2)
            for piece in (js[:cut], js[cut:]):
                parts.append(sse("content_block_delta", {"type": "content_block_delta", "index": i,
                                 "delta": {"type": "input_json_delta", "partial_json": piece}}))
        parts.append(sse("content_block_stop", {"type": "content_block_stop", "index": i}))
    parts.append(sse("message_delta", {"type": "message_delta",
                     "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                     "usage": {"output_tokens": 5}}))
    parts.append(sse("message_stop", {"type": "message_stop"}))
    return b"".join(parts)


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
        return raw

    def _send(self, code, payload, ctype="application/json", extra=None):
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("request-id", "req_" + uuid.uuid4().hex[:24])
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _hdrs(self):
        keep = ("user-agent", "anthropic-version", "anthropic-beta", "x-app", "x-api-key",
                "authorization", "content-type", "x-stainless-retry-count")
        h = {k.lower(): v for k, v in self.headers.items() if k.lower() in keep}
        for k in ("x-api-key", "authorization"):
            if k in h:
                h[k] = h[k][:10] + "..."
        return h

    def _handle(self):
        raw = self._read_body() if self.command in ("POST", "PUT", "PATCH") else b""
        path = self.path.split("?", 1)[0]
        ev = {"method": self.command, "path": self.path, "headers": self._hdrs()}
        body = None
        if raw:
            try:
                body = json.loads(raw)
            except Exception:
                ev["body_head"] = raw[:200].decode("utf-8", "replace")
        try:
            if self.command == "POST" and path == "/v1/messages":
                content, stop, kind, summary = plan_reply(body or {})
                ev.update(summary)
                ev["reply"] = {"kind": kind, "stop_reason": stop, "content": content}
                log_event(ev)
                msg_id = "msg_" + uuid.uuid4().hex[:24]
                model = (body or {}).get("model") or "claude-scripted"
                if (body or {}).get("stream"):
                    self._send(200, build_sse(msg_id, model, content, stop), "text/event-stream",
                               {"Cache-Control": "no-cache"})
                else:
                    self._send(200, {"id": msg_id, "type": "message", "role": "assistant",
                                     "model": model, "content": content, "stop_reason": stop,
                                     "stop_sequence": None, "usage": usage()})
                return
            if self.command == "POST" and path == "/v1/messages/count_tokens":
                ev["n_messages"] = len((body or {}).get("messages") or [])
                log_event(ev)
                self._send(200, {"input_tokens": max(1, len(raw) // 4)})
                return
            if path in ("/v1/models",) and self.command in ("GET", "HEAD"):
                log_event(ev)
                self._send(200, {"data": [], "has_more": False, "first_id": None, "last_id": None})
                return
            if path in ("/", "/health", "/healthz", "/api/hello") and self.command in ("GET", "HEAD"):
                log_event(ev)
                self._send(200, {"ok": True})
                return
            if body is not None:
                ev["body_keys"] = sorted(body.keys())[:20] if isinstance(body, dict) else type(body).__name__
            ev["unknown"] = True
            log_event(ev)
            self._send(404, {"type": "error", "error": {"type": "not_found_error",
                                                        "message": "scripted server: %s not implemented" % path}})
        except Exception as e:  # report server bugs loudly, both to log and client
            ev["server_error"] = repr(e)
            log_event(ev)
            self._send(500, {"type": "error", "error": {"type": "api_error", "message": repr(e)}})

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
