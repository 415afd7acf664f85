"""Groups and scale on real data: a study over sources of WordNet glosses, its drill-down, and the cost at n=10,000.

    python benchmarks/units.py plant --out /tmp/units/w2000            # the splits (train.csv has a source column)
    python benchmarks/units.py study --data /tmp/units/w2000           # unit study + drill-down, times, memory
    python benchmarks/units.py scale --n-train 10000 --out /tmp/units/w10000   # embeddings, clusters, retrains
    python benchmarks/units.py clusters --data /tmp/units/w2000        # do planted copies share a cluster?

``plant``: fixed-seed WordNet splits (``benchmarks/realdata.py``: noun glosses -> lexicographer class) with
``--n-train`` training rows in ``--sources`` sources (column ``source``). ``--unit-pairs`` P planted harmful unit
pairs: ``--copies`` c real glosses each, whose originals (true class) go to the test split; source A_p holds one
near-copy of each with a wrong class, source B_p another near-copy with the same wrong class. Either source alone
still teaches the wrong class, so dropping one changes little and dropping both helps (masking, as realdata.py's
harmful pairs, one level up); inside (A_p, B_p) the planted example pairs are the two copies of one gloss. The
other rows fill the remaining sources at random. ``manifest.json`` lists the planted unit pairs by source name
and the planted example pairs by training index.

``study``: ``dataspex run`` with ``design.units=column:source`` (``--m`` fit masks, default 4 per unit, 64
held-out, 16 seed replicates; linear, ProxySPEX and quadratic fitted), then for each pair model the recall@10
of the planted unit pairs among its top harmful unit pairs, then ``dataspex drill`` into the top
``--drill-pairs`` harmful unit pairs of the most faithful pair model and the recall of the planted example pairs
inside. Prints wall time and peak RSS of every stage (each stage a child process: its own peak).

``scale``: WordNet at ``--n-train`` (default 10,000) with ``design.units=cluster:K``: the embeddings and K-means
(``dataspex design``) and ``--retrains`` retrains (``dataspex train``), each timed, with peak RSS.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import realdata  # noqa: E402

EXE = os.path.join(os.path.dirname(sys.executable), "dataspex")


def plant(n_train: int, sources: int, unit_pairs: int, copies: int, n_test: int, n_eval: int, seed: int) -> dict:
    """The splits with a source per training row (see the module docstring)."""
    n_planted = unit_pairs * copies
    if 2 * unit_pairs >= sources:
        raise ValueError(f"{unit_pairs} planted unit pairs need more than {2 * unit_pairs} sources")
    splits = realdata.build("wordnet", n_train, n_test, n_eval, seed, harmful=n_planted)
    rng = np.random.default_rng([seed, 17])
    names = [f"src{k:03d}" for k in rng.permutation(sources)]
    planted_sources = names[:2 * unit_pairs]  # A_p = names[2p], B_p = names[2p + 1]
    source_of = [None] * len(splits["train"])
    example_pairs = []
    for k, pair in enumerate(splits["planted"]):
        p = k // copies
        source_of[pair["i"]], source_of[pair["j"]] = planted_sources[2 * p], planted_sources[2 * p + 1]
        example_pairs.append({"i": pair["i"], "j": pair["j"], "test": pair["test"], "unit_pair": p})
    rest = names[2 * unit_pairs:]
    bulk = [k for k in range(len(source_of)) if source_of[k] is None]
    for k, row in zip(bulk, rng.permutation(len(bulk))):
        source_of[k] = rest[row % len(rest)]
    return {**splits, "source_of": source_of,
            "unit_pairs": [[planted_sources[2 * p], planted_sources[2 * p + 1]] for p in range(unit_pairs)],
            "example_pairs": example_pairs,
            "info": {**splits["info"], "sources": sources, "copies": copies, "n_unit_pairs": unit_pairs}}


def write_planted(splits: dict, out: str) -> dict:
    manifest = realdata.write(splits, out)
    path = os.path.join(out, "train.csv")
    with open(path + ".tmp", "w", encoding="utf-8", newline="") as fh:  # train.csv again, with its sources
        writer = csv.writer(fh)
        writer.writerow(["text", "label", "source"])
        writer.writerows((t, y, s) for (t, y), s in zip(splits["train"], splits["source_of"]))
    os.replace(path + ".tmp", path)
    manifest.update(unit_pairs=splits["unit_pairs"], example_pairs=splits["example_pairs"])
    with open(os.path.join(out, "manifest.json"), "w") as fh:
        json.dump(manifest, fh, indent=1)
    return manifest


def _stage(args: list[str], log) -> dict:
    """One dataspex command as a child process: wall seconds, its peak RSS (GB), its output."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    proc = subprocess.run([EXE, *args], capture_output=True, text=True,
                          env=dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"))
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise SystemExit(f"dataspex {' '.join(args)} failed ({proc.returncode}):\n{out[-4000:]}")
    # ru_maxrss of children is the largest child so far: a later, smaller child leaves it unchanged
    log(f"  dataspex {args[0]}: {seconds:.0f} s, peak RSS {max(peak, before) / 1e6:.2f} GB (largest child so far)")
    return {"seconds": seconds, "peak_rss_gb": peak / 1e6, "output": out}


