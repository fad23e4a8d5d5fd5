"""Benchmark: the HTML report on the embedded SmolLM2-135M (default and --quick), per section.

Run: OMP_NUM_THREADS=1 python benchmarks/report.py [--quick] [--model NAME_OR_FOLDER ...]
     [--output out/bench_report.html] [--cli]

Prints the wall time of the whole report (model loading included: ``build_report(None)``
loads the embedded model itself) and each section's seconds and share of it, from
``ReportConfig.timings``. ``--cli`` also times ``python -c "import oversquash_lens.cli"`` and
``oversquash-lens --help`` in fresh interpreters. Never changes torch's thread count: it runs
with whatever ``OMP_NUM_THREADS`` gives. On a shared machine the times are noisy; the load
average is printed beside them.
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path


def _cli_times(repeat: int = 3) -> None:
    exe = Path(sys.executable)
    commands = {
        "import oversquash_lens.cli": [str(exe), "-c", "import oversquash_lens.cli"],
        "oversquash-lens --help": [str(exe), "-m", "oversquash_lens.cli", "--help"],
        "oversquash-lens report --help": [
            str(exe),
            "-m",
            "oversquash_lens.cli",
            "report",
            "--help",
        ],  # fmt: skip
    }
    for name, cmd in commands.items():
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            times.append(time.perf_counter() - start)
        print(f"{name:34s} min {min(times):6.2f} s  (runs: {', '.join(f'{t:.2f}' for t in times)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="time the --quick page")
    parser.add_argument(
        "--model",
        action="append",
        default=None,
        help="model(s) to report on (default: the embedded one); twice compares",
    )
    parser.add_argument("--output", default="out/bench_report.html")
    parser.add_argument("--cli", action="store_true", help="also time --help and the CLI import")
    args = parser.parse_args()

    import torch

    from oversquash_lens.models import load_model
    from oversquash_lens.report import ReportConfig, build_report

    config = ReportConfig.quick() if args.quick else ReportConfig()
    models = [None] if not args.model else [load_model(m) for m in args.model]
    print(
        f"{'quick' if args.quick else 'default'} report, torch threads {torch.get_num_threads()}"
        f" (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}), load average "
        f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
    )
    start = time.perf_counter()
    path = build_report(models=models, path=args.output, config=config, progress=False)
    wall = time.perf_counter() - start
    total = config.timings.get("total", wall)
    print(f"wall {wall:.1f} s (report total {total:.1f} s), {path.stat().st_size / 1e6:.1f} MB")
    for name, seconds in config.timings.items():
        if name != "total":
            print(f"  {name:22s} {seconds:7.2f} s  {100 * seconds / total:5.1f}%")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.cli:
        _cli_times()


if __name__ == "__main__":
    main()
