"""What ``lowrank verify`` prints, rebuilt from run.json and verify.json alone, so that a saved
run reports exactly as the fresh one did (runs of format 1 and 2, without the trivial P~
rows, report without them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lowrank.errors import LowrankError
from lowrank.families.verify.theorems import STATEMENTS, theorem1_k, theorem2_k

MEANING = {
    "paper": (
        "the printed bound eps ||Pw|| is smaller than the one the proof controls, so no "
        "rate here contradicts a proven statement; it shows how often the proof's "
        "construction P R^T R misses the paper's wording (the bottom singular vectors, "
        "where ||Pw|| is smallest, are the hard case)"
    ),
    "witness": (
        "the best rank-k approximation is one deterministic low-rank P~ for all w; for a "
        "single fixed w a rank-1 P~ = (Pw) w^T / ||w||^2 is already exact, so a rate above 0 "
        "does not contradict the theorem's existence claim: it says P_k is not within eps in "
        "the paper's relative sense for that share of vectors"
    ),
    "theorem2": (
        "Theorem 2 claims probability 1 - o(1) with unspecified Theta constants in k and no "
        "explicit failure bound, so these are measured rates only"
    ),
}
INTERVALS = (
    "Clopper-Pearson on the Korn-Graubard effective sample size; cluster = one draw of R "
    "(a matrix P with its vectors w, or with its n query rows for Theorem 2); conditional on "
    "the measured P, as the theorems quantify over R. JL rows draw a fresh R per trial "
    "(clusters of one: plain Clopper-Pearson)"
)
HEADER = (
    f"  {'P':<20}{'w':<16}{'eps':>5}{'k':>5}  {'failure rate [95% CI]':<27}"
    f"{'n_eff':>8}{'bound':>10}{'exact':>10}  verdict"
)


def head_dim(meta: dict[str, Any], records: list[dict[str, Any]]) -> int:
    """d of a verify run: recorded in run.json, or (older runs) the vectors per matrix of
    the real value columns."""
    if "head_dim" in meta:
        return int(meta["head_dim"])
    for r in records:
        if r["source"] == "real" and r["vectors"] == "values" and r["clusters"]:
            return int(r["trials"]) // int(r["clusters"])
    raise LowrankError("the run records no head dimension and has no real value rows")


def _row_line(r: dict[str, Any]) -> str:
    bound = "-" if r["bound"] is None else f"{r['bound']:.3g}"
    exact = "-" if r["exact"] is None else f"{r['exact']:.3g}"
    verdict = r["verdict"] if r["verdict"] != "n/a" else "- (no bound)"
    return (
        f"  {r['source']:<20}{r['vectors']:<16}{r['eps']:>5g}{r['k']:>5}  "
        f"{r['rate']:.4f} [{r['ci_low']:.4f}, {r['ci_high']:.4f}]  {r['n_eff']:>8.0f}"
        f"{bound:>10}{exact:>10}  {verdict}"
    )


def meets_text(base: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """Where a trivial P~ meets the bound of the measured rows beside it: ``meets the
    bound at k = 16, 32`` (only bounds below 1: a bound >= 1 says nothing), ``meets no bound
    below 1``, or ``(no bound)``."""
    bounded = [r for r in rows if r["bound"] is not None]
    if not bounded:
        return "(no bound)"
    ks = [str(r["k"]) for r in bounded if r["bound"] < 1 and base["rate"] < r["bound"]]
    return f"meets the bound at k = {', '.join(ks)}" if ks else "meets no bound below 1"


def _baseline_line(base: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    return (
        f"  {base['baseline']:<20}{base['vectors']:<16}{base['eps']:>5g}{'-':>5}  "
        f"{base['rate']:.4f} [{base['ci_low']:.4f}, {base['ci_high']:.4f}]  "
        f"{base['n_eff']:>8.0f}{'-':>10}{'-':>10}  {meets_text(base, rows)}"
    )


def statement_lines(
    statement: str, records: list[dict[str, Any]], baselines: list[dict[str, Any]]
) -> list[str]:
    """One statement's table: its rows grouped by (P, w, eps), each group followed by the
    trivial P~ (``zero``, ``uniform``) on the same matrices and vectors, then the plain
    words of :data:`MEANING`."""
    lines = [f"\n{statement}: {STATEMENTS.get(statement, statement)}", HEADER]
    mine = [r for r in records if r["statement"] == statement]
    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
    for r in mine:
        groups.setdefault((r["source"], r["vectors"], r["eps"]), []).append(r)
    for (source, vectors, eps), rows in groups.items():
        lines += [_row_line(r) for r in rows]
        for b in baselines:
            if (b["statement"], b["source"], b["vectors"], b["eps"]) == (
                statement,
                source,
                vectors,
                eps,
            ):
                lines.append(_baseline_line(b, rows))
    if statement in MEANING:
        top = max(r["k"] for r in mine)
        at_top = [r for r in mine if r["k"] == top and r["source"] == "real"] or [
            r for r in mine if r["k"] == top
        ]
        rates = ", ".join(
            f"eps={r['eps']:g} ({r['vectors']}): {r['rate']:.3f}"
            for r in at_top
            if r["vectors"] in ("values", "-")
        )
        lines.append(f"  in plain words: at k = {top}, {rates}; {MEANING[statement]}.")
    return lines


def _needed_lines(needed: list[dict[str, Any]], target: float, trivial: bool) -> list[str]:
    lines = [
        f"\nk needed for a failure rate below {target}: measured (point; certified = upper "
        "95% bound below it) against the k at which the statement's bound reaches that level"
        + ("; and which trivial P~ (zero, uniform attention) reach it too" if trivial else ""),
        f"  {'series':<44}{'eps':>5}{'measured':>10}{'certified':>11}{'bound k':>10}"
        f"{'bound/certified':>17}" + (f"  {'trivial P~ meets it'}" if trivial else ""),
    ]
    for row in needed:
        measured = "> max k" if row["measured_k"] is None else str(row["measured_k"])
        certified = "> max k" if row["certified_k"] is None else str(row["certified_k"])
        theory = "-" if row["theory_k_at_target"] is None else f"{row['theory_k_at_target']:.0f}"
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.1f}x"
        meets = ""
        if trivial:
            who = row.get("trivial_meets_target")
            meets = "  " + ("-" if who is None else ", ".join(who) or "no")
        lines.append(
            f"  {row['series']:<44}{row['eps']:>5g}{measured:>10}{certified:>11}{theory:>10}"
            f"{ratio:>17}{meets}"
        )
    return lines


def verify_report(
    meta: dict[str, Any],
    records: list[dict[str, Any]],
    needed: list[dict[str, Any]],
    path: Path | None = None,
    figures: list[Path] | None = None,
) -> str:
    """The text ``lowrank verify`` prints: what the rates are conditional on, per statement
    its rows (rate, interval, bound, verdict) with the trivial P~ beside them, the "k
    needed" table and the paper's k for reference, then the run folder and the figures."""
    tests = sum(1 for r in records if r["p_holm"] is not None)
    target, n = meta["target_delta"], int(meta["seq_len"])
    d, eps = head_dim(meta, records), [float(e) for e in meta["eps"]]
    baselines = meta.get("baselines") or []
    lines = [f"\nintervals: 95% {meta.get('intervals', INTERVALS)}"]
    verdicts = f"verdicts: Holm-corrected over {tests} rows whose bound a proof promises"
    if "conditional_on" in meta:
        n_seq = meta.get("num_sequences")
        which = "sequence" if n_seq == 1 else "sequences"
        verdicts += f", each conditional on the {n_seq or ''} {which} measured".replace("  ", " ")
    lines.append(verdicts)
    if "conditional_on" in meta:
        lines.append(f"rates: {meta['conditional_on']}")
    if baselines:
        lines.append(
            "trivial P~ (rows zero and uniform after each group, k '-': they draw no R): "
            + str(meta.get("baseline_rule", ""))
        )
    for statement in dict.fromkeys(r["statement"] for r in records):
        lines += statement_lines(statement, records, baselines)
    lines += _needed_lines(needed, target, bool(baselines))
    paper = ", ".join(f"eps={e:g}: {theorem1_k(n, e):.0f}" for e in eps)
    second = ", ".join(f"eps={e:g}: {theorem2_k(n, d, e):.0f}" for e in eps)
    lines.append(
        f"  for reference only (failure o(1), not {target}; not comparable with the rows "
        f"above): the paper's Theorem 1 k = 5 ln n / (eps^2 - eps^3) = {paper}; "
        f"Theorem 2 k = min(9 d ln d, 5 ln n) / eps^2 = {second}"
    )
    if path is not None:
        lines.append(f"run folder: {path}  (verify.csv, verify.json, verify.npz, run.json)")
    lines += [f"figure: {figure}" for figure in figures or []]
    return "\n".join(lines)
