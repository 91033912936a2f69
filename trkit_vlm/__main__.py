"""``python -m trkit_vlm COMMAND ...`` is ``trkit-vlm COMMAND ...`` (and what ``torchrun -m trkit_vlm train`` runs)."""

from trkit_vlm.cli import main

raise SystemExit(main())
