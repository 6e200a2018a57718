"""Writing a benchmark result: JSON (everything), Markdown (tables), PNG (time and memory vs E, log-log)."""
from __future__ import annotations

import json
import math
from collections import OrderedDict
from pathlib import Path

__all__ = ["write_json", "write_markdown", "write_png", "markdown", "fmt_ms", "fmt_bytes", "row_memory"]

PASS_TITLES = {"fwd+bwd": "forward + backward (training step)", "fwd": "forward (inference)"}


def fmt_ms(ms: float | None) -> str:
    if ms is None or math.isnan(ms):
        return "—"
    if ms >= 1000:
        return f"{ms / 1000:.3g} s"
    if ms >= 100:
        return f"{ms:.0f} ms"
    return f"{ms:.3g} ms"


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    if n >= 2 ** 30:
        return f"{n / 2 ** 30:.3g} GiB"
    if n >= 2 ** 20:
        return f"{n / 2 ** 20:.3g} MiB"
    return f"{n / 2 ** 10:.3g} KiB"


def row_memory(row: dict) -> int | None:
    """The memory number shown for a row: CUDA absolute peak, else the CPU step increase."""
    return row["peak_mem_bytes"] if row.get("peak_mem_bytes") is not None else row.get("step_mem_bytes")


def memory_label(env: dict) -> str:
    if env.get("device_type") == "cuda":
        return "peak allocated (torch.cuda.max_memory_allocated)"
    return "peak RSS increase during the step (sampled)"


def write_json(result: dict, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=str) + "\n")
    tmp.replace(path)
    return path


def _sections(result: dict) -> "OrderedDict[tuple[str, str], OrderedDict[str, dict]]":
    """(group, pass) -> impl -> {edges: row}, in run order (unavailable implementations have no cells)."""
    cfg, rows = result["config"], result["rows"]
    out = OrderedDict()
    for g in cfg["groups"]:
        for p in cfg["passes"]:
            table = OrderedDict()
            for name in cfg["impls"]:
                cells = {r["edges"]: r for r in rows
                         if r["impl"] == name and r["group"] == g and r["pass"] == p and r["edges"] is not None}
                if cells:
                    table[name] = cells
            out[(g, p)] = table
    return out


def markdown(result: dict) -> str:
    env, cfg = result["env"], result["config"]
    device = env["device"] if env["device_type"] == "cuda" else f"CPU: {env['device']} ({env['torch_threads']} threads)"
    versions = ", ".join(f"{k} {env[k]}" for k in ("torch", "cuda", "triton", "escnn", "e3nn", "numpy", "fastik")
                         if env.get(k))
    commit = env.get("git_commit") or "unknown"
    if env.get("git_dirty"):
        commit += " (uncommitted changes)"
    lines = [
        f"# fastik benchmark — {env['date']}, {device}",
        "",
        f"- **device**: {device}"
        + (f", {fmt_bytes(env['device_memory_bytes'])}" if env.get("device_memory_bytes") else ""),
        f"- **software**: {versions}; dtype {env['dtype']}, TF32 {'on' if env['tf32_matmul'] else 'off'}"
        + (", TRITON_INTERPRET=1" if env.get("triton_interpret") else ""),
        f"- **workload**: {result['workload']['description']}",
        f"- **timing**: {result['workload']['timing']}; cells are median time · {memory_label(env)}",
        f"- **memory**: {env['memory_method']}",
        f"- **commit**: {commit}; run took {result.get('elapsed_s', 0):.0f} s"
        + ("; `--quick` (tiny sizes: numbers for smoke-testing only)" if cfg.get("quick") else ""),
        "",
    ]
    if result.get("interrupted"):
        lines += ["**Interrupted**: the run was stopped early; the rows below are those measured before.", ""]
    edges_all = sorted({r["edges"] for r in result["rows"] if r["edges"] is not None})
    agnostic_note = False
    for (g, p), table in _sections(result).items():
        if not table:
            continue
        fields = next(iter(next(iter(table.values())).values()))["fields"]
        lines += [f"## {g} — {fields}: {PASS_TITLES.get(p, p)}", ""]
        lines.append("| implementation | " + " | ".join(f"E = {e:,}" for e in edges_all) + " |")
        lines.append("|---|" + "---:|" * len(edges_all))
        for name, cells in table.items():
            label = name
            if any(r.get("group_agnostic") for r in cells.values()):
                label += " ⁽*⁾"
                agnostic_note = True
            out = []
            for e in edges_all:
                r = cells.get(e)
                if r is None:
                    out.append("")
                elif r["status"] == "ok":
                    out.append(f"{fmt_ms(r['median_ms'])} · {fmt_bytes(row_memory(r))}")
                else:
                    out.append({"oom": "OOM", "error": "error", "skipped": "skip"}.get(r["status"], r["status"]))
            lines.append(f"| {label} | " + " | ".join(out) + " |")
        lines.append("")
    if agnostic_note:
        lines += ["⁽*⁾ no symmetry, independent of the group: measured once, with the first group.", ""]
    rounds = [r for r in result["rows"] if r["status"] == "ok" and len(r.get("round_medians_ms") or []) > 1]
    if rounds:
        lines += ["## Round medians", "",
                  "Each row's median per round, the rows of one size interleaved round by round: a spread larger than",
                  "the differences between implementations means the machine drifted or an implementation is bimodal.", ""]
        lines += [f"- {r['impl']} ({r['group']}, {r['pass']}, E = {r['edges']:,}): "
                  + ", ".join(fmt_ms(t) for t in r["round_medians_ms"]) for r in rounds]
        lines.append("")
    problems = [r for r in result["rows"] if r["status"] != "ok"]
    if problems:
        lines += ["## Skipped and failed", ""]
        merged = OrderedDict()
        for r in problems:
            key = (r["impl"], r["group"], r["pass"], r["status"], r["reason"])
            merged.setdefault(key, []).append(r["edges"])
        for (name, g, p, status, reason), edges in merged.items():
            where = "all sizes" if edges == [None] else "E = " + ", ".join(f"{e:,}" for e in edges)
            what = "all passes" if p == "all" else p
            lines.append(f"- **{name}** ({g}, {what}, {where}) — {status}: {reason}")
        lines.append("")
    lines += ["## Implementations", ""]
    lines += [f"- **{name}**: {summary}" for name, summary in result["impls"].items()]
    lines.append("")
    return "\n".join(lines)


