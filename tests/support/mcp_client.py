#!/usr/bin/env python3
"""Scripted MCP client for the end-to-end kernel tests: drives an MCP server over stdio
the way an agent does, so the test can run a real MCP server under
`agentwarden run --profile mcp-server` with no model at all.

Stdlib only.  Usage:

    MCP_SCRIPT='[{"tool": "read_text_file", "arguments": {"path": "notes.txt"}}, ...]' \\
    python3 mcp_client.py --log FILE [--timeout SECS] [--exit-timeout SECS] \\
        -- <server argv...>

The script (env MCP_SCRIPT, or a file named by env MCP_SCRIPT_FILE) is a JSON list of
steps {"tool": NAME, "arguments": {...}, "timeout": SECS (optional, overrides
--timeout)}.  The client starts the server with the given argv (stdin and stdout are
the JSON-RPC pipe, stderr is passed through), then speaks MCP's stdio transport:
newline-delimited JSON-RPC 2.0 messages,

    initialize (protocolVersion 2025-11-25, no client capabilities: no roots, so a
                server such as server-filesystem keeps the directories of its argv)
    notifications/initialized
    tools/list (followed through nextCursor)
    tools/call for each step, in order, one at a time, each with its timeout

then closes the server's stdin and waits for it to exit.  Requests the server sends
to the client are answered (ping with {}, anything else with -32601), notifications
from it are ignored.

The log gets one JSON line per step:
    {"step": i, "tool": NAME, "is_error": bool, "content": TEXT, "error": STR|null,
     "elapsed": SECS}
is_error is true for a result with isError, a JSON-RPC error, no answer in time, or
a server gone; content is the text of the result's content blocks joined by "\\n"
(non-text blocks as a short placeholder); error is the JSON-RPC error
("JSON-RPC error CODE: MESSAGE"), "timeout after N s" or "server exited (...)",
null when the server answered with a result.

Exit status (the reason is also printed on stderr, prefixed "mcp_client:"):
    0  every step answered, and the server was alive until its stdin was closed
    2  usage or script error
    3  the server failed the handshake (initialize or tools/list: error, no answer, exit)
    4  some step got no answer in time (the server stayed up)
    5  the server exited (or closed its stdout) before its stdin was closed
    6  the server did not exit within --exit-timeout after its stdin was closed
       (it was then killed); every step had been answered
"""
import argparse
import json
import os
import queue
import subprocess
import sys
import threading
import time

PROTOCOL_VERSION = "2025-11-25"
CLIENT_INFO = {"name": "agentwarden-test-client", "version": "1.0"}


def say(msg):
    print(f"mcp_client: {msg}", file=sys.stderr, flush=True)


class ServerGone(Exception):
    pass


class Timeout(Exception):
    pass


class RpcError(Exception):
    def __init__(self, err):
        self.err = err if isinstance(err, dict) else {"message": str(err)}
        super().__init__(self.text())

    def text(self):
        return f"JSON-RPC error {self.err.get('code')}: {self.err.get('message')}"


