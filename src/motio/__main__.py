"""``python -m motio``: the same as the ``motio`` command."""

try:
    from motio.cli import main
except KeyboardInterrupt:  # Ctrl-C during the very first imports
    raise SystemExit(130) from None

if __name__ == "__main__":
    raise SystemExit(main())
