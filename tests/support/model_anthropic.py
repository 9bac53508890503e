"""The Anthropic Messages API (Claude Code) for scripted_model.py.

POST /v1/messages: a main-loop request (its `tools` include "Bash") gets the next
scripted step as one tool_use block, stop_reason "tool_use"; the step index is the
number of scripted tool_use blocks already in `messages` (ids "toolu_scripted_..."), so
the server is stateless and retries are idempotent. After the last step: the final text.
Requests without the Bash tool (titles, topic detection, summaries) get the side text.
`stream: true` -> SSE exactly like Anthropic's.  Also: count_tokens.
"""
import json
import uuid

from scripted_text import text_of

TOOL_ID_PREFIX = "toolu_scripted_"


def handles(method, path):
    return path.startswith("/v1/messages")


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
                    "content": text_of(b.get("content")),
                })
    return {
        "model": body.get("model"),
        "stream": body.get("stream"),
        "n_messages": len(msgs),
        "tools": tools if len(tools) <= 12 else tools[:12] + ["...+%d" % (len(tools) - 12)],
        "last_user_head": text_of(last_user.get("content"))[:200] if last_user else None,
        "tool_results": tool_results,
        # Text the agent sent beside the tool results since the model's last turn:
        # its own reminders, and what hooks added (Claude Code puts a hook's
        # `additionalContext` in a message of its own).
        "notes": notes_since_last_turn(msgs),
    }, tools


def notes_since_last_turn(msgs):
    last = max((i for i, m in enumerate(msgs) if m.get("role") == "assistant"), default=-1)
    notes = []
    for m in msgs[last + 1:]:
        for b in blocks(m):
            if isinstance(b, dict) and b.get("type") == "text":
                notes.append(text_of(b.get("text"))[:4000])
    return notes


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


def plan_reply(req):
    """Return (content_blocks, stop_reason, kind, summary)."""
    body = req.body or {}
    summary, tools = summarize(body)
    if "Bash" not in tools:
        return [{"type": "text", "text": req.side_text}], "end_turn", "side", summary
    idx = issued_count(body.get("messages") or [])
    if idx < len(req.commands):
        item = req.commands[idx]
        name = "Bash"
        if isinstance(item, str):
            inp = {"command": item, "description": "scripted"}
        else:
            name, inp = item["tool"], item["input"]
        block = {"type": "tool_use", "id": TOOL_ID_PREFIX + uuid.uuid4().hex[:20],
                 "name": name, "input": inp}
        return [block], "tool_use", "command#%d" % idx, summary
    return [{"type": "text", "text": req.final_text}], "end_turn", "final", summary


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


def reply(req):
    if req.path == "/v1/messages/count_tokens":
        n = len(json.dumps(req.body or {}))
        return {"status": 200, "content_type": "application/json",
                "payload": json.dumps({"input_tokens": max(1, n // 4)}).encode(),
                "log": {"kind": "count_tokens"}}
    if req.method != "POST" or req.path != "/v1/messages":
        return None
    content, stop, kind, summary = plan_reply(req)
    log = dict(summary, kind=kind, reply={"stop_reason": stop, "content": content})
    msg_id = "msg_" + uuid.uuid4().hex[:24]
    model = (req.body or {}).get("model") or "claude-scripted"
    if (req.body or {}).get("stream"):
        return {"status": 200, "content_type": "text/event-stream",
                "headers": {"Cache-Control": "no-cache"},
                "payload": build_sse(msg_id, model, content, stop), "log": log}
    return {"status": 200, "content_type": "application/json",
            "payload": json.dumps({"id": msg_id, "type": "message", "role": "assistant",
                                   "model": model, "content": content, "stop_reason": stop,
                                   "stop_sequence": None, "usage": usage()}).encode(),
            "log": log}
