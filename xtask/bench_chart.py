"""Bar chart of agentwarden's overhead per scenario (cargo xtask bench)."""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

results, png = sys.argv[1], sys.argv[2]
r = json.load(open(results))
names = [s["name"] for s in r["scenarios"]]
untracked = [(s["untracked"]["ratio"] - 1) * 100 for s in r["scenarios"]]
tracked = [(s["tracked"]["ratio"] - 1) * 100 for s in r["scenarios"]]
targets = [s["tracked"]["target_ratio"] for s in r["scenarios"]]

peer_names = [p["name"] for p in r.get("peers", []) if not p.get("unavailable")]
series = [("on, untracked", untracked), ("on, tracked (enforcing profile)", tracked)]
for name in peer_names:
    vals = []
    for s in r["scenarios"]:
        p = next((p for p in s.get("peers", []) if p["name"] == name), None)
        vals.append((p["ratio"] - 1) * 100 if p and "ratio" in p else 0)
    series.append((name, vals))

fig, ax = plt.subplots(figsize=(12, 5))
x = range(len(names))
width = 0.8 / len(series)
for k, (label, vals) in enumerate(series):
    ax.bar([i - 0.4 + width * (k + 0.5) for i in x], vals, width, label=label)
for i, t in enumerate(targets):
    if t is not None:
        ax.hlines((t - 1) * 100, i - 0.4, i + 0.4, colors="red", linestyles="dashed")
ax.axhline(0, color="black", linewidth=0.8)
# auditd's cost on the loops is some fifty times the others': a log scale past ±10%
# keeps every bar readable.
ax.set_yscale("symlog", linthresh=10)
ax.set_xticks(list(x))
ax.set_xticklabels(names, rotation=15, ha="right")
ax.set_ylabel("overhead vs off (%, log past ±10)")
title = f"agentwarden and its peers: overhead, kernel {r['kernel']}, {r['rounds']} rounds (red: target, tracked)"
if r.get("quick"):
    title += " - quick smoke run"
ax.set_title(title)
ax.legend()
fig.tight_layout()
fig.savefig(png, dpi=110)
