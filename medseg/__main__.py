"""``python -m medseg`` runs the same CLI as the ``medseg`` console script."""

from __future__ import annotations

from medseg_cli.main import main

if __name__ == "__main__":
    main()
