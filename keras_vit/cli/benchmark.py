"""`keras-vit benchmark`: speed, memory and MFU of keras_vit, its fast predictor and its own
TFLite and ONNX exports; prints a Markdown table, writes JSON and Markdown files on request.

Parsing and printing only; the work is `keras_vit.benchmark.run_suite`. Other libraries' ViTs
(KerasHub, Hugging Face, timm) are compared by `python benchmarks/peers.py`, which takes the same
options and uses this module's table.
"""

import json

from keras_vit import benchmark
from keras_vit.cli.arguments import non_negative_int, positive_float, positive_int
from keras_vit.fileio import write_json, write_text

# Peers that left the package for benchmarks/peers.py: `--peers` naming one says where they went.
MOVED_PEERS = ("keras_hub", "hf", "timm")


def markdown_table(report):
    """The results as Markdown: a settings line, then one table per task with ratios to keras_vit."""
    s, env = report["settings"], report["environment"]
    c = s["config"]
    lines = [
        f"ViT patch {c['patch_size']}, width {c['hidden_size']}, depth {c['num_layers']}, heads "
        f"{c['num_heads']}, MLP {c['mlp_dim']}, image {c['image_size']}, {c['num_classes']} classes "
        f"({s['forward_gflops_per_image']:.2f} GFLOP forward per image); precision "
        f"{s['precision']}, optimizer {s['optimizer']}, {s['repeats']} repeats after "
        f"{s['warmup']} warm-up, interleaved.",
        "",
        f"Backend {env['backend']}, Keras {env['keras']}, threads {env['threads']}, CPU "
        f"{env['cpu']} x{env['cpu_cores']} cores, GPU {env['gpu'] or 'none'}; "
        + ", ".join(f"{k} {env[k]}" for k in ("tensorflow", "jax", "torch", "transformers",
                                             "keras_hub", "timm", "onnxruntime") if k in env) + ".",
        "",
    ]
    titles = {"latency": f"Inference latency, batch {s['latency_batch_size']}",
              "throughput": f"Inference throughput, batch {s['batch_size']}",
              "training": f"Training step, batch {s['batch_size']}",
              "tflite": "LiteRT interpreter, batch 1",
              "pipeline": f"tf.data training pipeline alone, batch {s['batch_size']} (per batch)"}
    for task, rows in report["results"].items():
        if not rows:  # e.g. tflite on a backend that cannot convert: listed under "skipped"
            continue
        if task == "memory":
            lines += ["### Peak memory (one inference + two training steps, fresh process)", "",
                      "| contender | peak RSS (MiB) | RSS after imports (MiB) | device peak (MiB) |",
                      "| --- | ---: | ---: | ---: |"]
            for name, row in rows.items():
                if "error" in row:
                    lines.append(f"| {name} | failed: {row['error']} | | |")
                    continue
                device = row.get("device_peak_mib")
                lines.append(f"| {name} | {row['peak_rss_mib']:.0f} | {row['rss_after_imports_mib']:.0f}"
                             f" | {'-' if device is None else f'{device:.0f}'} |")
            lines.append("")
            continue
        if task == "pipeline":
            (name, row), = rows.items()
            lines += [f"### {titles[task]}", "",
                      "| pipeline | median (ms) | min–max (ms) | images/s |", "| --- | ---: | ---: | ---: |",
                      f"| {name} | {row['median_ms']:.1f} | {row['min_ms']:.1f}–{row['max_ms']:.1f} | "
                      f"{row['images_per_s']:.1f} |", ""]
            step = report["results"].get("training", {}).get("keras_vit")
            if step:
                ratio = row["images_per_s"] / step["images_per_s"]
                lines += [f"The pipeline delivers {ratio:.1f}x the images/s of keras_vit's training "
                          f"step on this machine ({'enough to keep it fed' if ratio >= 1 else 'not enough: the model would wait for data'}; "
                          "decoding shares the cores with the model on CPU).", ""]
            continue
        base = rows.get("keras_vit", next(iter(rows.values())))
        mfu = any("mfu" in r for r in rows.values())
        lines += [f"### {titles[task]}", "",
                  "| contender | median (ms) | min–max (ms) | images/s | time / keras_vit |"
                  + (" MFU |" if mfu else "") + (" size (MB) |" if task == "tflite" else ""),
                  "| --- | ---: | ---: | ---: | ---: |" + (" ---: |" if mfu else "")
                  + (" ---: |" if task == "tflite" else "")]
        for name, row in rows.items():
            ratio = row["median_ms"] / base["median_ms"] if base and task != "tflite" else None
            line = (f"| {name} | {row['median_ms']:.1f} | {row['min_ms']:.1f}–{row['max_ms']:.1f} | "
                    f"{row['images_per_s']:.1f} | {'-' if ratio is None else f'{ratio:.2f}x'} |")
            if mfu:
                line += f" {row.get('mfu', 0):.1%} |"
            if task == "tflite":
                line += f" {row['size_mb']:.1f} |"
            lines.append(line)
        lines.append("")
    if any(t not in ("memory", "tflite", "pipeline") for t in report["results"]):
        lines.append("`time / keras_vit`: the row's median over keras_vit's median in the same run "
                     "(above 1.00x the row is slower than keras_vit, below it faster).")
    for peer, why in report["skipped"].items():
        lines.append(f"- {peer}: not measured, {why}.")
    lines.append("")
    lines.append("Settings per contender: " + "; ".join(
        f"{name}: " + ", ".join(f"{k} {v}" for k, v in st.items())
        for name, st in s["contenders"].items()) + ".")
    return "\n".join(lines) + "\n"


