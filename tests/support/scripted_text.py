"""Text of the content the agents' APIs carry, for the scripted model's API modules."""
import json


def text_of(content):
    """Flatten a message, tool result or output content to text: a string as is; a list
    of blocks or parts by their `text` (Anthropic tool_result blocks by their own
    content); a {"content": ...} or {"output": ...} object by that; anything else as a
    placeholder naming its type."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        for key in ("content", "output"):
            if key in content:
                return text_of(content[key])
        return json.dumps(content)
    out = []
    for b in content:
        if isinstance(b, dict):
            if "text" in b:
                out.append(b.get("text") or "")
            elif b.get("type") == "tool_result":
                out.append(text_of(b.get("content")))
            else:
                out.append("<%s>" % b.get("type"))
        else:
            out.append(str(b))
    return "\n".join(out)
