"""``python -m motio``: the same as the ``motio`` command."""

from motio.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
