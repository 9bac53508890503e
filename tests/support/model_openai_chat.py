"""OpenAI Chat Completions API for the scripted model server (tests/support/scripted_model.py),
shaped for driving the real aider CLI (PyPI aider-chat, via litellm's "openai/<name>" provider).

Endpoint: POST /v1/chat/completions (SSE `data: {chunk}` lines ending with `data: [DONE]`
when `stream` is true, one chat.completion JSON otherwise; aider streams by default).

Aider has no tool calling.  A scripted turn is an assistant message in aider's own
"diff" (SEARCH/REPLACE) edit format, starting with a marker line `[scripted-step:N]`:
  * a string step = a shell command, sent as a ```bash fenced block.  Aider asks
    "Run shell command?" (explicit yes: `--yes-always` answers NO to it, so the test must
    answer "y" on stdin), runs it with /bin/sh in the project dir, asks "Add command output
    to the chat?" and appends the user message "Output from <cmd>\\n<stdout+stderr>" to the
    chat; that message reaches the model in the next request.  Aider never reports the
    exit status.
  * {"tool": "edit", "input": {"path": P, "search": S, "replace": R}} = one SEARCH/REPLACE
    block on P (S empty = create the file / append).  Aider writes the file itself.
  * {"tool": "read", "input": {"path": P}} = a SEARCH/REPLACE block on P whose SEARCH
    text cannot match (so nothing is written): aider confirms "Allow edits to file that
    has not been added to the chat?", reads P in its own process, adds it to the chat and
    immediately re-asks the model with the match error (a "reflection", no user input
    needed); P's full content is in that request's "files in the chat" message.
    Aider does not expand "~": give P absolute, or relative to the project dir.

Driving aider (0.86.2) unattended (full command line: see the kernel test); essential: env
OPENAI_API_BASE=http://127.0.0.1:PORT/v1, OPENAI_API_KEY=anything,
LITELLM_LOCAL_MODEL_COST_MAP=True, TERM=dumb (plain input(), no prompt_toolkit), a
--model-metadata-file naming "openai/scripted" (else aider fetches litellm's price list
from GitHub), NO --yes-always (it refuses every shell command), and stdin = lines "y":
each line is either a chat message (one main-loop request) or the answer to a
confirmation.  3 x shell steps + 2 x edit/read steps + 1 lines always suffice (a shell step
takes message + run + add-output, no add-output if the output is empty; an edit/read step
message + allow/create; the step after a read comes in aider's automatic re-ask, without
a message line); stdin EOF at the chat prompt ends aider with exit 0, and surplus lines
only add "final" requests (no step is consumed).

Stateless: the step index = the number of distinct `[scripted-step:N]` markers in the
request's assistant messages.  Requests whose first message is not aider's coder system
prompt ("Act as an expert ...": e.g. chat-history summaries, commit messages) get the side
text and never consume a step.

tool_results (for the log): the results of the previous scripted step found in this
request:
  * shell: every user message "Output from ..." after the last scripted assistant message
    (is_error false: aider never sends an exit status; no such message -> content "" and a
    "note": aider sends nothing for a command with empty output, nor for a refused one);
  * read: the content aider sent for P in its files-in-chat message (is_error false), or,
    without it, aider's error text (is_error true);
  * edit: aider's reply after the edit ("I updated the files." / a commit note / the match
    error) and P's new content if it is in the chat (is_error true on a match error).
"""
import json
import os
import re
import time
import uuid

from scripted_text import text_of

MARK = "[scripted-step:%d]"
MARK_RE = re.compile(r"\[scripted-step:(\d+)\]")
MAIN_SYSTEM_HINT = "Act as an expert"
NO_MATCH = "SCRIPTED-READ-ONLY: this line is not in the file, nothing is written"


def handles(method, path):
    # GET /v1/models is left to the dispatcher's shared fallback (aider never asks for it).
    return method == "POST" and path.rstrip("/") in ("/v1/chat/completions", "/chat/completions")


# ---------------------------------------------------------------- conversation helpers


def is_main_loop(msgs):
    return bool(msgs) and MAIN_SYSTEM_HINT in text_of(msgs[0].get("content"))


def scripted_positions(msgs):
    """[(message index, step number)] of our scripted assistant turns, in order."""
    out = []
    for i, m in enumerate(msgs):
        if m.get("role") != "assistant":
            continue
        mm = MARK_RE.search(text_of(m.get("content")))
        if mm:
            out.append((i, int(mm.group(1))))
    return out


def step_kind(step):
    if isinstance(step, str):
        return "shell", {"command": step}
    if isinstance(step, dict) and "tool" in step:
        return str(step["tool"]).lower(), dict(step.get("input") or {})
    if isinstance(step, dict) and "command" in step:
        return "shell", {"command": step["command"]}
    raise ValueError("unsupported step for aider: %r" % (step,))


FENCES = {"```": "```", "````": "````", "<source>": "</source>", "<code>": "</code>",
          "<pre>": "</pre>", "<codeblock>": "</codeblock>", "<sourcecode>": "</sourcecode>"}


