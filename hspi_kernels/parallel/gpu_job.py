"""The multi-GPU job of issue 20, one call on a node with several GPUs:

    python -m hspi_kernels.parallel.gpu_job OUT_DIR --world 2,4 [--budget-s 500]

1. the distributed probes (``parallel.probes``) on NCCL for every NCCL algorithm / protocol
   setting in :data:`NCCL_SETTINGS` (``NCCL_ALGO`` / ``NCCL_PROTO`` in the ranks' environment):
   per setting the all-reduce order revealed and replayed N/N, the TP-degree digests, and which
   settings change the bits;
2. ``hspi probe --all-gpus`` on a probe subset: one fingerprint per GPU, bit-identical or not,
   with its wall time (a fresh process per GPU, as a user runs it: imports and CUDA start-up
   included).

Writes ``multigpu.json`` (platform metadata, every record) and ``multigpu.md``, prints a short
table last. Each step is time-boxed by ``--budget-s``; a skipped or failed step is recorded with
the reason. ``--backend gloo`` runs the same job on the CPU (the NCCL settings then change
nothing: a check of the job itself, ``tests/test_parallel_gpu_job.py``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from hspi_kernels.platform.files import atomic_write_json, atomic_write_text, check_output_dir

NCCL_SETTINGS = [{}, {"NCCL_ALGO": "Ring"}, {"NCCL_ALGO": "Tree"}, {"NCCL_PROTO": "Simple"},
                 {"NCCL_PROTO": "LL"}, {"NCCL_PROTO": "LL128"}]
JSON_NAME, MD_NAME = "multigpu.json", "multigpu.md"


def _setting_name(env: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in env.items()) or "default"


def _with_env(env: dict, fn):
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return fn()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def markdown(rec: dict) -> str:
    L = [f"# Multi-GPU: TP degree and collective order ({rec['backend']})", "",
         f"Platform: {rec['platform'].get('label', '?')}; world sizes {rec['world_sizes']}; "
         f"{rec.get('elapsed_s', 0):.0f} s of a {rec['budget_s']:.0f} s budget.", "",
         f"Reproduce: `python -m hspi_kernels.parallel.gpu_job OUT --world {','.join(map(str, rec['world_sizes']))}`",
         "", "## Distributed probes per collective setting", "",
         "| setting | probe | status | digest | explained (own inputs) | replay (fresh) |", "|---|---|---|---|---|---|"]
    for name, recs in rec["settings"].items():
        for r in recs.get("records", []):
            ex = r.get("explained_by", [])
            own = f"{ex[0]['matches']}/{ex[0]['total']}" if ex else "-"
            fresh = f"{ex[1]['matches']}/{ex[1]['total']}" if len(ex) > 1 else "-"
            L.append(f"| {name} | `{r['id']}` | {r['status']} | `{r.get('digest')}` | {own} | {fresh} |")
        if "error" in recs or "reason" in recs:
            L.append(f"| {name} | - | {recs.get('status')} | - | {recs.get('error', recs.get('reason', ''))[:120]} | - |")
    L += ["", "Settings that change a probe's bits vs the default: "
          + (", ".join(f"`{k}`: {v}" for k, v in rec.get("setting_differences", {}).items()) or "none"), ""]
    node = rec.get("all_gpus")
    if node:
        L += ["## hspi probe --all-gpus", "",
              f"{len(node.get('gpus', []))} GPU(s), wall {node.get('wall_s')} s (fresh processes, host overhead "
              f"included); bit-identical: **{node.get('bit_identical')}**", "",
              "| GPU | status | probes | wall s | differing probes |", "|---|---|---|---|---|"]
        for g in node.get("gpus", []):
            L.append(f"| {g['device']} | {g['status']} | {g.get('probes')} | {g['wall_s']} | "
                     f"{len(g.get('differing_probes', [])) if 'differing_probes' in g else '-'} |")
    L += ["", "## Steps", "", "| step | status | seconds | note |", "|---|---|---|---|"]
    for s in rec["steps"]:
        L.append(f"| {s['step']} | {s['status']} | {s.get('seconds', '-')} | {s.get('reason', s.get('error', ''))[:160]} |")
    return "\n".join(L) + "\n"


def main(argv: list[str] | None = None) -> int:
    t_start = time.perf_counter()
    ap = argparse.ArgumentParser(prog="python -m hspi_kernels.parallel.gpu_job")
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--world", default="2", help="world sizes, e.g. 2,4")
    ap.add_argument("--backend", default="nccl", choices=["nccl", "gloo"])
    ap.add_argument("--budget-s", type=float, default=500.0)
    ap.add_argument("--settings", type=int, default=len(NCCL_SETTINGS), help="first N collective settings")
    ap.add_argument("--all-gpus-only", default="cuda/", help="--only of the --all-gpus step ('' = the whole suite; "
                    "'skip' = no such step)")
    args = ap.parse_args(argv)
    from hspi_kernels.parallel import probes as DP
    from hspi_kernels.parallel.group import backend_unavailable
    from hspi_kernels import platform as plat

    try:
        world = DP.parse_world_sizes(args.world)
        out = check_output_dir(args.out_dir, kind="output folder")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    reason = backend_unavailable(args.backend, max(world))
    meta = plat.collect()
    rec: dict[str, Any] = {"backend": args.backend, "world_sizes": list(world), "budget_s": args.budget_s,
                           "platform": {**meta, "label": plat.platform_label(meta)}, "settings": {}, "steps": []}

    def elapsed() -> float:
        return time.perf_counter() - t_start

    def save() -> None:
        rec["elapsed_s"] = round(elapsed(), 1)
        atomic_write_json(out / JSON_NAME, rec)
        atomic_write_text(out / MD_NAME, markdown(rec))

    def step(name: str, estimate: float, fn):
        if elapsed() + estimate > args.budget_s:
            rec["steps"].append({"step": name, "status": "skipped",
                                 "reason": f"time budget: {elapsed():.0f} s used, estimate {estimate:.0f} s"})
            save()
            return None
        t0 = time.perf_counter()
        try:
            res, status = fn(), {"status": "ok"}
        except Exception as exc:  # noqa: BLE001 - recorded, the job goes on
            res, status = None, {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:500],
                                 "traceback": traceback.format_exc()[-1500:]}
        status.update(step=name, seconds=round(time.perf_counter() - t0, 2))
        rec["steps"].append(status)
        print(f"[{elapsed():6.1f}s] {status['status']:>7} {name} {status['seconds']:.1f} s", flush=True)
        save()
        return res

    if reason is not None:
        rec["steps"].append({"step": "distributed probes", "status": "skipped", "reason": reason})
    else:
        est = [30.0]
        for env in NCCL_SETTINGS[:max(1, args.settings)]:
            name = _setting_name(env)
            t0 = time.perf_counter()
            recs = step(f"distributed probes ({name})", est[0],
                        lambda env=env: _with_env(env, lambda: DP.records(world, backend=args.backend)))
            est[0] = max(est[0] * 0.5, 1.2 * (time.perf_counter() - t0))
            rec["settings"][name] = {"env": env, "records": recs} if recs is not None else {"env": env, "status": "not run"}
        base = {r["id"]: r.get("digest") for r in rec["settings"].get("default", {}).get("records") or []}
        diffs = {}
        for name, s in rec["settings"].items():
            changed = [r["id"] for r in s.get("records") or [] if r["id"] in base and r.get("digest") != base[r["id"]]]
            if name != "default" and changed:
                diffs[name] = changed
        rec["setting_differences"] = diffs
    if args.all_gpus_only != "skip":
        from hspi_kernels.fingerprint import node

        devices = node.gpu_indices()
        if not devices:
            rec["steps"].append({"step": "hspi probe --all-gpus", "status": "skipped", "reason": "no CUDA GPU"})
        else:
            only = ["--only", args.all_gpus_only] if args.all_gpus_only else []
            rec["all_gpus"] = step("hspi probe --all-gpus", 60.0,
                                   lambda: node.run(devices, out / "node.json", [*only, "--no-cache"],
                                                    timeout=max(30.0, args.budget_s - elapsed())))
    save()
    print(f"done in {elapsed():.1f} s: {out / JSON_NAME}", flush=True)
    print(f"{'setting':<22} {'probe':<40} {'status':<8} explained")
    for name, s in rec["settings"].items():
        for r in s.get("records") or []:
            ex = r.get("explained_by", [])
            print(f"{name:<22} {r['id'][-40:]:<40} {r['status']:<8} "
                  f"{(str(ex[0]['matches']) + '/' + str(ex[0]['total'])) if ex else '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
