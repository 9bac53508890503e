"""Scripted Gemini API (generativelanguage.googleapis.com, v1beta) for driving the real
Gemini CLI (@google/gemini-cli, its @google/genai client) in the end-to-end tests.

Loaded by tests/support/scripted_model.py, which gives each HTTP request to the first
module whose `handles(method, path)` is true.  Stdlib only, stateless.

Endpoints (the CLI is pointed here with GOOGLE_GEMINI_BASE_URL=http://127.0.0.1:<port>):
  POST /v1beta/models/<model>:streamGenerateContent?alt=sse   SSE, `data: <json>\\r\\n\\r\\n`
  POST /v1beta/models/<model>:generateContent                 one JSON GenerateContentResponse
  POST /v1beta/models/<model>:countTokens                     {"totalTokens": n}
  POST /v1beta/models/<model>:embedContent / :batchEmbedContents   zero vectors
  GET  /v1beta/models[/<model>]                               empty list / a stub model
(/v1alpha and /v1 with the same shapes too; a bare GET /v1/models is left to others.)

Main agent loop = a generate request whose `tools` declare the shell tool
`run_shell_command`.  Its step index is the number of functionCall parts already in the
model turns of `contents` (the conversation the CLI sends back), so retries and side
requests never consume a step.  A step is a string (-> run_shell_command {"command": s})
or {"tool": NAME, "input": {...}} (-> functionCall NAME with args input, e.g. read_file
{"file_path": ...}).  After the last step: req.final_text, finishReason STOP.

Everything else (next-speaker check, loop detection, model routing classifier, edit
correction, summaries, compression...) is a side request: if it asks for JSON
(generationConfig.responseMimeType application/json, or a responseSchema /
responseJsonSchema) the answer is a JSON object built from the schema (enums prefer
"user", numbers 0, integers 1, strings req.side_text), else req.side_text.

Tool results come back as functionResponse parts of the last user content:
  {"functionResponse": {"id": ..., "name": ..., "response": {"output": str}}}  success
  {"functionResponse": {..., "response": {"error": str}}}                     tool error
and are logged as tool_results [{"is_error", "content", "name", "id"}].
"""
import json
import re
import uuid

SHELL_TOOL = "run_shell_command"
CALL_ID_PREFIX = "scripted_"
PREFIXES = ("/v1beta/", "/v1alpha/", "/v1/")


def _split(path):
    """'/v1beta/models/gemini-2.5-pro:generateContent' -> ('gemini-2.5-pro', 'generateContent');
    '/v1beta/models' -> ('', ''); '/v1beta/models/x' -> ('x', ''); else None."""
    for pre in PREFIXES:
        if path.startswith(pre):
            rest = path[len(pre):]
            break
    else:
        return None
    if rest in ("models", "models/"):
        return "", ""
    if not rest.startswith("models/"):
        return None
    rest = rest[len("models/"):]
    if ":" in rest:
        model, method = rest.rsplit(":", 1)
        return model, method
    return rest, ""


def handles(method, path):
    sp = _split(path)
    if sp is None:
        return False
    model, meth = sp
    if path.startswith("/v1/") and not meth:
        return False  # GET /v1/models is another API's model list (Anthropic, OpenAI)
    return True


# ---------------------------------------------------------------------------- helpers

def _function_declarations(body):
    names = []
    for t in body.get("tools") or []:
        if isinstance(t, dict):
            for fd in t.get("functionDeclarations") or t.get("function_declarations") or []:
                if isinstance(fd, dict) and fd.get("name"):
                    names.append(fd["name"])
    return names


def _parts(content):
    if not isinstance(content, dict):
        return []
    p = content.get("parts")
    return p if isinstance(p, list) else []


def _issued(contents):
    n, ids = 0, []
    for c in contents:
        if not isinstance(c, dict) or c.get("role") != "model":
            continue
        for p in _parts(c):
            if isinstance(p, dict) and isinstance(p.get("functionCall"), dict):
                n += 1
                ids.append(p["functionCall"].get("id"))
    return n, ids


def _text(parts):
    out = []
    for p in parts:
        if not isinstance(p, dict):
            continue
        if "text" in p and not p.get("thought"):
            out.append(str(p["text"]))
        elif "functionResponse" in p:
            out.append("<functionResponse>")
        elif "functionCall" in p:
            out.append("<functionCall>")
        elif p:
            out.append("<%s>" % next(iter(p)))
    return "\n".join(out)


