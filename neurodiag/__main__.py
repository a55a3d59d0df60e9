"""``python -m neurodiag`` (also what ``torchrun -m neurodiag`` runs)."""

from neurodiag._entry import main

if __name__ == "__main__":
    main()
