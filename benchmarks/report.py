"""The benchmark's output: CSV (every column), Markdown table, console table, machine line."""

from __future__ import annotations

import contextlib
import csv
import datetime
import os
import platform
import re
from pathlib import Path
from typing import Any

import torch

GIB = 2**30

CSV_COLUMNS = [
    "device",
    "granularity",
    "B",
    "S",
    "E",
    "dtype",
    "compile",
    "M",
    "N",
    "naive_s",
    "naive_peak_mib",
    "library_s",
    "library_peak_mib",
    "floor_s",
    "floor_peak_mib",
    "naive_over_library_time",
    "naive_over_library_mem",
    "library_over_floor_time",
    "library_over_floor_mem",
    "library_value",
    "float64_value",
    "library_rel_err",
    "naive_value",
    "naive_vs_library_rel_diff",
    "naive_vs_library_grad_rel_diff",
    "naive_median_s",
    "library_median_s",
    "floor_median_s",
    "naive_min_s",
    "library_min_s",
    "floor_min_s",
    "library_peak_over_mn",
    "library_peak_over_input",
    "naive_estimated_gib",
    "runs",
    "note",
]

# (header, csv column, format)
MARKDOWN_COLUMNS: list[tuple[str, str, str]] = [
    ("granularity", "granularity", "s"),
    ("B", "B", "d"),
    ("S", "S", "d"),
    ("E", "E", "d"),
    ("dtype", "dtype", "s"),
    ("compile", "compile", "s"),
    ("naive s", "naive_s", "time"),
    ("naive MiB", "naive_peak_mib", "mib"),
    ("library s", "library_s", "time"),
    ("library MiB", "library_peak_mib", "mib"),
    ("floor s", "floor_s", "time"),
    ("floor MiB", "floor_peak_mib", "mib"),
    ("naive/lib time", "naive_over_library_time", "ratio"),
    ("naive/lib mem", "naive_over_library_mem", "ratio"),
    ("lib/floor time", "library_over_floor_time", "ratio"),
    ("rel err vs f64", "library_rel_err", "err"),
    ("naive vs lib", "naive_vs_library_rel_diff", "err"),
    ("note", "note", "s"),
]


def format_cell(value: Any, kind: str) -> str:
    """One table cell: ``kind`` is a format of :data:`MARKDOWN_COLUMNS`."""
    if value is None or value == "":
        return "—" if kind != "s" else ""
    if kind == "time":
        return f"{value:.3f}" if value < 10 else f"{value:.1f}"
    if kind == "mib":
        return f"{value:.1f}" if value < 100 else f"{value:.0f}"
    if kind == "ratio":
        return f"{value:.2f}x" if value < 10 else f"{value:.0f}x"
    if kind == "err":
        return f"{value:.1e}"
    return str(value)


def machine_line(device: torch.device) -> str:
    """CPU model, cores, torch version, date (and the GPU on CUDA)."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as cpuinfo:
            match = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read(), re.MULTILINE)
        if match:
            model = match.group(1).strip()
    parts = [
        f"CPU: {model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads",
        f"torch {torch.__version__}",
        f"python {platform.python_version()}",
    ]
    with contextlib.suppress(OSError):
        load = os.getloadavg()
        parts.append(f"load average at start {load[0]:.1f}")
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        parts.insert(
            1,
            f"GPU: {props.name} ({props.total_memory / GIB:.0f} GiB), CUDA {torch.version.cuda}, "
            f"TF32 {'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'}",
        )
    parts.append(datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    return "; ".join(parts)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table with the columns of :data:`MARKDOWN_COLUMNS`."""
    header = "| " + " | ".join(name for name, _, _ in MARKDOWN_COLUMNS) + " |"
    rule = "|" + "|".join("---" if kind == "s" else "--:" for _, _, kind in MARKDOWN_COLUMNS) + "|"
    lines = [header, rule]
    for row in rows:
        cells = [format_cell(row.get(key), kind) for _, key, kind in MARKDOWN_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(
    rows: list[dict[str, Any]],
    out_dir: Path,
    device: torch.device,
    machine: str,
    command: str,
    memory: str,
    statistic: str = "median",
) -> tuple[Path, Path]:
    """Write ``results_<device>.csv`` and ``results_<device>.md`` under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / f"results_{device.type}.csv"
    md_path = out_dir / f"results_{device.type}.md"
    with open(csv_path, "w", newline="") as handle:
        handle.write(f"# machine: {machine}\n")
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {key: ("" if row.get(key) is None else row.get(key)) for key in CSV_COLUMNS}
            )
    with contextlib.suppress(OSError):
        machine += f" (at end {os.getloadavg()[0]:.1f})"
    text = [
        f"Machine: {machine}",
        "",
        f"Command: `{command}`",
        "",
        f"Forward + backward of `mutual_information_sub_batch` (gradients w.r.t. all four "
        f"`(B, S, E)` inputs); seconds: {statistic} of the timed calls; peak extra memory in MiB above the inputs "
        f"(input gradients included), measured with `{memory}`.",
        "",
        markdown_table(rows),
        "",
    ]
    md_path.write_text("\n".join(text))
    return csv_path, md_path


def print_table(rows: list[dict[str, Any]], machine: str) -> None:
    """Print the table with ``rich`` when it is installed, as Markdown otherwise."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(machine)
        print(markdown_table(rows))
        return
    table = Table(title=machine, show_lines=False)
    for name, _, kind in MARKDOWN_COLUMNS:
        table.add_column(name, justify="left" if kind == "s" else "right", overflow="fold")
    for row in rows:
        table.add_row(*[format_cell(row.get(key), kind) for _, key, kind in MARKDOWN_COLUMNS])
    Console(width=320).print(table)