def _tool_results(contents):
    last_user = next((c for c in reversed(contents)
                      if isinstance(c, dict) and c.get("role", "user") == "user"), None)
    res = []
    for p in _parts(last_user):
        fr = p.get("functionResponse") if isinstance(p, dict) else None
        if not isinstance(fr, dict):
            continue
        r = fr.get("response")
        is_error = isinstance(r, dict) and "error" in r and "output" not in r
        if isinstance(r, dict):
            content = r.get("error") if is_error else r.get("output", r.get("content"))
            if content is None:
                content = json.dumps(r, ensure_ascii=False)
        else:
            content = r
        if not isinstance(content, str):
            content = json.dumps(content, ensure_ascii=False)
        res.append({"id": fr.get("id"), "name": fr.get("name"),
                    "is_error": bool(is_error), "content": content})
    return res, last_user


def _hook_context(tool_results):
    notes = []
    for r in tool_results:
        for m in re.finditer(r"<hook_context>(.*?)</hook_context>", r.get("content") or "", re.S):
            notes.append(m.group(1)[:4000])
    return notes


def _system_text(body):
    si = body.get("systemInstruction") or body.get("system_instruction")
    if isinstance(si, str):
        return si
    return _text(_parts(si)) if si else ""


def _gen_config(body):
    gc = body.get("generationConfig") or body.get("generation_config") or {}
    return gc if isinstance(gc, dict) else {}


def _wants_json(gc):
    mt = str(gc.get("responseMimeType") or gc.get("response_mime_type") or "")
    schema = (gc.get("responseJsonSchema") or gc.get("response_json_schema")
              or gc.get("responseSchema") or gc.get("response_schema"))
    return mt.endswith("json") or bool(schema), schema


def _from_schema(s, side_text, depth=0):
    """A value valid for a JSON schema (OpenAPI-style uppercase types too)."""
    if not isinstance(s, dict) or depth > 8:
        return side_text
    for key in ("anyOf", "any_of", "oneOf", "allOf"):
        if isinstance(s.get(key), list) and s[key]:
            return _from_schema(s[key][0], side_text, depth + 1)
    if "const" in s:
        return s["const"]
    if isinstance(s.get("enum"), list) and s["enum"]:
        e = s["enum"]
        return "user" if "user" in e else e[0]
    t = s.get("type")
    if isinstance(t, list):
        t = next((x for x in t if str(x).lower() != "null"), "string")
    t = str(t or ("object" if "properties" in s else "string")).lower()
    if t == "object":
        props = s.get("properties") or {}
        return {k: _from_schema(v, side_text, depth + 1) for k, v in props.items()}
    if t == "array":
        n = int(s.get("minItems") or s.get("min_items") or 0)
        return [_from_schema(s.get("items") or {}, side_text, depth + 1) for _ in range(n)]
    if t in ("integer", "number"):
        lo = s.get("minimum")
        if isinstance(lo, (int, float)):
            return lo
        # Integers are scores/counts ("1-100": the routing classifier rejects 0); a
        # number is a confidence (loop detection: 0 = not looping).
        return 1 if t == "integer" else 0
    if t == "boolean":
        return False
    if t == "null":
        return None
    return side_text


def _usage(n_in=10, n_out=5):
    return {"promptTokenCount": n_in, "candidatesTokenCount": n_out,
            "totalTokenCount": n_in + n_out}


def _response(model, parts, finish=True, n_in=10, rid=None):
    cand = {"content": {"role": "model", "parts": parts}, "index": 0}
    if finish:
        cand["finishReason"] = "STOP"
    return {"candidates": [cand], "usageMetadata": _usage(n_in),
            "modelVersion": model, "responseId": rid or uuid.uuid4().hex[:22]}


def _sse(chunks):
    return b"".join(("data: %s\r\n\r\n" % json.dumps(c, separators=(",", ":"))).encode()
                    for c in chunks)


def _json(status, obj, log, headers=None):
    return {"status": status, "content_type": "application/json; charset=UTF-8",
            "payload": json.dumps(obj).encode(), "headers": headers or {}, "log": log}


def _error(code, status, message, log):
    return _json(code, {"error": {"code": code, "message": message, "status": status}}, log)


# ------------------------------------------------------------------------------ reply