def _data_args(folder: str) -> list[str]:
    return ["data=files", *(f"data.{s}_file={os.path.join(folder, s + '.csv')}" for s in ("train", "test", "eval"))]


def unit_recall(run_dir: str, manifest: dict, k: int = 10) -> dict:
    """{pair estimator: (planted unit pairs among its top-k harmful unit pairs, pooled held-out R^2)}."""
    import dataspex

    run = dataspex.load_run(run_dir)
    units = run.design.units
    index = {name: u for u, name in enumerate(units.names)}
    truth = {tuple(sorted((index[a], index[b]))) for a, b in manifest["unit_pairs"]}
    out = {}
    for name, result in run.fitted.items():
        if result.degree < 2:
            continue
        table = run.pairs("harmful", k=k, estimator=name, texts=False)
        found = {(int(min(i, j)), int(max(i, j))) for i, j in zip(table["i"], table["j"])} & truth
        out[name] = {"found": len(found), "planted": len(truth), "pooled_r2": run._fit[1][name].get("r2_pooled")}
    return out


def study(opts, log) -> dict:
    manifest = json.load(open(os.path.join(opts.data, "manifest.json")))
    run_dir = opts.run_dir or os.path.join(opts.data, "study")
    n_units = manifest["sources"]
    m = opts.m or 4 * n_units
    common = [f"run_dir={run_dir}", *_data_args(opts.data), "design.units=column:source", f"design.m={m}",
              f"design.heldout={opts.heldout}", f"design.replicates={opts.replicates}", "progress=false"]
    log(f"# units study: {manifest['sizes']['train']} training glosses in {n_units} sources, "
        f"{len(manifest['unit_pairs'])} planted unit pairs x {manifest['copies']} copies; m={m}, "
        f"held-out {opts.heldout}, replicates {opts.replicates}; load {os.getloadavg()[0]:.1f}")
    times = {"design": _stage(["design", *common], log)}
    times["train"] = _stage(["train", f"run_dir={run_dir}", "progress=false"], log)
    times["fit"] = _stage(["fit", f"run_dir={run_dir}"], log)  # the defaults: linear, quadratic, ProxySPEX
    times["report"] = _stage(["report", f"run_dir={run_dir}"], log)
    recall = unit_recall(run_dir, manifest)
    summary = json.load(open(os.path.join(run_dir, "report", "summary.json")))
    log(f"  trust: {summary['trust']['estimator']} pooled R^2 {summary['trust']['r2_pooled']:.3f}, ceiling "
        f"{(summary['trust']['ceiling'] or {}).get('pooled')}")
    for name, r in recall.items():
        log(f"  {name}: planted unit pairs in its top-10 harmful: {r['found']} of {r['planted']} "
            f"(pooled R^2 {r['pooled_r2']:.3f})")
    best = max(recall, key=lambda n: recall[n]["pooled_r2"])
    drill_args = ["drill", f"run_dir={run_dir}", f"report.estimator={best}",
                  f"drill.top_k={opts.drill_pairs}", "drill.kinds=[harmful]", f"drill.m={opts.drill_m}",
                  "progress=false"]
    times["drill"] = _stage(drill_args, log)
    parent = json.load(open(os.path.join(run_dir, "report", "summary.json")))
    truth = {(p["i"], p["j"]) for p in manifest["example_pairs"]}
    child = os.path.join(run_dir, "drill")
    child_summary = json.load(open(os.path.join(child, "report", "summary.json")))
    import pandas as pd

    pairs = pd.read_csv(os.path.join(child, "report", "pairs.csv"))
    import dataspex

    child_units = dataspex.load_run(child).design.units
    harmful = pairs[pairs["kind"] == "harmful"]
    listed = {tuple(sorted(int(child_units.members(int(u))[0]) for u in (r.i, r.j))) for r in harmful.itertuples()}
    members = set(child_units.members_of(range(child_units.n_units)))
    inside = {p for p in truth if set(p) <= members}
    drill = {"estimator": child_summary["trust"]["estimator"], "pooled_r2": child_summary["trust"]["r2_pooled"],
             "ceiling": (child_summary["trust"]["ceiling"] or {}).get("pooled"), "members": len(members),
             "planted_inside": len(inside), "found_top10": len(listed & inside), "drilled": parent["drill"]["pairs"]}
    log(f"  drill-down ({best}'s top {opts.drill_pairs} harmful unit pairs, {len(members)} members): "
        f"{drill['estimator']} pooled R^2 {drill['pooled_r2']:.3f}; planted example pairs inside the drilled "
        f"pairs {len(inside)} of {len(truth)}, in its top-10 harmful {drill['found_top10']}")
    # The drill-down ranks by the run's model (report.estimator above); its own most faithful pair model may
    # differ: the recall of every pair model fitted there, beside its pooled R^2.
    child_run = dataspex.load_run(child)
    faith = json.load(open(os.path.join(child, "fit", "faithfulness.json")))
    drill["by_estimator"] = {}
    for name in recall:
        top = child_run.pairs("harmful", k=10, estimator=name, texts=False)
        found = {tuple(sorted(int(child_units.members(int(u))[0]) for u in (r.i, r.j))) for r in top.itertuples()}
        drill["by_estimator"][name] = {"found_top10": len(found & inside), "pooled_r2": faith[name]["r2_pooled"]}
        log(f"    {name} in the drill-down: pooled R^2 {faith[name]['r2_pooled']:.3f}, planted example pairs in "
            f"its top-10 harmful {len(found & inside)} of {len(inside)}")
    total = sum(t["seconds"] for t in times.values())
    log(f"  total {total / 60:.1f} min; peak RSS {max(t['peak_rss_gb'] for t in times.values()):.2f} GB")
    result = {"m": m, "n_units": n_units, "recall": recall, "drill": drill, "ranking": best,
              "times": {k: round(v["seconds"], 1) for k, v in times.items()},
              "peak_rss_gb": {k: round(v["peak_rss_gb"], 2) for k, v in times.items()},
              "trust": summary["trust"]}
    with open(os.path.join(opts.data, "study.json"), "w") as fh:
        json.dump(result, fh, indent=1, default=float)
    return result


