"""Checks the README main job's written results (run by .ci/run after the main command).

    python .ci/check_main_job.py runs/realmini_demo --save=FILE    # after the first run
    python .ci/check_main_job.py runs/realmini_demo --same_as=FILE # after the rerun

Asserts from ``<model_dir>/table.json`` that the trained row's average page R-precision is
above BM25's and above the untrained model's; ``--save`` records the sha256 of the run's
result files, ``--same_as`` asserts that a rerun of the finished run kept them unchanged.
"""

import argparse
import hashlib
import json
import os
import sys

RESULT_FILES = ("table.json", "table.md", "summary.json", "final_params.safetensors",
                "config.gin")


def page_rows(model_dir):
    """{"BM25": avg, "initial": avg, "trained": avg} from the run's table.json."""
    with open(os.path.join(model_dir, "table.json")) as f:
        table = json.load(f)
    rows = {}
    for name, values in table.items():
        if name.endswith(" page R-prec"):
            rows[name.split()[0]] = values["Avg"]
    missing = {"BM25", "initial", "trained"} - set(rows)
    if missing:
        raise SystemExit(f"{model_dir}/table.json: rows missing: {sorted(missing)} "
                         f"(has {sorted(table)})")
    return rows


def digests(model_dir):
    out = {}
    for name in RESULT_FILES:
        with open(os.path.join(model_dir, name), "rb") as f:
            out[name] = hashlib.sha256(f.read()).hexdigest()
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model_dir")
    p.add_argument("--save", help="write the result files' sha256 here")
    p.add_argument("--same_as", help="assert the result files match this record")
    a = p.parse_args(argv)
    rows = page_rows(a.model_dir)
    print("average page R-precision: " + ", ".join(f"{k} {v:.2f}" for k, v in rows.items()))
    if not (rows["trained"] > rows["BM25"] and rows["trained"] > rows["initial"]):
        print("FAIL: the trained model does not beat both BM25 and the untrained model")
        return 1
    now = digests(a.model_dir)
    if a.save:
        with open(a.save, "w") as f:
            json.dump(now, f, indent=1)
    if a.same_as:
        with open(a.same_as) as f:
            before = json.load(f)
        changed = [k for k in before if before[k] != now.get(k)]
        if changed:
            print(f"FAIL: the rerun changed {changed}")
            return 1
        print("rerun kept every result file: " + ", ".join(RESULT_FILES))
    print("main job OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
