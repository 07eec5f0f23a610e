"""``python -m trustzones`` runs the CLI."""

from trustzones.cli import main

raise SystemExit(main())