def scale(opts, log) -> dict:
    splits = realdata.build("wordnet", opts.n_train, 64, 0 if opts.no_eval else 256, opts.seed)
    realdata.write(splits, opts.out)
    run_dir = os.path.join(opts.out, "run")
    common = [f"run_dir={run_dir}", *_data_args(opts.out)[:3], f"design.units=cluster:{opts.clusters}",
              f"design.m={opts.retrains}", "design.heldout=0", "design.replicates=0", "progress=false"]
    log(f"# scale: {opts.n_train} WordNet glosses, cluster:{opts.clusters}, {opts.retrains} retrains; "
        f"load {os.getloadavg()[0]:.1f}")
    design = _stage(["design", *common], log)
    train = _stage(["train", f"run_dir={run_dir}", "progress=false"], log)
    per = [ln for ln in train["output"].splitlines() if "s per mask" in ln]
    log(f"  {per[-1].split('] ', 1)[-1] if per else ''}")
    return {"design_s": design["seconds"], "design_rss_gb": design["peak_rss_gb"], "train_s": train["seconds"],
            "train_rss_gb": train["peak_rss_gb"], "per_mask": per[-1] if per else None}


def clusters(opts, log) -> dict:
    """Where K-means puts the planted copies: ``dataspex design`` with ``design.units=cluster:K`` on planted
    splits, then for each planted example pair whether both copies fall in one cluster."""
    run_dir = opts.run_dir or os.path.join(opts.data, f"clusters{opts.clusters}")
    _stage(["design", f"run_dir={run_dir}", *_data_args(opts.data)[:3], f"design.units=cluster:{opts.clusters}",
            "design.m=8", "design.heldout=0", "design.replicates=0", "progress=false"], log)
    import dataspex

    manifest = json.load(open(os.path.join(opts.data, "manifest.json")))
    units = dataspex.load_run(run_dir).design.units
    sizes = units.sizes()
    pairs = [(int(units.unit_of[p["i"]]), int(units.unit_of[p["j"]])) for p in manifest["example_pairs"]]
    same = [a for a, b in pairs if a == b]
    log(f"  cluster:{opts.clusters}: both copies in one cluster for {len(same)} of {len(pairs)} planted example "
        f"pairs, in {len(set(same))} different clusters of {min(sizes[same], default=0)}-"
        f"{max(sizes[same], default=0)} members")
    return {"clusters": opts.clusters, "same_cluster": len(same), "pairs": len(pairs),
            "distinct_clusters": len(set(same))}


