"""Summarise kosoku's Autobahn reports as a markdown table, one column per
gateway setup; exit 1 if any case is FAILED or UNIMPLEMENTED."""
import collections
import json
import sys
from pathlib import Path

GROUPS = {
    "1": "Framing", "2": "Pings/Pongs", "3": "Reserved bits", "4": "Opcodes",
    "5": "Fragmentation", "6": "UTF-8 handling", "7": "Close handling",
    "9": "Limits/performance", "10": "Misc", "12": "WebSocket compression (different payloads)",
    "13": "WebSocket compression (different parameters)",
}
BAD = {"FAILED", "UNIMPLEMENTED", "WRONG CODE", "UNCLEAN"}

out, setups = Path(sys.argv[1]), sys.argv[2:]
counts = {}
bad = []
for setup in setups:
    index = json.loads((out / setup / "index.json").read_text())
    tally = collections.defaultdict(collections.Counter)
    for cases in index.values():
        for case, result in cases.items():
            group = case.split(".")[0]
            behavior, close = result["behavior"], result["behaviorClose"]
            tally[group][behavior] += 1
            if behavior in BAD or close in BAD:
                bad.append(f"{setup}: case {case}: {behavior} / close {close}")
    counts[setup] = tally

print("| Cases | " + " | ".join(setups) + " |")
print("|---|" + "---|" * len(setups))
groups = sorted({g for t in counts.values() for g in t}, key=int)
for group in groups:
    cells = []
    for setup in setups:
        tally = counts[setup][group]
        cells.append(", ".join(f"{n} {b}" for b, n in sorted(tally.items())) or "-")
    print(f"| {group} {GROUPS.get(group, '')} | " + " | ".join(cells) + " |")
totals = []
for setup in setups:
    total = collections.Counter()
    for tally in counts[setup].values():
        total.update(tally)
    totals.append(", ".join(f"{n} {b}" for b, n in sorted(total.items())))
print("| **All** | " + " | ".join(totals) + " |")
if bad:
    print("\nNot passed:\n" + "\n".join(f"- {b}" for b in bad))
    sys.exit(1)
