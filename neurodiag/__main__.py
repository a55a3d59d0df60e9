"""``python -m neurodiag`` (also what ``torchrun -m neurodiag`` runs)."""

from neurodiag.cli import main

if __name__ == "__main__":
    main()
