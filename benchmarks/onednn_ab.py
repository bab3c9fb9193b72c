"""Does TensorFlow's oneDNN help keras_vit on this CPU? A/B of TF_ENABLE_ONEDNN_OPTS=0/1.

TensorFlow turns oneDNN on by default only on CPUs with AVX512_VNNI, AVX512_BF16, AVX_VNNI or AMX;
on older CPUs (AVX2 only, e.g. AMD Zen 3) it runs Eigen kernels unless TF_ENABLE_ONEDNN_OPTS=1 is
set before TensorFlow is imported. The switch only takes effect at import, so each setting runs in
its own `benchmarks/peers.py` subprocess (`keras-vit benchmark` with the peers), alternating
A B A B ..., and each run carries Hugging Face's PyTorch ViT (unaffected by the switch) as an
in-process yardstick: compare the keras_vit / HF ratios as well as the medians.

    python benchmarks/onednn_ab.py --model ViTS16 --batch-size 8 --rounds 2

Prints a Markdown table and writes benchmarks/results/onednn_ab.json.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

PEERS_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers.py")


def run_once(setting, args, workdir, index):
    out = os.path.join(workdir, f"{setting}_{index}.json")
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=setting, KERAS_BACKEND="tensorflow",
               TF_CPP_MIN_LOG_LEVEL="2")
    subprocess.run([sys.executable, PEERS_SCRIPT, "--model", args.model,
                    "--batch-size", str(args.batch_size), "--precision", args.precision,
                    "--peers", args.peers, "--tasks", args.tasks, "--repeats", str(args.repeats),
                    "--warmup", "2", "--output", out],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    with open(out) as file:
        return json.load(file)


def medians(report):
    """{(task, contender): median ms} from one benchmark JSON (`benchmarks/peers.py`)."""
    return {(task, contender): row["median_ms"]
            for task, block in report["results"].items()
            for contender, row in block.items() if isinstance(row, dict) and "median_ms" in row}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViTS16")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--peers", default="hf")
    parser.add_argument("--tasks", default="latency,throughput,training")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2, help="A/B alternations")
    parser.add_argument("--output", default="benchmarks/results/onednn_ab.json")
    args = parser.parse_args(argv)

    runs = {"0": [], "1": []}
    with tempfile.TemporaryDirectory() as workdir:
        for index in range(args.rounds):
            for setting in ("0", "1"):
                runs[setting].append(medians(run_once(setting, args, workdir, index)))
                print(f"round {index + 1}, TF_ENABLE_ONEDNN_OPTS={setting}: done", flush=True)
    keys = sorted(set(runs["0"][0]) & set(runs["1"][0]))
    table = []
    for task, contender in keys:
        row = dict(task=task, contender=contender)
        for setting in ("0", "1"):
            row[f"onednn_{setting}_ms"] = float(np.median([r[(task, contender)]
                                                           for r in runs[setting]]))
        table.append(row)
    print(f"\n{args.model}, batch {args.batch_size}, {args.precision}; median over {args.rounds} "
          f"runs of the per-run medians ({args.repeats} repeats each)\n")
    print("| task | contender | oneDNN off (ms) | oneDNN on (ms) | off / on |")
    print("| --- | --- | ---: | ---: | ---: |")
    for row in table:
        print(f"| {row['task']} | {row['contender']} | {row['onednn_0_ms']:.1f} | "
              f"{row['onednn_1_ms']:.1f} | {row['onednn_0_ms'] / row['onednn_1_ms']:.2f}x |")
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as file:
        json.dump(dict(settings=vars(args), rows=table, runs={k: [
            {f"{t}|{c}": v for (t, c), v in r.items()} for r in rs] for k, rs in runs.items()}),
            file, indent=1)


if __name__ == "__main__":
    main()
