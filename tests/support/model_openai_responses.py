"""The OpenAI Responses API (OpenAI Codex CLI) for scripted_model.py.

POST /v1/responses: a main-loop request (its `tools` offer a shell tool) gets the next
scripted step as one call item; the step index is the number of scripted calls already in
`input` (call_ids "call_scripted_..."), so the server is stateless and retries are
idempotent.  After the last step: the final text as an assistant message.  Requests without
a shell tool (summaries, titles, memory passes) get the side text.

A string step becomes a call of the shell tool the request offers, first found of:
  exec_command  {"cmd": "<string>", "yield_time_ms": 30000}  (Codex 0.171, its default)
  shell_command {"command": "<string>"}
  shell         {"command": ["bash", "-lc", "<string>"]}
  local_shell   a local_shell_call item, action {"type": "exec", "command": [...]}
(Codex 0.171 offers exec_command only; the other shapes are older Codex's, untested.)
A {"tool": NAME, "input": ...} step calls NAME: a dict input is a function_call with those
arguments (e.g. Codex's view_image {"path": ...}, which reads the file in Codex's own
process), a string input is a custom_tool_call (freeform tools such as apply_patch).

exec_command returns after at most yield_time_ms with "Process running with session ID N"
if the command has not ended; the server then polls it with write_stdin (call_ids
"call_scriptpoll_...", not counted as steps) until it ends, and the chunks are merged into
that step's one result.

The agent returns the results as `function_call_output` / `custom_tool_call_output` /
`local_shell_call_output` input items with the call's call_id; `tool_results` in the log
are those following the last scripted step's call, one per step.  Codex sends no success
flag over the wire, so is_error is derived from the output: an exit code other than 0
("Process exited with code N" / "Exit code: N"), or a plain-text output without an exit
code (a tool error such as "unable to read image at ...: Permission denied (os error 13)",
"unsupported call: ...").  Content items (view_image's input_image) are a success.

`stream: true` -> SSE like OpenAI's (response.created, response.in_progress,
response.output_item.added, argument/text deltas, response.output_item.done,
response.completed); otherwise the response object as JSON.
POST /v1/responses/compact (remote compaction; not seen in short runs): input unchanged.
GET /v1/models?client_version=... (Codex's model catalog, {"models": [...]}): an empty
catalog; other callers of /v1/models fall through to the server's generic list.
"""
import json
import re
import time
import uuid

from scripted_text import text_of

CALL_ID_PREFIX = "call_scripted_"
POLL_ID_PREFIX = "call_scriptpoll_"
SHELL_TOOLS = ("exec_command", "shell_command", "shell", "local_shell")
CALL_TYPES = ("function_call", "custom_tool_call", "local_shell_call")
OUTPUT_TYPES = ("function_call_output", "custom_tool_call_output", "local_shell_call_output")


def handles(method, path):
    p = path.rstrip("/")
    return (p in ("/v1/responses", "/responses", "/v1/responses/compact", "/responses/compact")
            or p in ("/v1/models", "/models"))


def tool_names(body):
    """Names of the offered tools; a tool without a name is known by its type."""
    out = []
    for t in body.get("tools") or []:
        if isinstance(t, dict):
            out.append(t.get("name") or t.get("type"))
    return out


EXIT_RE = re.compile(r"(?:^|\n)(?:Exit code:|Process exited with code)\s*(-?\d+)")


def judge(output):
    """(is_error, exit_code) of one tool output."""
    success = output.get("success") if isinstance(output, dict) else None
    text = text_of(output)
    code = None
    m = EXIT_RE.search(text)
    if m:
        code = int(m.group(1))
    else:  # the JSON form of the legacy shell tool: {"output": ..., "metadata": {"exit_code": N}}
        try:
            js = json.loads(text)
            code = int(js["metadata"]["exit_code"])
        except (ValueError, KeyError, TypeError):
            pass
    if success is not None:
        return (not success), code
    if code is None and isinstance(output, list):
        return False, None  # content items (view_image's input_image): a success
    return (code is None or code != 0), code


def scripted_calls(items):
    """Indices in `input` of the call items we issued."""
    return [i for i, it in enumerate(items)
            if isinstance(it, dict) and it.get("type") in CALL_TYPES
            and str(it.get("call_id", "")).startswith(CALL_ID_PREFIX)]


RUNNING_RE = re.compile(r"(?:^|\n)Process running with session ID (\d+)")


def last_results(items, calls):
    """The outputs that follow the last scripted call, in order; a polled command's
    chunks merged into one result."""
    if not calls:
        return []
    out = []
    for it in items[calls[-1] + 1:]:
        if not (isinstance(it, dict) and it.get("type") in OUTPUT_TYPES):
            continue
        raw = it.get("output")
        text = text_of(raw)
        is_error, code = judge(raw)
        running = RUNNING_RE.search(text) is not None
        if str(it.get("call_id", "")).startswith(POLL_ID_PREFIX) and out:
            prev = out[-1]
            prev["content"] += text
            prev["chunks"] += 1
            prev.update(is_error=is_error and not running, exit_code=code, running=running)
            continue
        out.append({"call_id": it.get("call_id"), "type": it.get("type"),
                    "is_error": is_error and not running, "exit_code": code,
                    "running": running, "chunks": 1, "content": text})
    return out


