"""CLI subcommands, one module each; see :mod:`salt_seg.cli` for the contract."""