def reply(req):
    model, meth = _split(req.path) or ("", "")
    body = req.body if isinstance(req.body, dict) else {}
    hdr = req.headers or {}
    key = hdr.get("x-goog-api-key") or hdr.get("authorization") or ""
    log = {"model": model, "method": meth,
           "user_agent": hdr.get("user-agent"), "api_key": (key[:6] + "...") if key else ""}

    if req.method in ("GET", "HEAD"):
        log["kind"] = "side"
        if not model:
            return _json(200, {"models": []}, log)
        return _json(200, {"name": "models/" + model, "displayName": model,
                           "inputTokenLimit": 1048576, "outputTokenLimit": 65536,
                           "supportedGenerationMethods": ["generateContent", "countTokens"]}, log)

    if meth == "countTokens":
        log["kind"] = "side"
        n = max(1, len(json.dumps(body)) // 4)
        return _json(200, {"totalTokens": n}, log)

    if meth in ("embedContent", "batchEmbedContents"):
        log["kind"] = "side"
        vec = {"values": [0.0] * 8}
        if meth == "embedContent":
            return _json(200, {"embedding": vec}, log)
        return _json(200, {"embeddings": [vec for _ in body.get("requests") or [0]]}, log)

    if meth not in ("generateContent", "streamGenerateContent"):
        log["kind"] = "unknown"
        return _error(404, "NOT_FOUND", "scripted server: %s not implemented" % req.path, log)

    contents = body.get("contents") or []
    if not isinstance(contents, list):
        contents = [contents]
    tools = _function_declarations(body)
    gc = _gen_config(body)
    wants_json, schema = _wants_json(gc)
    issued, ids = _issued(contents)
    tool_results, last_user = _tool_results(contents)
    log.update({
        "stream": meth == "streamGenerateContent",
        "n_contents": len(contents),
        "n_tools": len(tools),
        "tools": tools if len(tools) <= 12 else tools[:12] + ["...+%d" % (len(tools) - 12)],
        "has_shell": SHELL_TOOL in tools,
        "issued": issued,
        "issued_ids": ids[-3:],
        "wants_json": wants_json,
        "system_head": _system_text(body)[:120] or None,
        "last_user_head": _text(_parts(last_user))[:200] if last_user else None,
        "tool_results": tool_results,
        # What hooks added to the tool results (Gemini CLI appends a hook's
        # `additionalContext` to the result as <hook_context>...</hook_context>).
        "notes": _hook_context(tool_results),
    })

    if SHELL_TOOL not in tools or wants_json:
        log["kind"] = "side"
        if wants_json:
            value = _from_schema(schema, req.side_text) if schema else {"answer": req.side_text}
            text = json.dumps(value)
        else:
            text = req.side_text
        log["reply"] = text[:300]
        parts = [{"text": text}]
    else:
        cmds = req.commands or []
        if issued < len(cmds):
            step = cmds[issued]
            if isinstance(step, str):
                name, args = SHELL_TOOL, {"command": step, "description": "scripted"}
            elif isinstance(step, dict) and "tool" in step:
                name, args = step["tool"], step.get("input") or {}
            else:  # {"command": ...}
                name = SHELL_TOOL
                args = {"command": step["command"],
                        "description": step.get("description", "scripted")}
            call = {"name": name, "args": args,
                    "id": CALL_ID_PREFIX + uuid.uuid4().hex[:16]}
            parts = [{"functionCall": call}]
            log["kind"] = "command#%d" % issued
            log["reply"] = {"functionCall": call}
        else:
            parts = [{"text": req.final_text}]
            log["kind"] = "final"
            log["reply"] = req.final_text

    n_in = max(1, len(json.dumps(contents)) // 4)
    rid = uuid.uuid4().hex[:22]  # one id for all the chunks of a stream, like the real API
    if meth == "generateContent":
        return _json(200, _response(model, parts, True, n_in, rid), log)
    # Streaming like the real API: text in pieces, the finishReason with the last piece;
    # a functionCall arrives whole in one chunk.
    chunks = []
    if len(parts) == 1 and "text" in parts[0] and len(parts[0]["text"]) > 1 and not wants_json:
        t = parts[0]["text"]
        cut = len(t) // 2
        chunks.append(_response(model, [{"text": t[:cut]}], False, n_in, rid))
        chunks.append(_response(model, [{"text": t[cut:]}], True, n_in, rid))
    else:
        chunks.append(_response(model, parts, True, n_in, rid))
    return {"status": 200, "content_type": "text/event-stream",
            "payload": _sse(chunks),
            "headers": {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
            "log": log}