def main(argv=None, log=print) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plant")
    p.add_argument("--out", required=True)
    p.add_argument("--n-train", type=int, default=2000)
    p.add_argument("--sources", type=int, default=128)
    p.add_argument("--unit-pairs", type=int, default=2)
    p.add_argument("--copies", type=int, default=4)
    p.add_argument("--n-test", type=int, default=64)
    p.add_argument("--n-eval", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("study")
    s.add_argument("--data", required=True)
    s.add_argument("--run-dir", default=None)
    s.add_argument("--m", type=int, default=None, help="fit masks (default: 4 per unit)")
    s.add_argument("--heldout", type=int, default=64)
    s.add_argument("--replicates", type=int, default=16)
    s.add_argument("--drill-pairs", type=int, default=2)
    s.add_argument("--drill-m", type=int, default=128)
    c = sub.add_parser("scale")
    c.add_argument("--out", required=True)
    c.add_argument("--n-train", type=int, default=10000)
    c.add_argument("--clusters", type=int, default=256)
    c.add_argument("--retrains", type=int, default=8)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--no-eval", action="store_true")
    k = sub.add_parser("clusters")
    k.add_argument("--data", required=True)
    k.add_argument("--clusters", type=int, default=128)
    k.add_argument("--run-dir", default=None)
    opts = parser.parse_args(argv)
    if opts.command == "clusters":
        return clusters(opts, log)
    if opts.command == "plant":
        manifest = write_planted(plant(opts.n_train, opts.sources, opts.unit_pairs, opts.copies, opts.n_test,
                                       opts.n_eval, opts.seed), opts.out)
        log(json.dumps({k: manifest[k] for k in ("sizes", "unit_pairs", "example_pairs")}))
        return manifest
    return study(opts, log) if opts.command == "study" else scale(opts, log)


if __name__ == "__main__":
    main()
