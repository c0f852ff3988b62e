"""Write the checked-in search space: a fixed random subset of QM9's SMILES from `qm9pack`.

QM9 has about 134,000 molecules; a few thousand are plenty for a campaign of a few minutes and
keep the repository small. Re-run this to rebuild ``data/qm9-subset.csv``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--size", type=int, default=3000, help="molecules to keep")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample")
    parser.add_argument("--output", type=Path, default=HERE / "data" / "qm9-subset.csv")
    args = parser.parse_args(argv)

    import qm9pack

    folder = Path(qm9pack.__file__).parent / "data"
    parts = sorted(folder.glob("qm9_part*.csv"))
    frame = pd.concat([pd.read_csv(p, usecols=["Index", "SMILES", "N_atoms"]) for p in parts],
                      ignore_index=True)
    subset = frame.sample(n=args.size, random_state=args.seed).sort_values("Index")
    subset = subset.rename(columns={"Index": "qm9_index", "SMILES": "smiles", "N_atoms": "n_atoms"})
    args.output.parent.mkdir(parents=True, exist_ok=True)
    subset.to_csv(args.output, index=False)
    print(f"wrote {len(subset)} of {len(frame)} QM9 molecules to {os.path.relpath(args.output)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