class Connection:
    """One server process and the JSON-RPC stream over its stdin/stdout."""

    def __init__(self, argv):
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0
        )
        self.write_lock = threading.Lock()
        self.pending = {}  # id -> queue.Queue(1)
        self.pending_lock = threading.Lock()
        self.next_id = 1
        self.eof = threading.Event()
        self.noise = 0  # stdout lines that are not JSON-RPC messages
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _send(self, msg):
        data = (json.dumps(msg, ensure_ascii=False) + "\n").encode("utf-8")
        with self.write_lock:
            try:
                self.proc.stdin.write(data)
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError, ValueError) as e:
                raise ServerGone(f"write to server failed: {e}")

    def _read(self):
        out = self.proc.stdout
        while True:
            line = out.readline()
            if not line:
                break
            line = line.strip()
            if not line:
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                self.noise += 1
                say(f"non-JSON line on the server's stdout: {line[:200]!r}")
                continue
            msgs = msg if isinstance(msg, list) else [msg]
            for m in msgs:
                if isinstance(m, dict):
                    self._dispatch(m)
        self.eof.set()
        with self.pending_lock:
            waiting = list(self.pending.values())
        for q in waiting:
            try:
                q.put_nowait(None)  # wake the waiter: the server is gone
            except queue.Full:
                pass

    def _dispatch(self, m):
        if "method" in m:
            if "id" in m:  # a request from the server to us
                if m["method"] == "ping":
                    reply = {"jsonrpc": "2.0", "id": m["id"], "result": {}}
                else:
                    reply = {
                        "jsonrpc": "2.0",
                        "id": m["id"],
                        "error": {"code": -32601, "message": f"Method not found: {m['method']}"},
                    }
                try:
                    self._send(reply)
                except ServerGone:
                    pass
            return  # notifications (logging, progress, list_changed): ignored
        if "id" in m:
            with self.pending_lock:
                q = self.pending.get(m["id"])
            if q is not None:
                try:
                    q.put_nowait(m)
                except queue.Full:
                    pass

    def notify(self, method, params=None):
        msg = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            msg["params"] = params
        self._send(msg)

    def request(self, method, params, timeout):
        """The result of a request; raises RpcError, Timeout or ServerGone."""
        rid = self.next_id
        self.next_id += 1
        q = queue.Queue(1)
        with self.pending_lock:
            self.pending[rid] = q
        try:
            if self.eof.is_set():
                raise ServerGone(self.gone_reason())
            self._send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
            try:
                m = q.get(timeout=timeout)
            except queue.Empty:
                # Answer to no one from now on; a late reply is dropped.
                raise Timeout(f"timeout after {timeout:g} s")
            if m is None:
                raise ServerGone(self.gone_reason())
            if "error" in m:
                raise RpcError(m["error"])
            return m.get("result") or {}
        finally:
            with self.pending_lock:
                self.pending.pop(rid, None)

    def gone_reason(self):
        try:
            rc = self.proc.wait(timeout=2)
            return f"server exited (rc={rc})"
        except subprocess.TimeoutExpired:
            return "server closed its stdout (process still running)"

    def alive(self):
        return self.proc.poll() is None and not self.eof.is_set()

    def close(self, exit_timeout):
        """Close stdin, wait for exit; returns (exited_by_itself, returncode)."""
        with self.write_lock:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        try:
            rc = self.proc.wait(timeout=exit_timeout)
            return True, rc
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            try:
                rc = self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                rc = self.proc.wait()
            return False, rc


def text_of(result):
    parts = []
    for block in result.get("content") or []:
        if not isinstance(block, dict):
            parts.append(str(block))
            continue
        kind = block.get("type")
        if kind == "text":
            parts.append(block.get("text", ""))
        elif kind == "resource":
            res = block.get("resource") or {}
            parts.append(res.get("text") if "text" in res else f"[resource {res.get('uri')}]")
        elif kind == "resource_link":
            parts.append(f"[resource_link {block.get('uri')}]")
        else:
            parts.append(f"[{kind} {block.get('mimeType', '')}]")  # image, audio
    return "\n".join(parts)


def load_script():
    raw = None
    if os.environ.get("MCP_SCRIPT_FILE"):
        with open(os.environ["MCP_SCRIPT_FILE"], encoding="utf-8") as f:
            raw = f.read()
    elif os.environ.get("MCP_SCRIPT"):
        raw = os.environ["MCP_SCRIPT"]
    if raw is None:
        raise ValueError("no script: set MCP_SCRIPT (or MCP_SCRIPT_FILE) to a JSON list")
    steps = json.loads(raw)
    if not isinstance(steps, list):
        raise ValueError("the script must be a JSON list")
    for i, s in enumerate(steps):
        if not isinstance(s, dict) or not isinstance(s.get("tool"), str):
            raise ValueError(f"step {i}: expected {{\"tool\": NAME, \"arguments\": {{...}}}}")
        if not isinstance(s.get("arguments", {}), dict):
            raise ValueError(f"step {i}: arguments must be an object")
    return steps


