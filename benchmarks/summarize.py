"""Summarises benchmark JSON files as one Markdown table of medians and ratios.

    python benchmarks/summarize.py benchmarks/results/cpu_*.json > benchmarks/cpu_summary.md

A ratio is the peer's median time over keras_vit's (or over keras_vit's fast_predictor's) in the
same interleaved run: above 1.00x keras_vit is faster.
"""

import json
import sys

PEERS = ("keras_hub ViTBackbone", "HF ViTForImageClassification", "timm eager", "timm torch.compile")


def variant(report):
    c = report["settings"]["config"]
    names = {192: "Ti/16", 384: "S/16", 768: "B/16"}
    return names.get(c["hidden_size"], f"D{c['hidden_size']}/{c['patch_size']}")


def main(paths):
    reports = [json.load(open(p)) for p in paths]
    reports.sort(key=lambda r: (r["settings"]["config"]["hidden_size"], r["settings"]["precision"]))
    peers = [p for p in PEERS if any(p in t for r in reports for t in r["results"].values())]
    header = ["model", "precision", "task", "batch", "keras_vit (ms)", "fast_predictor (ms)"]
    for peer in peers:
        header += [f"{peer} (ms)", f"{peer.split()[0]} / keras_vit", f"{peer.split()[0]} / fast"]
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * 3 + " ---: |" * (len(header) - 3))
    for report in reports:
        for task in ("latency", "throughput", "training"):
            rows = report["results"].get(task)
            if not rows:
                continue
            base = rows["keras_vit"]["median_ms"]
            fast = rows.get("keras_vit fast_predictor", {}).get("median_ms")
            cells = [variant(report), report["settings"]["precision"], task,
                     str(rows["keras_vit"]["batch_size"]), f"{base:.1f}",
                     "-" if fast is None else f"{fast:.1f}"]
            for peer in peers:
                if peer not in rows:
                    cells += ["-", "-", "-"]
                    continue
                ms = rows[peer]["median_ms"]
                cells += [f"{ms:.1f}", f"{ms / base:.2f}x", "-" if fast is None else f"{ms / fast:.2f}x"]
            print("| " + " | ".join(cells) + " |")
    skipped = {peer: why for r in reports for peer, why in r["skipped"].items()}
    for peer, why in skipped.items():
        print(f"\n{peer}: not measured, {why}.")
    env = reports[0]["environment"] if reports else {}
    print(f"\nCPU {env.get('cpu')}, {env.get('cpu_cores')} cores, {env.get('threads')} threads; "
          + ", ".join(f"{k} {env[k]}" for k in ("tensorflow", "keras", "torch", "transformers",
                                               "keras_hub", "timm") if k in env) + ".")


if __name__ == "__main__":
    main(sys.argv[1:])
