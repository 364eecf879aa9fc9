"""Where a command's peak memory happens: resident memory sampled over time, with the log line it was at.

``/usr/bin/time -v`` gives one number, the peak RSS of the largest process. This runs the command,
samples the RSS of the process and each of its children every ``--interval`` seconds, and keeps the
command's output lines with their times, so that the peak can be put next to the phase that caused it
(decoding, the prefix cache, a fold's training, the report). Prints JSON:

    python benchmarks/rss_timeline.py [--interval 0.2] [--top 5] -- medtl demo --out /tmp/demo

``peak_rss_gb`` is the largest RSS of any one process (what ``time -v`` reports; GB = 10^9 bytes), ``peak_tree_gb``
the largest sum over the process tree (what the machine must hold), ``peaks`` the ``--top`` highest
samples of the main process, each with the last output line before it.
"""

from __future__ import annotations

import argparse
import bisect
import json
import subprocess
import sys
import threading
import time

import psutil


def _reader(stream, lines: list[tuple[float, str]], t0: float, echo: bool) -> None:
    for raw in iter(stream.readline, ""):
        line = raw.rstrip()
        if line.strip():
            lines.append((time.monotonic() - t0, line.strip()[:200]))
        if echo:
            print(raw, end="", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--interval", type=float, default=0.2, help="seconds between samples")
    ap.add_argument("--top", type=int, default=5, help="how many of the highest samples to report")
    ap.add_argument("--echo", action="store_true", help="also copy the command's output to stderr")
    ap.add_argument("--out", help="also write the full timeline (JSON) here")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = ap.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        ap.error("no command given (put it after --)")

    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    lines: list[tuple[float, str]] = []
    reader = threading.Thread(target=_reader, args=(proc.stdout, lines, t0, args.echo), daemon=True)
    reader.start()
    main_proc = psutil.Process(proc.pid)
    samples: list[tuple[float, int, int]] = []  # (seconds, main RSS, tree RSS)
    peak_one = 0
    while proc.poll() is None:
        try:
            rss_main = main_proc.memory_info().rss
            tree = rss_main
            for child in main_proc.children(recursive=True):
                try:
                    rss = child.memory_info().rss
                except psutil.Error:
                    continue
                tree += rss
                peak_one = max(peak_one, rss)
            peak_one = max(peak_one, rss_main)
            samples.append((time.monotonic() - t0, rss_main, tree))
        except psutil.Error:
            pass
        time.sleep(args.interval)
    reader.join(timeout=5)
    times = [t for t, _ in lines]

    def at(t: float) -> str:
        i = bisect.bisect_right(times, t) - 1
        return lines[i][1] if i >= 0 else "(before the first output line)"

    gb = 1e9  # GB = 10^9 bytes, as benchmarks/cases.py reports demo_peak_rss_gb
    top = sorted(samples, key=lambda s: s[1], reverse=True)[: args.top]
    result = {
        "command": cmd,
        "returncode": proc.returncode,
        "seconds": round(time.monotonic() - t0, 1),
        "samples": len(samples),
        "peak_rss_gb": round(peak_one / gb, 3),
        "peak_tree_gb": round(max((s[2] for s in samples), default=0) / gb, 3),
        "peaks": [{"t": round(t, 1), "rss_gb": round(m / gb, 3), "during": at(t)} for t, m, _ in top],
    }
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({**result, "timeline": [[round(t, 2), m, tr] for t, m, tr in samples],
                       "lines": [[round(t, 2), s] for t, s in lines]}, fh)
    print(json.dumps(result, indent=2))
    return 0 if proc.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