def main():
    ap = argparse.ArgumentParser(description="Scripted MCP stdio client")
    ap.add_argument("--log", required=True, help="JSON-lines log, one line per step")
    ap.add_argument("--timeout", type=float, default=30.0, help="per-call timeout (s)")
    ap.add_argument("--init-timeout", type=float, default=60.0,
                    help="timeout of initialize and tools/list (s)")
    ap.add_argument("--exit-timeout", type=float, default=10.0,
                    help="how long to wait for the server to exit after stdin closes (s)")
    ap.add_argument("server", nargs=argparse.REMAINDER, help="-- server argv...")
    args = ap.parse_args()
    argv = args.server[1:] if args.server[:1] == ["--"] else args.server
    if not argv:
        say("no server command (put it after --)")
        return 2
    try:
        steps = load_script()
    except (ValueError, OSError) as e:
        say(f"bad script: {e}")
        return 2

    log = open(args.log, "a", encoding="utf-8")

    def write_log(entry):
        log.write(json.dumps(entry, ensure_ascii=False) + "\n")
        log.flush()

    try:
        conn = Connection(argv)
    except OSError as e:
        say(f"cannot start the server {argv[0]!r}: {e}")
        return 3

    # Handshake.
    try:
        init = conn.request(
            "initialize",
            {"protocolVersion": PROTOCOL_VERSION, "capabilities": {}, "clientInfo": CLIENT_INFO},
            args.init_timeout,
        )
        info = init.get("serverInfo") or {}
        say(f"server {info.get('name')} {info.get('version')}, protocol {init.get('protocolVersion')}")
        conn.notify("notifications/initialized")
        tools, cursor = [], None
        while True:
            res = conn.request("tools/list", {"cursor": cursor} if cursor else {}, args.init_timeout)
            tools += [t.get("name") for t in res.get("tools") or []]
            cursor = res.get("nextCursor")
            if not cursor:
                break
        say(f"tools: {', '.join(map(str, tools))}")
    except (RpcError, Timeout, ServerGone) as e:
        say(f"handshake failed: {e}")
        conn.close(min(args.exit_timeout, 3))
        return 3

    for i, s in enumerate(steps):
        if s["tool"] not in tools:
            say(f"step {i}: tool {s['tool']!r} is not in the server's tools/list")

    # The scripted calls, in order.
    unanswered = []
    gone = None
    for i, s in enumerate(steps):
        timeout = float(s.get("timeout", args.timeout))
        entry = {"step": i, "tool": s["tool"], "is_error": True, "content": "", "error": None}
        t0 = time.monotonic()
        if gone is not None:
            entry["error"] = gone
        else:
            try:
                res = conn.request(
                    "tools/call", {"name": s["tool"], "arguments": s.get("arguments", {})}, timeout
                )
                entry["is_error"] = bool(res.get("isError"))
                entry["content"] = text_of(res)
            except RpcError as e:
                entry["error"] = e.text()
            except Timeout as e:
                entry["error"] = str(e)
                unanswered.append(i)
            except ServerGone as e:
                gone = str(e)
                entry["error"] = gone
        entry["elapsed"] = round(time.monotonic() - t0, 3)
        write_log(entry)

    alive = gone is None and conn.alive()
    if alive:
        exited, rc = conn.close(args.exit_timeout)
    else:
        if gone is None:
            gone = conn.gone_reason()
        exited, rc = conn.close(1)
    log.close()

    if not alive:
        say(f"the server exited before its stdin was closed: {gone}")
        return 5
    if unanswered:
        say(f"no answer in time to step(s) {', '.join(map(str, unanswered))}")
        return 4
    if not exited:
        say(f"the server did not exit within {args.exit_timeout:g} s of its stdin closing; killed (rc={rc})")
        return 6
    say(f"all {len(steps)} step(s) answered; the server exited with rc={rc} after its stdin closed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
