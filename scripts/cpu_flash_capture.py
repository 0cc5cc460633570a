"""Capture torch's CPU flash attention bits on this host (no GPU needed) for fitting its order offline.

Runs :func:`hspi_kernels.probes.cpu_attention.capture` at 1 torch thread (every case) and at the
default thread count (the random cases: a trace's CPU side runs threaded), writes
``OUT/cpu_flash_capture.npz`` (meta JSON + bits, written atomically) and prints, per case, how many
output / lse values the project's replay orders reproduce (``numerics.attention_cpu``: the
orders measured per torch release, ``ORDERS``), so a new host's distance from them shows at once.

    python scripts/cpu_flash_capture.py OUT
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np


def _orders():
    from hspi_kernels.numerics import attention_cpu as AC

    return {f"torch{rel}": order for rel, (order, _) in AC.ORDERS.items()}


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: cpu_flash_capture.py OUT", file=sys.stderr)
        return 2
    from hspi_kernels.platform.files import OutputPathError, atomic_write_npz, check_output_dir

    try:
        out_dir = check_output_dir(args[0])
    except OutputPathError as e:
        print(f"cpu_flash_capture: {e}", file=sys.stderr)
        return 2
    try:
        import torch
    except ImportError:
        print("cpu_flash_capture: torch is not installed; nothing to capture", file=sys.stderr)
        return 2
    from hspi_kernels.probes import cpu_attention as P

    t0 = time.time()
    meta, arrays = P.capture(threads=1)
    t1 = time.time()
    threaded = [c for c in P.default_cases() if c.kind == "random" and c.name.startswith("zoo_")]
    n_threads = torch.get_num_threads()
    meta_t, arrays_t = P.capture(threaded, threads=n_threads)
    same_threaded = {c.name: all(np.array_equal(arrays_t[f"{c.name}.{x}"], arrays[f"{c.name}.{x}"])
                                 for x in ("out", "lse")) for c in threaded}
    meta.update(threaded_threads=n_threads, threaded_equal_to_one_thread=same_threaded,
                seconds={"one_thread": round(t1 - t0, 2), "threaded": round(time.time() - t1, 2)})
    rows = []
    for row in meta["cases"]:
        c = P.case_of(row)
        cells = {}
        for name, order in _orders().items():
            try:
                n = P.replay_counts(c, arrays, order)
            except NotImplementedError as e:
                cells[name] = f"refused: {str(e)[:40]}"
                continue
            cells[name] = {"out": n["out"], "lse": n["lse"]}
        out_t = arrays.get(f"{c.name}.out")
        rows.append({"case": c.name, "out_total": None if out_t is None else int(out_t.size),
                     "lse_total": int(arrays[f"{c.name}.lse"].size), "replays": cells})
    meta["replays"] = rows
    atomic_write_npz(out_dir / "cpu_flash_capture.npz", dict(arrays, meta=np.array(json.dumps(meta))))
    print(f"platform: {meta['platform']['cpu_model']} ({meta['platform']['cpu_vendor']}), torch "
          f"{meta['platform']['torch']['version']}, {meta['cpu_capability']}; flags "
          f"{','.join(f for f in meta['platform']['cpu_flags'] if 'amx' in f or 'avx512' in f)}")
    print(f"threaded ({n_threads}) equal to 1 thread: {sum(same_threaded.values())}/{len(same_threaded)}")
    names = list(_orders())
    print(f"{'case':34}" + "".join(f" {n + ' out':>16} {n + ' lse':>14}" for n in names))
    for r in rows:
        cells = []
        for name in names:
            x = r["replays"][name]
            if isinstance(x, str):
                cells += [x[:16], ""]
            else:
                cells += ["-" if x["out"] is None else f"{x['out']}/{r['out_total']}", f"{x['lse']}/{r['lse_total']}"]
        print(f"{r['case']:34}" + "".join(f" {cells[2 * i]:>16} {cells[2 * i + 1]:>14}" for i in range(len(names))))
    print(f"wrote {out_dir / 'cpu_flash_capture.npz'} in {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