def running_session(items):
    """The session id of a command still running per the last output item, else None."""
    for it in reversed(items):
        if not isinstance(it, dict):
            continue
        if it.get("type") in OUTPUT_TYPES:
            cid = str(it.get("call_id", ""))
            if cid.startswith(CALL_ID_PREFIX) or cid.startswith(POLL_ID_PREFIX):
                m = RUNNING_RE.search(text_of(it.get("output")))
                return int(m.group(1)) if m else None
            return None
        if it.get("type") in CALL_TYPES:
            continue
        return None
    return None


def summarize(body):
    items = body.get("input")
    if isinstance(items, str):
        items = [{"type": "message", "role": "user", "content": items}]
    items = items or []
    tools = tool_names(body)
    calls = scripted_calls(items)
    last_user = next((it for it in reversed(items) if isinstance(it, dict)
                      and it.get("type", "message") == "message" and it.get("role") == "user"), None)
    return {
        "model": body.get("model"),
        "stream": body.get("stream"),
        "n_input": len(items),
        "previous_response_id": body.get("previous_response_id"),
        "tools": tools if len(tools) <= 16 else tools[:16] + ["...+%d" % (len(tools) - 16)],
        "instructions_head": (body.get("instructions") or "")[:120] or None,
        "last_user_head": text_of(last_user.get("content"))[:200] if last_user else None,
        "tool_results": last_results(items, calls),
        # Text the agent sent since the model's last call: its own messages, and what
        # hooks added (Codex sends a hook's `additionalContext` as a developer message).
        "notes": notes_since_last_call(items),
    }, items, tools, calls


def notes_since_last_call(items):
    last = max((i for i, it in enumerate(items) if isinstance(it, dict)
                and it.get("type") in ("function_call", "local_shell_call", "custom_tool_call")),
               default=-1)
    notes = []
    for it in items[last + 1:]:
        if isinstance(it, dict) and it.get("type", "message") == "message":
            notes.append(text_of(it.get("content"))[:4000])
    return notes


def shell_call(tools, cmd):
    """The output item calling the offered shell tool with `cmd`."""
    call_id = CALL_ID_PREFIX + uuid.uuid4().hex[:20]
    for name in SHELL_TOOLS:
        if name not in tools:
            continue
        if name == "local_shell":
            return {"type": "local_shell_call", "id": "lsh_" + uuid.uuid4().hex[:24],
                    "call_id": call_id, "status": "completed",
                    "action": {"type": "exec", "command": ["bash", "-lc", cmd],
                               "env": {}, "timeout_ms": None, "user": None,
                               "working_directory": None}}
        if name == "exec_command":
            args = {"cmd": cmd, "yield_time_ms": 30000}
        elif name == "shell_command":
            args = {"command": cmd}
        else:
            args = {"command": ["bash", "-lc", cmd]}
        return function_call(call_id, name, args)
    raise ValueError("no shell tool offered (tools: %r)" % (tools,))


def function_call(call_id, name, args):
    return {"type": "function_call", "id": "fc_" + uuid.uuid4().hex[:24], "status": "completed",
            "arguments": json.dumps(args), "call_id": call_id, "name": name}


def tool_call(name, inp):
    call_id = CALL_ID_PREFIX + uuid.uuid4().hex[:20]
    if isinstance(inp, str):
        return {"type": "custom_tool_call", "id": "ctc_" + uuid.uuid4().hex[:24],
                "status": "completed", "call_id": call_id, "name": name, "input": inp}
    return function_call(call_id, name, inp)