def _csv(value):
    return [v.strip() for v in value.split(",") if v.strip()]


def add_benchmark_arguments(parser, peers=benchmark.PEERS):
    """The options of `keras-vit benchmark`; `peers`: the names `--peers` offers (its default)."""
    parser.add_argument("--model", default="ViTB16",
                        help="variant: ViTTi16, ViTS16, ViTB16, ... or S/16, B/16 ... (default ViTB16)")
    parser.add_argument("--config", type=json.loads, default=None,
                        help='JSON overrides of the ViT arguments, e.g. \'{"num_layers": 2}\'')
    parser.add_argument("--image-size", type=positive_int, default=224)
    parser.add_argument("--num-classes", type=positive_int, default=1000)
    parser.add_argument("--batch-size", type=positive_int, default=32, help="throughput and training batch")
    parser.add_argument("--latency-batch-size", type=positive_int, default=1)
    parser.add_argument("--precision", choices=benchmark.PRECISIONS, default="float32",
                        help="bfloat16: bf16 inference, mixed_bfloat16 / autocast training")
    parser.add_argument("--peers", type=_csv, default=list(peers),
                        help=f"comma list of {', '.join(peers)}, or none (missing ones are skipped)")
    parser.add_argument("--tasks", type=_csv, default=list(benchmark.DEFAULT_TASKS),
                        help=f"comma list of {', '.join(benchmark.TASKS)}")
    parser.add_argument("--tflite-modes", type=_csv, default=["none", "float16", "dynamic"],
                        help="quantization modes for --tasks tflite: none, float16, dynamic, int8")
    parser.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd")
    parser.add_argument("--repeats", type=positive_int, default=5)
    parser.add_argument("--warmup", type=non_negative_int, default=2)
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="default: the cores this process may use")
    parser.add_argument("--no-fast", dest="fast", action="store_false",
                        help="leave out keras_vit.inference.fast_predictor")
    parser.add_argument("--peak-tflops", type=positive_float, default=None,
                        help="device peak for the MFU column (known GPUs are looked up)")
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    parser.add_argument("--markdown", default=None, help="write the Markdown table here too")


def run_benchmark(args, builders=None):
    """Runs `args` (of `add_benchmark_arguments`), prints the table, writes the files; `builders`:
    the extra contenders of `benchmark.run_suite` (benchmarks/peers.py passes its peers)."""
    moved = [peer for peer in args.peers if peer in MOVED_PEERS and peer not in (builders or {})]
    if moved:
        raise ValueError(f"--peers {','.join(moved)}: the comparisons with other libraries moved "
                         f"out of keras_vit; run `python benchmarks/peers.py --peers "
                         f"{','.join(moved)}` with the same options (keras-vit benchmark --peers "
                         f"takes {', '.join(benchmark.PEERS)} or none).")
    config = benchmark.resolve_config(args.model, args.image_size, args.num_classes, args.config)
    report = benchmark.run_suite(
        config, args.batch_size, args.latency_batch_size, args.precision, args.peers, args.tasks,
        args.repeats, args.warmup, args.threads, args.optimizer, args.fast, args.tflite_modes,
        args.peak_tflops, builders)
    table = markdown_table(report)
    print(table)
    if args.output:
        write_json(args.output, report)
    if args.markdown:
        write_text(args.markdown, table)
    return 0
