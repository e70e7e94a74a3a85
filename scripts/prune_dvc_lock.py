"""Drops the dvc.lock entries of stages that the dvc.yaml beside it no longer defines.

DVC keeps a removed stage's entry in dvc.lock after the stage leaves dvc.yaml (or after a
`foreach` key leaves params.yaml); a committed lock should describe only the pipeline as it is.

    .venv/bin/python scripts/prune_dvc_lock.py [dvc.yaml | findings/dvc.yaml]
"""

import os
import sys

from dvc.repo import Repo
from ruamel.yaml import YAML


def main(dvcfile: str = "dvc.yaml") -> None:
    lock = os.path.join(os.path.dirname(dvcfile), "dvc.lock")
    repo = Repo(".")
    names = {s.addressing.split(":")[-1] for s in repo.index.stages if os.path.relpath(s.path, repo.root_dir) == dvcfile}
    yaml = YAML()  # round trip: the layout DVC writes
    with open(lock) as f:
        data = yaml.load(f)
    gone = [name for name in data["stages"] if name not in names]
    for name in gone:
        del data["stages"][name]
    with open(lock, "w") as f:
        yaml.dump(data, f)
    print(f"{lock}: dropped {len(gone)} entries of stages {dvcfile} no longer defines: {', '.join(gone) or '-'}")


if __name__ == "__main__":
    main(*sys.argv[1:2])
