"""The chemistry of the molecular-design examples: a real xTB simulation and a fingerprint model.

The simulation is the vertical ionisation potential with GFN2-xTB (``tblite``): RDKit makes a
few conformers, xTB picks the lowest in energy, and the cation's energy is computed at the same
geometry. The model is a random forest on Morgan fingerprints (scikit-learn).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

HARTREE_TO_EV = 27.211386245988
ANGSTROM_TO_BOHR = 1 / 0.529177210903
FINGERPRINT_BITS = 1024


def preload() -> None:
    """Import the chemistry and ML libraries once, before worker processes are forked.

    Forked workers then share them, and the first task of a run is not charged their import.
    """
    import rdkit.Chem.AllChem  # noqa: F401
    import sklearn.ensemble  # noqa: F401
    import tblite.interface  # noqa: F401


def _xtb_energy(numbers: np.ndarray, positions_bohr: np.ndarray, charge: int, uhf: int) -> float:
    from tblite.interface import Calculator

    calc = Calculator("GFN2-xTB", numbers, positions_bohr, charge=charge, uhf=uhf)
    calc.set("verbosity", 0)
    return float(calc.singlepoint().get("energy"))


def compute_vertical(smiles: str, n_conformers: int = 8, seed: int = 1) -> float:
    """Vertical ionisation potential (eV) of a molecule, with GFN2-xTB at an RDKit geometry.

    The neutral is evaluated on each of `n_conformers` MMFF-relaxed conformers; the cation
    (charge +1, one unpaired electron) at the lowest-energy one.
    """
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"RDKit cannot parse SMILES {smiles!r}")
    mol = Chem.AddHs(mol)
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    conformers = list(AllChem.EmbedMultipleConfs(mol, numConfs=max(1, n_conformers),
                                                 params=params))
    if not conformers:  # strained cages often need random starting coordinates
        params.useRandomCoords = True
        conformers = list(AllChem.EmbedMultipleConfs(mol, numConfs=max(1, n_conformers),
                                                     params=params))
    if not conformers:
        raise ValueError(f"RDKit could not embed {smiles!r} in 3D")
    AllChem.MMFFOptimizeMoleculeConfs(mol, maxIters=500)
    numbers = np.array([atom.GetAtomicNum() for atom in mol.GetAtoms()])
    electrons = int(numbers.sum())
    neutral_uhf = electrons % 2
    best_energy, best_positions = np.inf, None
    for conf_id in conformers:
        positions = mol.GetConformer(conf_id).GetPositions() * ANGSTROM_TO_BOHR
        energy = _xtb_energy(numbers, positions, 0, neutral_uhf)
        if energy < best_energy:
            best_energy, best_positions = energy, positions
    cation = _xtb_energy(numbers, best_positions, 1, (electrons - 1) % 2)
    return (cation - best_energy) * HARTREE_TO_EV


def fingerprints(smiles: Sequence[str], radius: int = 2) -> np.ndarray:
    """Morgan fingerprints (count of bits set per molecule), one row per SMILES."""
    from rdkit import Chem
    from rdkit.Chem import rdFingerprintGenerator

    generator = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=FINGERPRINT_BITS)
    rows = np.zeros((len(smiles), FINGERPRINT_BITS), dtype=np.uint8)
    for i, smi in enumerate(smiles):
        mol = Chem.MolFromSmiles(smi)
        if mol is not None:
            rows[i] = generator.GetCountFingerprintAsNumPy(mol).clip(0, 255)
    return rows


def train_model(smiles: Sequence[str], values: Sequence[float], n_estimators: int = 64,
                seed: int = 0, bootstrap_sample: bool = False) -> Any:
    """A random forest predicting the property from fingerprints.

    With `bootstrap_sample`, it trains on a resample of the data (one member of an ensemble).
    """
    from sklearn.ensemble import RandomForestRegressor

    x, y = fingerprints(smiles), np.asarray(values, dtype=float)
    if bootstrap_sample:
        pick = np.random.default_rng(seed).integers(0, len(y), len(y))
        x, y = x[pick], y[pick]
    model = RandomForestRegressor(n_estimators=n_estimators, random_state=seed, n_jobs=1)
    return model.fit(x, y)


def run_model(model: Any, smiles: Sequence[str]) -> np.ndarray:
    """The model's predictions for each SMILES."""
    return np.asarray(model.predict(fingerprints(smiles)))


def check_search_space(molecules: list[str], args: argparse.Namespace) -> None:
    """Stop at once, with one line, when no molecule is left to search."""
    if not molecules:
        limits = " and ".join(f"--{name.replace('_', '-')} {getattr(args, name)}"
                              for name in ("max_atoms", "max_molecules")
                              if getattr(args, name) is not None)
        raise SystemExit(f"no molecules in the search space {args.search_space}"
                         + (f" match {limits}" if limits else ""))
