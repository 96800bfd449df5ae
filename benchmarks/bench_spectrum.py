"""Benchmark of the spectrum pipeline against a naive path and the floor of its kernels.

Run on demand (not in CI):

    python benchmarks/bench_spectrum.py                 # all sections, about 5 min on 2 cores
    python benchmarks/bench_spectrum.py --only kernels  # one section

Sections (all timings on the same sequences, in one process, after a warm-up):

* kernels  -- singular values of the real MiniLM attention matrices P (n = 512) by each
  candidate: accuracy of c against numpy float64 SVD, and milliseconds per matrix.
* pipeline -- sequences/s of: naive (``output_attentions=True`` with eager attention, then
  numpy float64 SVD matrix by matrix, as most users first write it: ``np.linalg.svd(P)``, and the
  variant with ``compute_uv=False``); lowrank (``lowrank.families.spectrum.pipeline.analyse``);
  floor (the model's own forward pass plus batched singular values of the same P, timed apart).
* memory   -- peak resident memory above the loaded model, each variant in a fresh process,
  for randomly initialised RoBERTa-large-shaped models of 6 and 24 layers (16 heads, width
  1024, n = 512, 2 sequences): lowrank keeps one layer's P, the naive path keeps all.

Results are printed as Markdown and written to benchmarks/results.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch

HERE = Path(__file__).parent


MODEL = {"name": "minilm"}  # --model


def _minilm_batch(count: int):
    """The benchmark's model (``--model``, default the embedded MiniLM) and ``count``
    sequences of 512 tokens of the embedded wiki sample."""
    from lowrank.inputs.corpora import build_sequences, load_corpus
    from lowrank.inputs.models import load_model

    loaded = load_model(MODEL["name"])
    seqs = build_sequences(load_corpus("sample-wiki", None), loaded.tokenizer, 512, count)
    return loaded, seqs


def _captured_probs(loaded, ids: np.ndarray) -> torch.Tensor:
    from lowrank.hooks.attention import capture

    probs: list[torch.Tensor] = []
    with torch.inference_mode(), capture(loaded.model, lambda c: probs.append(c.probs.clone())):
        loaded.model(input_ids=torch.from_numpy(ids))
    return torch.cat([p.reshape(-1, *p.shape[-2:]) for p in probs])


def _c(s: np.ndarray) -> np.ndarray:
    cs = np.cumsum(np.asarray(s, dtype=np.float64), axis=-1)
    return cs / cs[..., -1:]


def _timed(fn, repeat: int = 1):
    fn()  # warm-up
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return out, best


def kernels(count: int) -> list[dict]:
    import scipy.linalg

    from lowrank.maths.spectra import singular_values

    loaded, seqs = _minilm_batch(count)
    p = _captured_probs(loaded, seqs.input_ids)  # (M, n, n)
    ref = np.linalg.svd(p.double().numpy(), compute_uv=False)
    c_ref = _c(ref)
    m = p.shape[0]
    candidates = {
        "torch gesdd float32 (LAPACK threads)": lambda: singular_values(p, "gesdd", 1),
        "torch gesdd float32, batch over threads": lambda: singular_values(p, "gesdd", 2),
        "torch gesdd float64 (LAPACK threads)": lambda: torch.linalg.svdvals(p.double()),
        "torch Gram eigvalsh float64 (LAPACK threads)": lambda: singular_values(p, "gram", 1),
        "torch Gram eigvalsh float64, batch over threads": lambda: singular_values(p, "gram", 2),
        "scipy gesdd float32, matrix by matrix": lambda: np.stack(
            [scipy.linalg.svdvals(x) for x in p.numpy()]
        ),
        "numpy float64 svd(compute_uv=False), matrix by matrix": lambda: np.stack(
            [np.linalg.svd(x, compute_uv=False) for x in p.double().numpy()]
        ),
    }
    rows = []
    for name, fn in candidates.items():
        out, seconds = _timed(fn)
        s = out.numpy() if isinstance(out, torch.Tensor) else out
        rows.append(
            {
                "kernel": name,
                "ms_per_matrix": 1000 * seconds / m,
                "max_abs_c_error": float(np.abs(_c(s) - c_ref).max()),
                "matrices": m,
            }
        )
    return rows


def pipeline(count: int, batch: int) -> dict:
    from lowrank.families.spectrum.pipeline import analyse
    from lowrank.maths.spectra import DEFAULT_SVD, default_workers, singular_values

    loaded, seqs = _minilm_batch(count)
    model, ids = loaded.model, seqs.input_ids

    def naive(full: bool):
        def run():
            model.set_attn_implementation("eager")
            out = []
            for lo in range(0, len(ids), batch):
                with torch.inference_mode():
                    res = model(
                        input_ids=torch.from_numpy(ids[lo : lo + batch]), output_attentions=True
                    )
                layers = []
                for att in res.attentions:  # (b, H, n, n), all layers kept to the end
                    layers.append(
                        [
                            [
                                np.linalg.svd(m)[1] if full else np.linalg.svd(m, compute_uv=False)
                                for m in seq
                            ]
                            for seq in att.double().numpy()
                        ]
                    )
                out.append(np.array(layers).transpose(1, 0, 2, 3))  # (b, L, H, n)
            return np.concatenate(out)

        return run

    def lowrank():
        return analyse(loaded, seqs, 128, batch_size=batch)

    def forward_only():
        model.set_attn_implementation("sdpa")
        for lo in range(0, len(ids), batch):
            with torch.inference_mode():
                model(input_ids=torch.from_numpy(ids[lo : lo + batch]))
        model.set_attn_implementation("eager")

    probs = [_captured_probs(loaded, ids[lo : lo + batch]) for lo in range(0, len(ids), batch)]

    def svd_only():
        return [singular_values(p, DEFAULT_SVD, default_workers()) for p in probs]

    t_naive_full = t_naive = float("nan")
    if MODEL.get("naive", True):
        ref, t_naive_full = _timed(naive(True))
        _, t_naive = _timed(naive(False))
    else:  # the float64 reference without the naive timings (a large model: hours)
        # each batch's P is captured layer by layer: (L * b * H, n, n) -> (b, L, H, n)
        layers, heads = loaded.num_layers, loaded.num_heads
        ref = np.concatenate(
            [
                np.linalg.svd(p.double().numpy(), compute_uv=False)
                .reshape(layers, -1, heads, p.shape[-1])
                .transpose(1, 0, 2, 3)
                for p in probs
            ]
        )
    result, t_lowrank = _timed(lowrank)
    _, t_forward = _timed(forward_only, repeat=2)
    _, t_svd = _timed(svd_only)
    c_ref = _c(ref).mean(0)  # (L, H, n)
    floor = t_forward + t_svd
    return {
        "model": MODEL["name"],
        "sequences": len(ids),
        "batch_size": batch,
        "seconds": {
            "naive_full_svd": t_naive_full,
            "naive_svals": t_naive,
            "lowrank": t_lowrank,
            "floor_forward": t_forward,
            "floor_svd": t_svd,
            "floor": floor,
        },
        "sequences_per_second": {
            "naive_full_svd": len(ids) / t_naive_full,
            "naive_svals": len(ids) / t_naive,
            "lowrank": len(ids) / t_lowrank,
            "floor": len(ids) / floor,
        },
        "speedup_vs_naive_full_svd": t_naive_full / t_lowrank,
        "speedup_vs_naive_svals": t_naive / t_lowrank,
        "lowrank_over_floor": t_lowrank / floor,
        "max_abs_c_error_vs_float64": float(np.abs(result.stats.cumulative.mean - c_ref).max()),
    }


def _memory_child(layers: int, variant: str) -> None:
    """Run one variant on a random RoBERTa-large-shaped model; print peak RSS above baseline."""
    from transformers import RobertaConfig, RobertaModel

    from lowrank.families.spectrum.pipeline import analyse
    from lowrank.inputs.corpora import Sequences
    from lowrank.inputs.models import LoadedModel, ModelSource

    torch.manual_seed(0)
    cfg = RobertaConfig(
        hidden_size=1024,
        num_hidden_layers=layers,
        num_attention_heads=16,
        intermediate_size=4096,
        vocab_size=1000,
        max_position_embeddings=514,
        attn_implementation="eager",
    )
    model = RobertaModel(cfg).eval()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    ids = np.random.default_rng(0).integers(5, 1000, size=(2, 512))
    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    if variant == "naive":
        with torch.inference_mode():
            res = model(input_ids=torch.from_numpy(ids), output_attentions=True)
        for att in res.attentions:
            for mat in att.double().numpy().reshape(-1, 512, 512):
                np.linalg.svd(mat, compute_uv=False)
    else:
        loaded = LoadedModel(
            model, None, ModelSource("random", "local", "-", None), layers, 16, 512
        )
        analyse(loaded, Sequences(ids, np.full(2, 512)), 128, batch_size=2)
    stop.set()
    thread.join()
    print(
        json.dumps(
            {
                "layers": layers,
                "variant": variant,
                "weights_bytes": weights,
                "peak_above_model_bytes": peak[0] - base,
                "seconds": time.perf_counter() - start,
            }
        )
    )


def memory() -> list[dict]:
    rows = []
    for layers in (6, 24):
        for variant in ("lowrank", "naive"):
            out = subprocess.run(
                [sys.executable, __file__, "--memory-child", str(layers), variant],
                capture_output=True,
                text=True,
                check=True,
            )
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


def _markdown(results: dict) -> str:
    lines = []
    if "kernels" in results:
        lines += ["| kernel | ms per 512 x 512 matrix | max abs error of c |", "|---|---|---|"]
        lines += [
            f"| {r['kernel']} | {r['ms_per_matrix']:.1f} | {r['max_abs_c_error']:.1e} |"
            for r in results["kernels"]
        ]
        lines.append("")
    if "pipeline" in results:
        p = results["pipeline"]
        sps = p["sequences_per_second"]
        lines += ["| variant | sequences/s | wall s |", "|---|---|---|"]
        for key, label in [
            ("naive_full_svd", "naive: output_attentions + np.linalg.svd(P)"),
            ("naive_svals", "naive: ... + np.linalg.svd(P, compute_uv=False)"),
            ("lowrank", "lowrank spectrum pipeline"),
            ("floor", "floor: forward (sdpa) + batched singular values"),
        ]:
            lines.append(f"| {label} | {sps[key]:.3f} | {p['seconds'][key]:.1f} |")
        lines += [
            "",
            f"lowrank / naive (full SVD): {p['speedup_vs_naive_full_svd']:.2f}x faster; "
            f"lowrank / naive (values only): {p['speedup_vs_naive_svals']:.2f}x faster; "
            f"lowrank time / floor time: {p['lowrank_over_floor']:.3f}; "
            f"max |c - float64 reference| = {p['max_abs_c_error_vs_float64']:.1e}",
            "",
        ]
    if "memory" in results:
        lines += [
            "| layers | variant | weights MB | peak above the model MB |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {r['layers']} | {r['variant']} | {r['weights_bytes'] / 2**20:.0f} | "
            f"{r['peak_above_model_bytes'] / 2**20:.0f} |"
            for r in results["memory"]
        ]
        one_p = 2 * 16 * 512 * 512 * 4 / 2**20
        lines.append(f"\nOne layer's P for this batch: {one_p:.0f} MB.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["kernels", "pipeline", "memory"], action="append")
    parser.add_argument("--sequences", type=int, default=8)
    parser.add_argument(
        "--model", default="minilm", help="lowrank --model of the kernels and pipeline sections"
    )
    parser.add_argument(
        "--no-naive",
        action="store_true",
        help="pipeline: skip the naive variants (hours on a 30-layer model)",
    )
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--out", type=Path, default=HERE / "results.json")
    parser.add_argument("--memory-child", nargs=2, metavar=("LAYERS", "VARIANT"))
    args = parser.parse_args()
    if args.memory_child:
        _memory_child(int(args.memory_child[0]), args.memory_child[1])
        return
    MODEL.update(name=args.model, naive=not args.no_naive)
    sections = args.only or ["kernels", "pipeline", "memory"]
    results: dict = {
        "machine": {
            "cpus": psutil.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    }
    if "kernels" in sections:
        results["kernels"] = kernels(2)
    if "pipeline" in sections:
        results["pipeline"] = pipeline(args.sequences, args.batch_size)
    if "memory" in sections:
        results["memory"] = memory()
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(_markdown(results))


if __name__ == "__main__":
    main()