def write_markdown(result: dict, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown(result))
    return path


def write_png(result: dict, path: Path) -> tuple[Path | None, str | None]:
    """Time and memory vs E (log-log), one row of panels per group. Returns (path, None) or (None, reason)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return None, f"matplotlib not installed ({exc}); pip install matplotlib (or the 'bench' extra)"
    env, cfg = result["env"], result["config"]
    rows = [r for r in result["rows"] if r["status"] == "ok"]
    groups = [g for g in cfg["groups"] if any(r["group"] == g for r in rows)] or cfg["groups"][:1]
    impls = cfg["impls"]
    colors = {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(impls)}
    styles = {"fwd+bwd": ("-", "o"), "fwd": ("--", "s")}
    fig, axes = plt.subplots(len(groups), 2, figsize=(12, 4.2 * len(groups)), squeeze=False)
    for gi, g in enumerate(groups):
        ax_t, ax_m = axes[gi]
        for name in impls:
            for p in cfg["passes"]:
                sel = sorted((r for r in rows if r["impl"] == name and r["pass"] == p
                              and (r["group"] == g or r.get("group_agnostic"))), key=lambda r: r["edges"])
                if not sel:
                    continue
                ls, marker = styles.get(p, (":", "^"))
                label = f"{name} {p}"
                e = [r["edges"] for r in sel]
                ax_t.plot(e, [r["median_ms"] for r in sel], ls=ls, marker=marker, color=colors[name], label=label)
                mem = [(r["edges"], row_memory(r)) for r in sel if row_memory(r)]
                if mem:
                    ax_m.plot([m[0] for m in mem], [m[1] / 2 ** 20 for m in mem], ls=ls, marker=marker,
                              color=colors[name], label=label)
        fields = next((r["fields"] for r in rows if r["group"] == g), "")
        ax_t.set_title(f"{g} ({fields}): time")
        ax_m.set_title(f"{g}: memory")
        ax_t.set_ylabel("median time per call (ms)")
        ax_m.set_ylabel(("peak allocated" if env["device_type"] == "cuda" else "peak RSS increase") + " (MiB)")
        for ax in (ax_t, ax_m):
            ax.set_xlabel("edges E")
            if ax.has_data():
                ax.set_xscale("log")
                ax.set_yscale("log")
                ax.legend(fontsize=7)
            ax.grid(True, which="both", alpha=0.3)
    device = env["device"] if env["device_type"] == "cuda" else f"CPU {env['device']}"
    fig.suptitle(f"fastik bench — {device} — {env['date']} — {env['dtype']}, TF32 "
                 f"{'on' if env['tf32_matmul'] else 'off'}" + (" — quick (smoke test)" if cfg.get("quick") else ""),
                 fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (4.2 * len(groups))))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path, None
