"""How many of a session's allowed opens repeat one made before by the same process
(same path, flags, result and decision), within a window: the records an in-kernel
aggregation of repeats would save (#19). Reads an audit store; the store already keeps
repeats within one commit (100 ms) as one row with a count (`repeats`).

    python3 xtask/open_repeats.py STORE/audit.db
"""

import sqlite3
import sys

WINDOWS = [("one commit (100 ms)", 0.0), ("1 s", 1.0), ("10 s", 10.0), ("the session", float("inf"))]


def main(db_path):
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    rows = db.execute(
        "SELECT session_id, tgid, path, flags, min(result, 0), coalesce(decision, ''), "
        "time_ns, coalesce(last_time_ns, time_ns), repeats "
        "FROM actions WHERE kind = 'open' ORDER BY time_ns"
    ).fetchall()
    # Denials stay individual records whatever an aggregation does.
    allowed = [r for r in rows if r[5] != "deny"]
    total = sum(r[8] for r in allowed)
    print(f"{db_path}: {total} allowed opens ({len(allowed)} rows), {len(rows) - len(allowed)} denied left out")
    for label, window in WINDOWS:
        last = {}
        repeats = 0
        for r in allowed:
            key = r[:6]
            repeats += r[8] - 1
            if key in last and r[6] - last[key] <= window * 1e9:
                repeats += 1
            last[key] = r[7]
        share = 100 * repeats / total if total else 0
        print(f"  repeats within {label}: {repeats} ({share:.1f}%)")


if __name__ == "__main__":
    for path in sys.argv[1:]:
        main(path)
