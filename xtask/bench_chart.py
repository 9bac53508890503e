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

fig, ax = plt.subplots(figsize=(10, 4.5))
x = range(len(names))
ax.bar([i - 0.2 for i in x], untracked, 0.4, label="on, untracked")
ax.bar([i + 0.2 for i in x], tracked, 0.4, label="on, tracked (enforcing profile)")
for i, t in enumerate(targets):
    if t is not None:
        ax.hlines((t - 1) * 100, i - 0.4, i + 0.4, colors="red", linestyles="dashed")
ax.axhline(0, color="black", linewidth=0.8)
ax.set_xticks(list(x))
ax.set_xticklabels(names, rotation=15, ha="right")
ax.set_ylabel("overhead vs off (%)")
title = f"agentwarden overhead, kernel {r['kernel']}, {r['rounds']} rounds (red: target, tracked)"
if r.get("quick"):
    title += " - quick smoke run"
ax.set_title(title)
ax.legend()
fig.tight_layout()
fig.savefig(png, dpi=110)