def file_in_chat(msgs, path):
    """Content aider sent for `path` in its latest files-in-chat message, or None."""
    base = os.path.basename(path.rstrip("/"))
    found = None
    for m in msgs:
        if m.get("role") != "user":
            continue
        lines = text_of(m.get("content")).split("\n")
        for i, line in enumerate(lines[:-1]):
            name = line.strip()
            if not name or os.path.basename(name) != base:
                continue
            opener = lines[i + 1].strip()
            closer = FENCES.get(opener)
            if closer is None:
                continue
            rest = "\n".join(lines[i + 2:])
            # aider writes content + closing fence + "\n" (no newline added before the fence)
            j = rest.find(closer + "\n")
            if j < 0:
                j = rest.rfind(closer)
            if j >= 0:
                found = rest[:j]
    return found


def results_of_previous(msgs, steps, final_text):
    pos = scripted_positions(msgs)
    if not pos:
        return []
    last_i, last_n = pos[-1]
    if last_n >= len(steps):
        return []
    later = msgs[last_i + 1:]
    if any(m.get("role") == "assistant" and text_of(m.get("content")).strip() == final_text.strip()
           for m in later):
        return []  # already reported with the first final answer
    kind, inp = step_kind(steps[last_n])
    after = [text_of(m.get("content")) for m in later if m.get("role") == "user"]
    if kind == "shell":
        outs = [t for t in after if t.startswith("Output from ")]
        if outs:
            return [{"is_error": False, "content": "\n".join(outs)}]
        # aider sends nothing for a command with empty output (and nothing for a refused one)
        return [{"is_error": False, "content": "",
                 "note": "aider added no output of this command to the chat"}]
    path = inp.get("path", "")
    content = file_in_chat(msgs, path) if path else None
    notes = [t for t in after if t.startswith(("I updated", "I committed"))
             or "failed to match" in t or "did not conform" in t]
    if kind == "read":
        if content is not None:
            return [{"is_error": False, "content": content}]
        return [{"is_error": True, "content": "\n".join(notes) or "(file not in the chat)"}]
    # edit
    failed = any("failed to match" in t or "did not conform" in t for t in notes)
    body = "\n".join(notes)
    if content is not None:
        body = (body + "\n" if body else "") + content
    return [{"is_error": failed, "content": body}]


# ---------------------------------------------------------------- the scripted turns

def render_step(n, step):
    kind, inp = step_kind(step)
    head = MARK % n + "\n\n"
    if kind == "shell":
        return head + "```bash\n%s\n```\n" % inp["command"]
    if kind in ("edit", "read"):
        path = inp["path"]
        if kind == "read":
            search, replace = NO_MATCH + "\n", NO_MATCH + "\n"
        else:
            search, replace = inp.get("search", ""), inp.get("replace", "")
            if search and not search.endswith("\n"):
                search += "\n"
            if replace and not replace.endswith("\n"):
                replace += "\n"
        return head + "%s\n```\n<<<<<<< SEARCH\n%s=======\n%s>>>>>>> REPLACE\n```\n" % (
            path, search, replace)
    raise ValueError("aider has no tool %r (use a shell string, edit or read)" % kind)


def plan(req):
    body = req.body if isinstance(req.body, dict) else {}
    msgs = body.get("messages") or []
    steps = req.commands or []
    summary = {
        "model": body.get("model"),
        "stream": body.get("stream"),
        "n_messages": len(msgs),
        "system_head": text_of(msgs[0].get("content"))[:80] if msgs else None,
        "last_user_head": next((text_of(m.get("content"))[:200] for m in reversed(msgs)
                                if m.get("role") == "user"), None),
    }
    if not is_main_loop(msgs):
        return req.side_text, "side", [], summary
    idx = len({n for _, n in scripted_positions(msgs)})
    results = results_of_previous(msgs, steps, req.final_text or "done")
    if idx < len(steps):
        return render_step(idx, steps[idx]), "command#%d" % idx, results, summary
    return req.final_text, "final", results, summary


# ---------------------------------------------------------------- wire format

def _chunk(cid, model, created, delta, finish=None, usage=None):
    ch = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
          "system_fingerprint": "fp_scripted",
          "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
    if usage is not None:
        ch["choices"] = []
        ch["usage"] = usage
    return "data: %s\n\n" % json.dumps(ch, separators=(",", ":"))


def reply(req):
    body = req.body if isinstance(req.body, dict) else {}
    text, kind, results, summary = plan(req)
    cid = "chatcmpl-" + uuid.uuid4().hex[:24]
    model = body.get("model") or "scripted"
    created = int(time.time())
    usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    log = dict(summary, kind=kind, tool_results=results, reply_text=text)
    if body.get("stream"):
        parts = [_chunk(cid, model, created, {"role": "assistant", "content": ""})]
        # stream the text in a few pieces, like the real API
        step = max(1, len(text) // 3)
        for k in range(0, len(text), step):
            parts.append(_chunk(cid, model, created, {"content": text[k:k + step]}))
        parts.append(_chunk(cid, model, created, {}, finish="stop"))
        if (body.get("stream_options") or {}).get("include_usage"):
            parts.append(_chunk(cid, model, created, {}, usage=usage))
        parts.append("data: [DONE]\n\n")
        return {"status": 200, "content_type": "text/event-stream",
                "payload": "".join(parts).encode(),
                "headers": {"Cache-Control": "no-cache"}, "log": log}
    payload = {"id": cid, "object": "chat.completion", "created": created, "model": model,
               "system_fingerprint": "fp_scripted",
               "choices": [{"index": 0, "message": {"role": "assistant", "content": text,
                                                    "refusal": None},
                            "logprobs": None, "finish_reason": "stop"}],
               "usage": usage}
    return {"status": 200, "content_type": "application/json",
            "payload": json.dumps(payload).encode(), "log": log}