def message(text):
    return {"type": "message", "id": "msg_" + uuid.uuid4().hex[:24], "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "annotations": [], "logprobs": [], "text": text}]}


def plan_reply(req):
    """Return (output_items, kind, summary)."""
    body = req.body if isinstance(req.body, dict) else {}
    summary, items, tools, calls = summarize(body)
    if not any(t in tools for t in SHELL_TOOLS):
        return [message(req.side_text)], "side", summary
    idx = len(calls)
    session = running_session(items) if "write_stdin" in tools else None
    if session is not None:
        item = function_call(POLL_ID_PREFIX + uuid.uuid4().hex[:20], "write_stdin",
                             {"session_id": session, "chars": "", "yield_time_ms": 30000})
        return [item], "poll#%d" % (idx - 1), summary
    if idx < len(req.commands):
        step = req.commands[idx]
        if isinstance(step, str):
            item = shell_call(tools, step)
        else:
            item = tool_call(step["tool"], step["input"])
        return [item], "command#%d" % idx, summary
    return [message(req.final_text)], "final", summary


def usage(inp=10, out=5):
    return {"input_tokens": inp, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": out, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": inp + out}


def response_obj(resp_id, model, status, output, body, with_usage):
    return {"id": resp_id, "object": "response", "created_at": int(time.time()),
            "status": status, "background": False, "error": None, "incomplete_details": None,
            "instructions": None, "max_output_tokens": None, "model": model,
            "output": output, "parallel_tool_calls": bool(body.get("parallel_tool_calls")),
            "previous_response_id": None, "reasoning": {"effort": None, "summary": None},
            "store": bool(body.get("store")), "temperature": 1.0,
            "text": {"format": {"type": "text"}}, "tool_choice": "auto", "tools": [],
            "top_p": 1.0, "truncation": "disabled",
            "usage": usage() if with_usage else None, "user": None, "metadata": {}}


def sse(data):
    return ("event: %s\ndata: %s\n\n" % (data["type"], json.dumps(data, separators=(",", ":")))).encode()


def halves(s):
    cut = max(1, len(s) // 2)
    return [p for p in (s[:cut], s[cut:]) if p]


def build_sse(resp_id, model, output, body):
    seq = iter(range(1 << 30))
    parts = []

    def ev(data):
        data["sequence_number"] = next(seq)
        parts.append(sse(data))

    ev({"type": "response.created",
        "response": response_obj(resp_id, model, "in_progress", [], body, False)})
    ev({"type": "response.in_progress",
        "response": response_obj(resp_id, model, "in_progress", [], body, False)})
    for i, item in enumerate(output):
        t = item["type"]
        if t == "message":
            text = item["content"][0]["text"]
            ev({"type": "response.output_item.added", "output_index": i,
                "item": dict(item, status="in_progress", content=[])})
            part = {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}
            ev({"type": "response.content_part.added", "item_id": item["id"],
                "output_index": i, "content_index": 0, "part": part})
            for piece in halves(text):
                ev({"type": "response.output_text.delta", "item_id": item["id"],
                    "output_index": i, "content_index": 0, "delta": piece, "logprobs": []})
            ev({"type": "response.output_text.done", "item_id": item["id"], "output_index": i,
                "content_index": 0, "text": text, "logprobs": []})
            ev({"type": "response.content_part.done", "item_id": item["id"], "output_index": i,
                "content_index": 0, "part": dict(part, text=text)})
        elif t == "function_call":
            ev({"type": "response.output_item.added", "output_index": i,
                "item": dict(item, status="in_progress", arguments="")})
            for piece in halves(item["arguments"]):
                ev({"type": "response.function_call_arguments.delta", "item_id": item["id"],
                    "output_index": i, "delta": piece})
            ev({"type": "response.function_call_arguments.done", "item_id": item["id"],
                "output_index": i, "arguments": item["arguments"]})
        elif t == "custom_tool_call":
            ev({"type": "response.output_item.added", "output_index": i,
                "item": dict(item, status="in_progress", input="")})
            for piece in halves(item["input"]):
                ev({"type": "response.custom_tool_call_input.delta", "item_id": item["id"],
                    "output_index": i, "delta": piece})
            ev({"type": "response.custom_tool_call_input.done", "item_id": item["id"],
                "output_index": i, "input": item["input"]})
        else:
            ev({"type": "response.output_item.added", "output_index": i,
                "item": dict(item, status="in_progress")})
        ev({"type": "response.output_item.done", "output_index": i, "item": item})
    ev({"type": "response.completed",
        "response": response_obj(resp_id, model, "completed", output, body, True)})
    return b"".join(parts)


def reply(req):
    p = req.path.rstrip("/")
    if p.endswith("/models"):
        if req.method not in ("GET", "HEAD") or "client_version" not in req.query:
            return None  # not Codex: the server's generic model list
        payload = {"models": []}
        return {"status": 200, "content_type": "application/json",
                "headers": {"ETag": '"scripted"'},
                "payload": json.dumps(payload).encode(), "log": {"kind": "models"}}
    if req.method != "POST":
        return None
    body = req.body if isinstance(req.body, dict) else {}
    if p.endswith("/compact"):  # remote compaction: keep the conversation as it is
        summary = summarize(body)[0]
        return {"status": 200, "content_type": "application/json",
                "payload": json.dumps({"output": body.get("input") or []}).encode(),
                "log": dict(summary, kind="compact")}
    output, kind, summary = plan_reply(req)
    log = dict(summary, kind=kind, reply=output)
    resp_id = "resp_" + uuid.uuid4().hex[:24]
    model = body.get("model") or "gpt-scripted"
    if body.get("stream"):
        return {"status": 200, "content_type": "text/event-stream",
                "headers": {"Cache-Control": "no-cache"},
                "payload": build_sse(resp_id, model, output, body), "log": log}
    return {"status": 200, "content_type": "application/json",
            "payload": json.dumps(response_obj(resp_id, model, "completed", output, body,
                                               True)).encode(),
            "log": log}
